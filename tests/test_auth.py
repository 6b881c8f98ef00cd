"""
Login tokens, the password checker's cache, and throttled password
guessing through the site.
"""

from __future__ import annotations

import base64

import pytest
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed

from devpi_tx.auth.passwords import PasswordChecker, fast_hasher
from devpi_tx.auth.throttle import Limits, PasswordThrottle
from devpi_tx.auth.tokens import TokenSigner
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.service import build_context

from .conftest import Client, basic, result_of, synchronous
from .distfiles import make_wheel, upload_form


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_round_trip():
    signer = TokenSigner(b"s" * 32, clock=Clock())
    token = signer.issue("alice.b", ("team",))
    claims = signer.check(token)
    assert (claims.username, claims.groups) == ("alice.b", ("team",))
    assert signer.looks_like_token(token)


def test_token_expires_after_ten_hours():
    clock = Clock()
    signer = TokenSigner(b"s" * 32, clock=clock)
    token = signer.issue("alice")
    clock.now += 36000
    assert signer.check(token) is not None
    clock.now += 1
    assert signer.check(token) is None


def test_token_tampering_and_other_secret_rejected():
    signer = TokenSigner(b"s" * 32, clock=Clock())
    token = signer.issue("alice")
    assert signer.check(token.replace("alice", "root")) is None
    assert TokenSigner(b"t" * 32, clock=Clock()).check(token) is None
    assert signer.check("alicepw") is None
    assert signer.check("") is None


class CountingRunner:
    """
    Runs functions when told to, counting them: stands in for the thread
    pool so tests can see how many hashes were computed.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.pending: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, f, *args) -> Deferred:
        self.calls += 1
        d: Deferred = Deferred()
        self.pending.append((d, f, args))
        return d

    def run_all(self) -> None:
        while self.pending:
            d, f, args = self.pending.pop(0)
            d.callback(f(*args))


def make_checker(clock=None) -> tuple[PasswordChecker, CountingRunner, str]:
    runner = CountingRunner()
    checker = PasswordChecker(fast_hasher(), run_in_thread=runner, clock=clock or Clock())
    pwhash = fast_hasher().hash("secret")
    return checker, runner, pwhash


def verify(checker, runner, *args) -> bool:
    d = ensureDeferred(checker.verify(*args))
    runner.run_all()
    return result_of(d)


def test_verified_credentials_are_cached():
    checker, runner, pwhash = make_checker()
    assert verify(checker, runner, "alice", pwhash, "secret")
    assert verify(checker, runner, "alice", pwhash, "secret")
    assert runner.calls == 1


def test_wrong_password_is_not_cached_as_valid():
    checker, runner, pwhash = make_checker()
    assert not verify(checker, runner, "alice", pwhash, "wrong")
    assert not verify(checker, runner, "alice", pwhash, "wrong")
    assert runner.calls == 2
    assert not verify(checker, runner, "alice", None, "secret")


def test_cache_entry_expires():
    clock = Clock()
    checker, runner, pwhash = make_checker(clock)
    verify(checker, runner, "alice", pwhash, "secret")
    clock.now += 301
    assert verify(checker, runner, "alice", pwhash, "secret")
    assert runner.calls == 2


def test_new_password_hash_never_hits_old_entry():
    checker, runner, pwhash = make_checker()
    verify(checker, runner, "alice", pwhash, "secret")
    new_hash = fast_hasher().hash("other")
    assert not verify(checker, runner, "alice", new_hash, "secret")
    assert runner.calls == 2


def test_cache_does_not_keep_the_password():
    checker, runner, pwhash = make_checker()
    verify(checker, runner, "alice", pwhash, "secret")
    assert all(b"secret" not in key for key in checker._verified)


def test_concurrent_checks_share_one_hash():
    checker, runner, pwhash = make_checker()
    first = ensureDeferred(checker.verify("alice", pwhash, "secret"))
    second = ensureDeferred(checker.verify("alice", pwhash, "secret"))
    runner.run_all()
    assert result_of(first) is True and result_of(second) is True
    assert runner.calls == 1


def test_parallel_hashing_is_bounded():
    runner = CountingRunner()
    checker = PasswordChecker(fast_hasher(), run_in_thread=runner, max_parallel=2)
    hashes = [ensureDeferred(checker.hash(f"pw{i}")) for i in range(5)]
    assert len(runner.pending) == 2
    runner.run_all()
    while runner.pending:
        runner.run_all()
    assert all(result_of(d).startswith("$argon2id$") for d in hashes)
    assert runner.calls == 5


def test_hash_runs_off_the_calling_thread():
    seen = []

    def runner(f, *args):
        seen.append(f)
        return succeed(f(*args))

    checker = PasswordChecker(fast_hasher(), run_in_thread=runner)
    result_of(ensureDeferred(checker.hash("pw")))
    assert len(seen) == 1


# -- throttled password guessing, through the site -----------------------


class CountingChecker(PasswordChecker):
    """
    The password checker with cheap hashing, run at once, counting the
    argon2 verifications it runs.
    """

    def __init__(self) -> None:
        self.verifications = 0
        super().__init__(fast_hasher(), run_in_thread=self._run_now)

    def _run_now(self, f, *args) -> Deferred:
        if f == self._verify_sync:
            self.verifications += 1
        return maybeDeferred(f, *args)


@pytest.fixture
def guarded(config, upstream):
    """
    (client, throttle clock, checker): the in-memory server with a counting
    password checker and its throttle on a L{task.Clock}.
    """
    checker = CountingChecker()
    context = build_context(
        config,
        passwords=checker,
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(upstream), reactor),
        reactor=reactor,
    )
    clock = task.Clock()
    clock.advance(1_000_000)
    # Refused answers are not held here (see test_refused_answers_are_held).
    context.throttle = PasswordThrottle(clock, Limits(hold=0))
    client = Client(context)
    answer = client.request("PUT", "/alice", {"password": "alicepw"})
    assert answer.code == 201, answer.body
    token = client.login("alice", "alicepw")
    assert client.request("PUT", "/alice/dev", {}, headers=token).code == 200
    checker.verifications = 0
    yield client, clock, checker
    context.close()


def login(client, password: str, user: str = "alice"):
    return client.request("POST", "/+login", {"user": user, "password": password})


def from_address(client, host: str) -> None:
    client.connections.client_address = IPv4Address("TCP", host, 40000)


def upload(client, headers):
    filename, data = make_wheel("pkg-a", "1.0")
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    return client.request(
        "POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **headers}, accept=None
    )


def test_login_is_throttled_after_five_failures_without_checking(guarded):
    client, clock, checker = guarded
    from_address(client, "10.0.0.66")
    for _ in range(5):
        assert login(client, "guess").code == 401
    assert checker.verifications == 5
    for password in ("guess", "alicepw"):
        answer = login(client, password)
        assert answer.code == 429
        assert answer.header("Retry-After") == "1"
        assert answer.message == "too many failed password attempts for user 'alice': try again in 1 s"
    assert checker.verifications == 5
    # The same for a browser: one line of HTML.
    answer = client.request("POST", "/+login", {"user": "alice", "password": "x"}, accept="text/html")
    assert (answer.code, answer.header("Retry-After")) == (429, "1")
    assert b"try again in 1 s" in answer.body
    assert checker.verifications == 5


def test_back_off_runs_out_and_doubles(guarded):
    client, clock, checker = guarded
    for _ in range(5):
        login(client, "guess")
    clock.advance(1)
    assert login(client, "guess").code == 401
    answer = login(client, "alicepw")
    assert (answer.code, answer.header("Retry-After")) == (429, "2")
    clock.advance(1.5)
    assert login(client, "alicepw").header("Retry-After") == "1"
    clock.advance(0.5)
    assert login(client, "alicepw").code == 200
    assert checker.verifications == 6  # the right password was verified (and remembered) before


def test_basic_auth_upload_and_write_are_throttled(guarded):
    client, clock, checker = guarded
    wrong = basic("alice", "guess")
    for _ in range(3):
        assert upload(client, wrong).code == 401
    for _ in range(2):
        assert client.request("PATCH", "/alice/dev", ["title=t"], headers=wrong).code == 401
    assert checker.verifications == 5
    answer = upload(client, basic("alice", "alicepw"))
    assert (answer.code, answer.header("Retry-After")) == (429, "1")
    assert answer.phrase == b"too many failed password attempts for user 'alice': try again in 1 s"
    answer = client.request("PATCH", "/alice/dev", ["title=t"], headers=basic("alice", "alicepw"))
    assert (answer.code, answer.header("Retry-After")) == (429, "1")
    answer = client.request("GET", "/+api", headers=wrong)
    assert answer.code == 429
    answer = client.request("GET", "/+authcheck", headers={"X-Original-URI": "/alice/dev", **wrong})
    assert (answer.code, answer.header("Retry-After")) == (401, "1")
    assert checker.verifications == 5
    assert client.get("/alice/dev/pkg-a").code == 404  # nothing was stored
    clock.advance(1)
    assert upload(client, basic("alice", "alicepw")).code == 200


def test_tokens_are_never_throttled(guarded):
    client, clock, checker = guarded
    token = client.login("alice", "alicepw")
    _, secret = base64.b64decode(token["X-Devpi-Auth"]).decode().split(":", 1)
    for _ in range(30):
        login(client, "guess")
    assert login(client, "alicepw").code == 429
    assert upload(client, token).code == 200
    answer = client.request("PATCH", "/alice/dev", ["title=t"], headers=basic("alice", secret))
    assert answer.code == 200
    assert client.request("GET", "/+api", headers=token).json["result"]["authstatus"][:2] == ["ok", "alice"]


def test_an_attack_from_elsewhere_leaves_a_known_address_working(guarded):
    client, clock, checker = guarded
    from_address(client, "192.168.7.7")
    assert login(client, "alicepw").code == 200
    for i in range(20):
        from_address(client, f"10.0.3.{i}")
        assert login(client, "guess").code == 401
    from_address(client, "10.0.4.1")
    assert login(client, "alicepw").code == 429
    from_address(client, "192.168.7.7")
    assert login(client, "alicepw").code == 200
    assert upload(client, basic("alice", "alicepw")).code == 200


def test_refused_answers_are_held(guarded):
    client, clock, checker = guarded
    throttle = client.context.throttle
    throttle.limits = Limits()  # held for up to a second
    for _ in range(5):
        assert login(client, "guess").code == 401
    clock.advance(0.5)  # half a second of the back-off left
    answers: list = []
    client.http.request(
        "POST",
        "http://127.0.0.1:3141/+login",
        data=b'{"user": "alice", "password": "guess"}',
        headers={"Accept": "application/json"},
    ).addBoth(answers.append)
    client.flush()
    assert answers == []
    assert throttle.held == 1
    clock.advance(0.5)
    client.flush()
    assert (answers[0].code, answers[0].headers.getRawHeaders("Retry-After")) == (429, ["1"])
    assert checker.verifications == 5
    assert throttle.held == 0

"""
Login tokens and the password checker's cache.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred, succeed

from devpi_tx.auth.passwords import PasswordChecker, fast_hasher
from devpi_tx.auth.tokens import TokenSigner

from .conftest import result_of


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

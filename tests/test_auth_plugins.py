"""
Authentication by an L{IAuthenticator} plugin (the LDAP case): C{devpi
login} and Basic auth checked by it, groups in ACLs as C{:group:NAME},
users known only to it, its verdicts combined with the local users', and
a slow one holding no other request.
"""

from __future__ import annotations

import pytest
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from devpi_tx.auth.external import MemoryAuthenticator, Verdict, ask
from devpi_tx.interfaces import IAuthenticator
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.model.acl import Identity
from devpi_tx.service import build_context

from .conftest import Client, basic, devpi_auth, result_of, synchronous, synchronous_passwords
from .distfiles import make_wheel, upload_form

DIRECTORY = {
    "carol": ("carolpw", ["devs", "ops"]),
    "dave": ("davepw", ["others"]),
    # Also a local user, with another password: the directory decides.
    "alice": ("directorypw", []),
    "root": ("rootdirectorypw", ["admins"]),
}


def make_client(config, upstream, authenticators) -> Client:
    context = build_context(
        config,
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(upstream), reactor),
        reactor=reactor,
        authenticators=authenticators,
        event_listeners=(),
    )
    return Client(context)


@pytest.fixture
def directory():
    return MemoryAuthenticator(DIRECTORY)


@pytest.fixture
def ldap(config, upstream, directory):
    """
    The in-memory server with the directory as its authenticator; bob is
    a local user only; root's index root/dev takes uploads from the group
    devs.
    """
    client = make_client(config, upstream, [directory])
    assert client.request("PUT", "/bob", {"password": "bobpw"}).code == 201
    root = client.login("root", "rootpw")
    answer = client.request("PUT", "/root/dev", {"acl_upload": [":group:devs"]}, headers=root)
    assert answer.code == 200, answer.body
    yield client
    client.context.close()


def upload(client, headers, version="1.0"):
    filename, data = make_wheel("pkg-a", version)
    content_type, body = upload_form("pkg-a", version, filename, data)
    return client.request(
        "POST", "/root/dev/", raw=body, headers={"Content-Type": content_type, **headers}, accept=None
    )


def test_memory_authenticator_provides_the_interface(directory):
    assert verifyObject(IAuthenticator, directory)


def test_groups_are_principals_in_both_forms():
    principals = Identity("carol", ("devs",)).principals()
    assert {":group:devs", ":devs"} <= principals


@pytest.mark.parametrize(
    "verdicts, expected",
    [
        ([], Verdict.unknown()),
        ([Verdict.unknown(), Verdict.unknown()], Verdict.unknown()),
        ([Verdict.accept(["a"]), Verdict.unknown()], Verdict.accept(["a"])),
        ([Verdict.accept(["a", "b"]), Verdict.accept(["b", "c"])], Verdict.accept(["a", "b", "c"])),
        ([Verdict.accept(["a"]), Verdict.reject()], Verdict.reject()),
        ([RuntimeError("down"), Verdict.accept(["a"])], Verdict.accept(["a"])),
        (["not a verdict"], Verdict.unknown()),
    ],
)
def test_verdicts_combine(verdicts, expected):
    class Fixed:
        name = "fixed"

        def __init__(self, answer):
            self.answer = answer

        def authenticate(self, username, password):
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

    d = Deferred.fromCoroutine(ask([Fixed(v) for v in verdicts], "carol", "pw"))
    assert result_of(d) == expected


def test_a_coroutine_authenticator_is_awaited():
    class Async:
        name = "async"

        async def authenticate(self, username, password):
            return Verdict.accept(["g"]) if password == "pw" else Verdict.reject()

    assert result_of(Deferred.fromCoroutine(ask([Async()], "u", "pw"))) == Verdict.accept(["g"])
    assert result_of(Deferred.fromCoroutine(ask([Async()], "u", "no"))) == Verdict.reject()


def test_root_is_never_asked(directory):
    d = Deferred.fromCoroutine(ask([directory], "root", "rootdirectorypw"))
    assert result_of(d) == Verdict.unknown()
    assert directory.asked == []


def test_a_user_known_only_to_the_directory_logs_in_and_uploads_by_group(ldap):
    token = ldap.login("carol", "carolpw")
    assert ldap.get("/carol").code == 404  # no local record is made
    answer = upload(ldap, token)
    assert answer.code == 200, answer.body


def test_basic_auth_is_checked_by_the_directory(ldap, directory):
    assert upload(ldap, basic("carol", "carolpw")).code == 200
    assert "carol" in directory.asked
    assert upload(ldap, basic("carol", "wrong"), "1.1").code == 401


def test_a_user_outside_the_group_may_not_upload(ldap):
    token = ldap.login("dave", "davepw")
    assert upload(ldap, token).code == 403


def test_a_rejection_by_the_directory_refuses_the_local_password(ldap):
    assert ldap.request("PUT", "/alice", {"password": "alicepw"}).code == 201
    answer = ldap.request("POST", "/+login", {"user": "alice", "password": "alicepw"})
    assert answer.code == 401
    ldap.login("alice", "directorypw")


def test_an_unknown_user_falls_back_to_the_local_users(ldap):
    ldap.login("bob", "bobpw")
    assert ldap.request("POST", "/+login", {"user": "nobody", "password": "x"}).code == 401


def test_root_stays_local(ldap):
    ldap.login("root", "rootpw")
    assert ldap.request("POST", "/+login", {"user": "root", "password": "rootdirectorypw"}).code == 401


def test_an_external_token_needs_an_authenticator(ldap, config, upstream):
    token = ldap.login("carol", "carolpw")
    secret = token["X-Devpi-Auth"]
    ldap.context.close()
    # The same server directory (and secret) without the plugin.
    plain = make_client(config, upstream, [])
    try:
        assert upload(plain, {"X-Devpi-Auth": secret}).code == 401
    finally:
        plain.context.close()


def test_a_forged_group_is_not_accepted(ldap):
    # A token's groups are signed: one made with another secret is refused.
    from devpi_tx.auth.tokens import TokenSigner

    forged = TokenSigner(b"other secret").issue("dave", ("devs",), external=True)
    assert upload(ldap, devpi_auth("dave", forged)).code == 401


def test_a_slow_directory_holds_no_other_request(config, upstream):
    clock = task.Clock()
    slow = MemoryAuthenticator(DIRECTORY, clock=clock, delay=5)
    client = make_client(config, upstream, [slow])
    try:
        d = client.http.request(
            "POST",
            "http://127.0.0.1:3141/+login",
            data=b'{"user": "carol", "password": "carolpw"}',
            headers={"Accept": "application/json"},
        )
        answered: list = []
        d.addBoth(answered.append)
        client.flush()
        assert answered == []
        assert slow.asked == ["carol"]
        # Meanwhile, others are served.
        assert client.get("/+api").code == 200
        clock.advance(5)
        client.flush()
        [response] = answered
        assert response.code == 200
    finally:
        client.context.close()

"""
Pushing to an external index: devpi-tx uploads like twine to another
server (here a second devpi-tx on a loopback port).
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
import treq
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.config import ServerConfig
from devpi_tx.mirror.http import make_http_client
from devpi_tx.remote.pypi_upload import describe_failure
from devpi_tx.service import build_context, make_site

from .conftest import UPSTREAM, Client, basic, synchronous, synchronous_passwords
from .distfiles import make_doczip, make_wheel, multipart, upload_form


def new_context(path, **options):
    config = ServerConfig(
        serverdir=str(path), mirror_url=UPSTREAM, root_passwd_hash=fast_hasher().hash("rootpw"), **options
    )
    return build_context(config, passwords=synchronous_passwords(), run_in_thread=synchronous)


@pytest.fixture
def servers(tmp_path):
    source, target = new_context(tmp_path / "source"), new_context(tmp_path / "target")
    pool = HTTPConnectionPool(reactor, persistent=False)
    source.http = make_http_client(reactor, pool)
    for context, user in ((source, "alice"), (target, "ext")):
        client = Client(context)
        client.request("PUT", f"/{user}", {"password": f"{user}pw"})
        auth = client.login(user, f"{user}pw")
        client.request("PUT", f"/{user}/dev", {}, headers=auth)
    alice = Client(source)
    auth = alice.login("alice", "alicepw")
    filename, data = make_wheel("pkg-a", "1.0")
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    alice.request("POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **auth})
    content_type, body = multipart([(":action", "doc_upload"), ("name", "pkg-a")], ("d.zip", make_doczip()))
    alice.request("POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **auth})
    port = pytest_twisted.blockon(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(make_site(target))
    )
    yield alice, auth, f"http://127.0.0.1:{port.getHost().port}", target, (filename, data)
    pytest_twisted.blockon(port.stopListening())
    source.close()
    target.close()


async def push(alice, auth, body):
    # The push handler awaits real network I/O, so go through the reactor.
    site_port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(make_site(alice.context))
    try:
        url = f"http://127.0.0.1:{site_port.getHost().port}/alice/dev"
        response = await treq.request("PUSH", url, json=body, headers={"Accept": "application/json", **auth})
        return response.code, await response.json()
    finally:
        await site_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_push_to_external_index(servers):
    alice, auth, target_url, target, (filename, data) = servers
    body = {
        "name": "pkg-a",
        "version": "1.0",
        "posturl": f"{target_url}/ext/dev/",
        "username": "ext",
        "password": "extpw",
    }
    code, answer = await push(alice, auth, body)
    assert code == 200, answer
    assert answer["type"] == "actionlog"
    assert [entry[:2] for entry in answer["result"]] == [[200, "upload"], [200, "docfile"]]
    record = Client(target).get("/ext/dev/pkg-a/1.0").json["result"]
    rels = sorted(link["rel"] for link in record["+links"])
    assert rels == ["doczip", "releasefile"]
    sha = hashlib.sha256(data).hexdigest()
    assert [link["hashes"]["sha256"] for link in record["+links"] if link["rel"] == "releasefile"] == [sha]
    assert record["summary"] == "test package pkg-a"


@pytest_twisted.ensureDeferred
async def test_push_with_wrong_password_reports_502(servers):
    alice, auth, target_url, target, _ = servers
    body = {
        "name": "pkg-a",
        "version": "1.0",
        "posturl": f"{target_url}/ext/dev/",
        "username": "ext",
        "password": "wrong",
        "register_project": True,
    }
    code, answer = await push(alice, auth, body)
    assert code == 502
    assert answer["result"] == [[401, "register", "pkg-a", "1.0"]]
    assert Client(target).get("/ext/dev").json["result"]["projects"] == []


@pytest_twisted.ensureDeferred
async def test_push_to_unreachable_index_reports_502(servers):
    alice, auth, _, _, _ = servers
    body = {
        "name": "pkg-a",
        "version": "1.0",
        "posturl": "http://127.0.0.1:9/x/",
        "username": "u",
        "password": "p",
    }
    code, answer = await push(alice, auth, body)
    assert code == 502
    assert answer["result"][0][:2] == [-1, "upload"]
    message = "push to http://127.0.0.1:9/x/ failed: connection refused"
    assert answer["message"] == message
    assert answer["result"][0][3] == message


class PlainAnswer(Protocol):
    """
    Answers whatever comes with plain HTTP (a TLS client sees garbage).
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_push_over_https_to_a_plain_http_server_reports_a_tls_error(servers):
    alice, auth, _, _, _ = servers
    plain = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Factory.forProtocol(PlainAnswer)
    )
    try:
        posturl = f"https://127.0.0.1:{plain.getHost().port}/ext/dev/"
        body = {"name": "pkg-a", "version": "1.0", "posturl": posturl, "username": "ext", "password": "extpw"}
        code, answer = await push(alice, auth, body)
    finally:
        await plain.stopListening()
    assert code == 502
    assert answer["message"].startswith(f"push to {posturl} failed: TLS error: "), answer
    assert "\n" not in answer["message"]
    assert answer["result"][-1][-1] == answer["message"]


@pytest_twisted.ensureDeferred
async def test_push_to_a_repository_that_never_answers_reports_a_timeout(tmp_path):
    source = new_context(tmp_path / "source", request_timeout=0.05)
    source.http = make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))
    client = Client(source)
    client.request("PUT", "/alice", {"password": "alicepw"})
    auth = client.login("alice", "alicepw")
    client.request("PUT", "/alice/dev", {}, headers=auth)
    filename, data = make_wheel("pkg-a", "1.0")
    content_type, form = upload_form("pkg-a", "1.0", filename, data)
    client.request("POST", "/alice/dev/", raw=form, headers={"Content-Type": content_type, **auth})
    silent = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(
        Factory.forProtocol(Protocol)
    )
    try:
        posturl = f"http://127.0.0.1:{silent.getHost().port}/x/"
        body = {"name": "pkg-a", "version": "1.0", "posturl": posturl, "username": "u", "password": "p"}
        code, answer = await push(client, auth, body)
    finally:
        await silent.stopListening()
        source.close()
    assert code == 502
    assert answer["message"] == f"push to {posturl} failed: timed out (no answer within 0.3 s)"


@pytest_twisted.ensureDeferred
async def test_push_refused_by_the_repository_says_what_it_answered(servers):
    alice, auth, target_url, _, _ = servers
    body = {"name": "pkg-a", "version": "1.0", "posturl": f"{target_url}/ext/dev/", "username": "ext"}
    code, answer = await push(alice, auth, body)
    assert code == 502
    assert [entry[0] for entry in answer["result"]] == [401, 401]
    assert (
        answer["message"]
        == f"push to {target_url}/ext/dev/ failed: the documentation upload of pkg-a answered 401"
    )


@pytest.mark.parametrize(
    "exc, description",
    [
        (ConnectionRefusedError("127.0.0.1", 9), "connection refused"),
        (DNSLookupError("nowhere.invalid"), "host not found"),
        (ConnectingCancelledError(None), "timed out (no answer within 30 s)"),
        (ResponseNeverReceived([Failure(CancelledError())]), "timed out (no answer within 30 s)"),
        (ResponseNeverReceived([Failure(ConnectionLost())]), "connection closed before an answer"),
        (
            ResponseNeverReceived([Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))]),
            "TLS error: Error: ",
        ),
        (ValueError("odd\nthing"), "ValueError: odd"),
    ],
)
def test_describe_failure(exc, description):
    assert describe_failure(exc, 30.0).startswith(description)
    assert "\n" not in describe_failure(exc, 30.0)


@pytest_twisted.ensureDeferred
async def test_push_needs_permission_on_source(servers):
    alice, _, target_url, _, _ = servers
    body = {
        "name": "pkg-a",
        "version": "1.0",
        "posturl": f"{target_url}/ext/dev/",
        "username": "e",
        "password": "p",
    }
    code, _ = await push(alice, basic("alice", "wrong"), body)
    assert code == 401

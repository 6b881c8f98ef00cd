"""
Pushing to an external index: devpi-tx uploads like twine to another
server (here a second devpi-tx on a loopback port).
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.client import HTTPConnectionPool

from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.config import ServerConfig
from devpi_tx.mirror.http import make_http_client
from devpi_tx.service import build_context, make_site

from .conftest import UPSTREAM, Client, basic, synchronous, synchronous_passwords
from .distfiles import make_doczip, make_wheel, multipart, upload_form


def new_context(path):
    config = ServerConfig(
        serverdir=str(path), mirror_url=UPSTREAM, root_passwd_hash=fast_hasher().hash("rootpw")
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

"""
Uploads over a real connection: the body is parsed as it arrives, nothing
is written before the uploader is known to be allowed, and a client that
goes away leaves no partial file.
"""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from devpi_tx.service import make_site
from devpi_tx.web.upload import SPOOL

from .conftest import basic, on_loopback
from .distfiles import make_wheel, upload_form


@pytest.fixture
def server(context, client, alice):
    client.request("PUT", "/alice/dev", {}, headers=alice)
    with on_loopback(make_site(context)) as port:
        yield port, context


def head(port: int, content_type: str, length: int, auth: dict[str, str]) -> bytes:
    lines = [
        "POST /alice/dev/ HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        "Connection: close",
    ] + [f"{k}: {v}" for k, v in auth.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_all(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def until(predicate, tries: int = 200):
    for _ in range(tries):
        if predicate():
            return True
        await deferLater(reactor, 0.01, lambda: None)
    return predicate()


@pytest_twisted.ensureDeferred
async def test_streamed_upload_is_stored(server):
    port, context = server
    filename, data = make_wheel("pkg-a", "1.0", payload=os.urandom(300_000))
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    reply = await deferToThread(
        send_all, port, head(port, content_type, len(body), basic("alice", "alicepw")) + body
    )
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply[:200]
    assert context.storage.get("project/alice/dev/pkg-a") == {"name": "pkg-a"}
    assert os.listdir(context.files.tmpdir) == []


@pytest_twisted.ensureDeferred
async def test_refused_upload_writes_nothing_and_answers_401(server):
    port, context = server
    filename, data = make_wheel("pkg-a", "1.0", payload=os.urandom(500_000))
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    reply = await deferToThread(
        send_all, port, head(port, content_type, len(body), basic("alice", "nope")) + body
    )
    assert reply.startswith(b"HTTP/1.1 401 "), reply[:200]
    assert b"WWW-Authenticate" in reply
    assert os.listdir(context.files.tmpdir) == []
    assert context.storage.get("project/alice/dev/pkg-a") is None


@pytest_twisted.ensureDeferred
async def test_file_is_written_only_once_allowed_and_removed_on_disconnect(server):
    port, context = server
    # Larger than what is kept in memory: half of it reaches the disk.
    filename, data = make_wheel("pkg-a", "1.0", payload=os.urandom(3 * SPOOL))
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    half = len(body) // 2

    def half_upload(auth):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head(port, content_type, len(body), auth) + body[:half])
        return sock

    refused = await deferToThread(half_upload, basic("alice", "nope"))
    allowed = await deferToThread(half_upload, basic("alice", "alicepw"))
    try:
        # The allowed upload is being written to a temporary file...
        assert await until(lambda: len(os.listdir(context.files.tmpdir)) == 1)
    finally:
        refused.close()
        allowed.close()
    # ...and a client that goes away leaves nothing behind.
    assert await until(lambda: os.listdir(context.files.tmpdir) == [])
    assert context.storage.get("project/alice/dev/pkg-a") is None


@pytest_twisted.ensureDeferred
async def test_streamed_upload_skips_klein_and_answers_as_klein_would(server, monkeypatch):
    """
    A streamed upload goes to its handler past Klein's routing (the
    installer fast path); its answers, good and bad, are the handler's.
    """
    from klein.resource import KleinResource

    port, context = server
    routed = []
    real_render = KleinResource.render
    monkeypatch.setattr(
        KleinResource,
        "render",
        lambda self, request: (routed.append(request.path), real_render(self, request))[1],
    )
    auth = basic("alice", "alicepw")
    filename, data = make_wheel("pkg-a", "1.0")
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    reply = await deferToThread(send_all, port, head(port, content_type, len(body), auth) + body)
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply[:200]
    content_type, body = upload_form("pkg-b", "1.0", filename, data)  # name does not match the file
    reply = await deferToThread(send_all, port, head(port, content_type, len(body), auth) + body)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b"does not match project name" in reply.split(b"\r\n", 1)[0]
    assert routed == []

"""
Uploads as they arrive, through the production site and request class
(L{DevpiRequest} hands a multipart body to an L{UploadReceiver} once its
headers are in): the body is parsed as it arrives, nothing is written
before the uploader is known to be allowed, and a client that goes away
leaves no partial file.

The connections are in memory (L{Client.connect}) so that a test decides
what part of the body has arrived when it looks; one test sends an upload
over a real socket.
"""

from __future__ import annotations

import functools
import os
import socket

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from devpi_tx.service import make_site
from devpi_tx.web.upload import SPOOL, Refusal

from .conftest import basic, on_loopback
from .distfiles import make_wheel, upload_form


@pytest.fixture
def dev(client, alice):
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    return client


@pytest.fixture
def writers(context, monkeypatch):
    """
    The file writers the store hands out, in order.
    """
    made = []
    real = context.files.writer

    def writer(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(context.files, "writer", writer)
    return made


@pytest.fixture
def decisions(dev, monkeypatch):
    """
    The upload permission checks made, as they end ("allowed" or
    "refused").
    """
    made = []
    real = dev.api.authorize_upload

    async def authorize_upload(*args):
        try:
            await real(*args)
        except Refusal:
            made.append("refused")
            raise
        made.append("allowed")

    monkeypatch.setattr(dev.api, "authorize_upload", authorize_upload)
    return made


@functools.cache
def big_wheel() -> tuple[str, bytes]:
    """
    A wheel larger than what an upload keeps in memory (made once: its
    random payload takes a while to compress).
    """
    filename, data = make_wheel("pkg-a", "1.0", payload=os.urandom(3 * SPOOL))
    assert len(data) > 2 * SPOOL
    return filename, data


def head(content_type: str, length: int, auth: dict[str, str]) -> bytes:
    lines = [
        "POST /alice/dev/ HTTP/1.1",
        "Host: 127.0.0.1:3141",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        "Connection: close",
    ] + [f"{k}: {v}" for k, v in auth.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def tmp_files(context) -> list[str]:
    return os.listdir(context.files.tmpdir)


def test_streamed_upload_is_stored(dev, context, writers, decisions):
    filename, data = big_wheel()
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    half = len(body) // 2
    connection = dev.connect()
    connection.send(head(content_type, len(body), basic("alice", "alicepw")) + body[:half])
    dev.flush()
    # Half the body is in: the upload is allowed, its file part is being
    # written already, past what is kept in memory, and nothing is
    # answered yet.
    assert decisions == ["allowed"]
    [writer] = writers
    assert 0 < writer.size < len(data)
    assert len(tmp_files(context)) == 1
    assert connection.received == b""
    connection.send(body[half:])
    dev.flush()
    assert connection.status_line == b"HTTP/1.1 200 OK", connection.received[:200]
    assert writer.size == len(data)
    assert context.storage.get("project/alice/dev/pkg-a") == {"name": "pkg-a"}
    assert tmp_files(context) == []


def test_refused_upload_writes_nothing_and_answers_401(dev, context, writers, decisions):
    filename, data = big_wheel()
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    half = len(body) // 2
    connection = dev.connect()
    connection.send(head(content_type, len(body), basic("alice", "nope")) + body[:half])
    dev.flush()
    # Refused with half the body in, and nothing of it stored.
    assert decisions == ["refused"]
    assert writers == []
    assert connection.received == b""  # the rest of the body is read first
    connection.send(body[half:])
    dev.flush()
    assert connection.status_line.startswith(b"HTTP/1.1 401 "), connection.received[:200]
    assert b"WWW-Authenticate" in connection.received
    assert writers == []
    assert tmp_files(context) == []
    assert context.storage.get("project/alice/dev/pkg-a") is None


def test_upload_by_another_user_refused_403_before_anything_is_stored(dev, context, writers, decisions):
    assert dev.request("PUT", "/bob", {"password": "bobpw"}).code == 201
    filename, data = big_wheel()
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    connection = dev.connect()
    connection.send(head(content_type, len(body), basic("bob", "bobpw")) + body[:1000])
    dev.flush()
    assert (decisions, writers) == (["refused"], [])
    connection.send(body[1000:])
    dev.flush()
    assert connection.status_line.startswith(b"HTTP/1.1 403 "), connection.received[:200]
    assert writers == []
    assert context.storage.get("project/alice/dev/pkg-a") is None


def test_file_is_removed_when_the_client_goes_away(dev, context, writers):
    filename, data = big_wheel()
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    half = len(body) // 2
    refused = dev.connect()
    refused.send(head(content_type, len(body), basic("alice", "nope")) + body[:half])
    allowed = dev.connect()
    allowed.send(head(content_type, len(body), basic("alice", "alicepw")) + body[:half])
    dev.flush()
    # Only the allowed upload is being written to a temporary file...
    assert len(writers) == 1
    assert len(tmp_files(context)) == 1
    refused.close()
    allowed.close()
    dev.flush()
    # ...and a client that goes away leaves nothing behind.
    assert refused.closed and allowed.closed
    assert tmp_files(context) == []
    assert context.storage.get("project/alice/dev/pkg-a") is None


def test_streamed_upload_skips_klein_and_answers_as_klein_would(dev, monkeypatch):
    """
    A streamed upload goes to its handler past Klein's routing (the
    installer fast path); its answers, good and bad, are the handler's.
    """
    from klein.resource import KleinResource

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
    connection = dev.connect()
    connection.send(head(content_type, len(body), auth) + body)
    dev.flush()
    assert connection.status_line == b"HTTP/1.1 200 OK", connection.received[:200]
    content_type, body = upload_form("pkg-b", "1.0", filename, data)  # name does not match the file
    connection = dev.connect()
    connection.send(head(content_type, len(body), auth) + body)
    dev.flush()
    assert connection.status_line.startswith(b"HTTP/1.1 400 "), connection.received[:200]
    assert b"does not match project name" in connection.status_line
    assert routed == []


# -- over a real socket ------------------------------------------------------


def send_all(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def listening(dev, context):
    with on_loopback(make_site(context)) as port:
        yield port


@pytest_twisted.ensureDeferred
async def test_streamed_upload_over_a_socket(listening, context):
    filename, data = make_wheel("pkg-a", "1.0", payload=os.urandom(300_000))
    content_type, body = upload_form("pkg-a", "1.0", filename, data)
    reply = await deferToThread(
        send_all, listening, head(content_type, len(body), basic("alice", "alicepw")) + body
    )
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply[:200]
    assert context.storage.get("project/alice/dev/pkg-a") == {"name": "pkg-a"}
    assert tmp_files(context) == []

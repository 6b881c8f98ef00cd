"""
Site-level behaviour, over a real loopback port and in memory (the
C{client} fixture runs the same site and request class): devpi's headers
on every response, an exact X-Devpi-Serial, the body cap, and the request
log.
"""

from __future__ import annotations

import json
import socket

import attrs
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, globalLogPublisher

from devpi_tx.service import make_site

from .conftest import basic, on_loopback

DEVPI_HEADERS = [
    "X-Devpi-Api-Version",
    "X-Devpi-Server-Version",
    "X-Devpi-Uuid",
    "X-Devpi-Master-Uuid",
    "X-Devpi-Primary-Uuid",
    "X-Devpi-Serial",
]


@pytest.fixture
def listening(context):
    with on_loopback(make_site(context)) as port:
        yield f"http://127.0.0.1:{port}", context


@pytest.fixture
def small_json_limit(context):
    context.config = attrs.evolve(context.config, max_json_body_size=1024)
    return context


async def get(url, path, headers=None):
    headers = {"Accept": "application/json", **(headers or {})}
    response = await treq.get(url + path, headers=headers)
    body = await response.content()
    return response, body


@pytest_twisted.ensureDeferred
async def test_devpi_headers_on_every_response(listening):
    url, context = listening
    for path in ["/+api", "/nobody", "/a/b/c/d/e/f"]:
        response, _ = await get(url, path)
        for name in DEVPI_HEADERS:
            assert response.headers.getRawHeaders(name), (path, name)
        assert response.headers.getRawHeaders("X-Devpi-Uuid") == [context.uuid]


@pytest_twisted.ensureDeferred
async def test_serial_header_is_exact(listening):
    url, context = listening
    response, _ = await get(url, "/+api")
    assert response.headers.getRawHeaders("X-Devpi-Serial") == [str(context.storage.serial)]
    before = context.storage.serial
    response = await treq.put(
        url + "/erin",
        json.dumps({"password": "pw"}).encode(),
        headers={"Accept": "application/json"},
    )
    await response.content()
    assert response.code == 201
    assert response.headers.getRawHeaders("X-Devpi-Serial") == [str(before + 1)]
    # A write that fails commits nothing and reports the current serial.
    response = await treq.put(
        url + "/erin",
        json.dumps({"password": "pw"}).encode(),
        headers={"Accept": "application/json"},
    )
    await response.content()
    assert response.code == 409
    assert response.headers.getRawHeaders("X-Devpi-Serial") == [str(before + 1)]


def _raw_exchange(host: str, port: int, head: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_over_long_body_refused_before_it_is_read(small_json_limit, listening):
    url, context = listening
    port = int(url.rsplit(":", 1)[1])
    serial = context.storage.serial
    head = (
        b"PUT /mallory HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    reply = await deferToThread(_raw_exchange, "127.0.0.1", port, head)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert b"X-Devpi-Serial" in rest
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert "limit is 1024 bytes" in body["message"]
    assert context.storage.serial == serial


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_limit_refused(small_json_limit, listening):
    url, context = listening
    port = int(url.rsplit(":", 1)[1])
    chunk = b"x" * 800
    head = (
        b"PUT /mallory HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 2
        + b"0\r\n\r\n"
    )
    reply = await deferToThread(_raw_exchange, "127.0.0.1", port, head)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert "mallory" not in json.loads((await get(url, "/"))[1])["result"]


@pytest_twisted.ensureDeferred
async def test_one_structured_log_event_per_request(context, tmp_path):
    """
    Each request is one event with its fields, written as one line to the
    access log (a file here; stdout by default) and not to the global log.
    """
    access_log = tmp_path / "access.log"
    context.config = attrs.evolve(context.config, access_log=str(access_log))
    site = make_site(context)
    events = []
    site._access.observer = _Tee(site._access.observer, events.append)
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    url = f"http://127.0.0.1:{port.getHost().port}"
    global_events = []
    globalLogPublisher.addObserver(global_events.append)
    try:
        await get(url, "/+api?x=1", headers=basic("root", "rootpw"))
        await get(url, "/nosuchuser")
    finally:
        globalLogPublisher.removeObserver(global_events.append)
        await port.stopListening()
    assert [(e["method"], e["path"], e["status"]) for e in events] == [
        ("GET", "/+api?x=1", 200),
        ("GET", "/nosuchuser", 404),
    ]
    assert events[0]["bytes"] > 0
    assert events[0]["ms"] >= 0
    assert events[0]["client"] == "127.0.0.1"
    lines = access_log.read_text().splitlines()
    assert len(lines) == 2
    assert " [devpi_tx.request#info] GET /+api?x=1 200 " in lines[0]
    assert lines[1].split(" ", 1)[1].startswith("[devpi_tx.request#info] GET /nosuchuser 404 ")
    assert not [e for e in global_events if e.get("log_namespace") == "devpi_tx.request"]


def test_access_log_off(context):
    context.config = attrs.evolve(context.config, access_log="off")
    assert make_site(context)._access is None


class _Tee:
    def __init__(self, *observers):
        self._observers = observers

    def __call__(self, event):
        for observer in self._observers:
            observer(event)


# -- in memory -----------------------------------------------------------------


def test_in_memory_answers_carry_devpi_headers(client, context):
    for path in ["/+api", "/nobody", "/root/pypi/+simple/"]:
        answer = client.get(path)
        for name in DEVPI_HEADERS:
            assert answer.header(name), (path, name)
        assert answer.header("X-Devpi-Uuid") == context.uuid
        assert answer.header("X-Devpi-Serial") == str(context.storage.serial)


def test_in_memory_serial_is_the_one_answered_from(client, context):
    before = context.storage.serial
    answer = client.request("PUT", "/erin", {"password": "pw"})
    assert answer.code == 201
    assert answer.header("X-Devpi-Serial") == str(before + 1)
    answer = client.request("PUT", "/erin", {"password": "pw"})
    assert answer.code == 409
    assert answer.header("X-Devpi-Serial") == str(before + 1)


def refusals(client) -> list[dict]:
    events: list[dict] = []
    client.site._access = Logger(namespace="devpi_tx.request", observer=events.append)
    return events


def test_in_memory_over_long_body_refused_before_it_is_read(small_json_limit, client, context):
    events = refusals(client)
    serial = context.storage.serial
    connection = client.connect()
    connection.send(
        b"PUT /mallory HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    client.flush()
    # Answered on the head alone (no byte of the body was sent), and the
    # connection closed so that the body is never read.
    assert connection.status_line.startswith(b"HTTP/1.1 413 ")
    assert connection.closed
    head, body = connection.received.split(b"\r\n\r\n", 1)
    head += b"\r\n"
    assert b"\r\nX-Devpi-Serial: %d\r\n" % serial in head
    assert b"\r\nConnection: close\r\n" in head
    assert "limit is 1024 bytes" in json.loads(body)["message"]
    assert context.storage.serial == serial
    assert [(e["method"], e["status"]) for e in events] == [("PUT", 413)]


def test_in_memory_chunked_body_refused_once_past_the_cap(small_json_limit, client, context):
    connection = client.connect()
    chunk = b"x" * 800
    connection.send(b"PUT /mallory HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    connection.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    client.flush()
    assert connection.received == b""  # under the cap: still reading
    connection.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    client.flush()
    assert connection.status_line.startswith(b"HTTP/1.1 413 ")
    assert connection.closed
    assert "mallory" not in client.get("/").json["result"]


def test_in_memory_multipart_bodies_get_the_larger_cap(client, context):
    context.config = attrs.evolve(context.config, max_json_body_size=1024, max_request_body_size=4096)
    client = type(client)(context)
    for content_type, length, refused in [
        ("application/json", 2000, True),
        ("multipart/form-data; boundary=x", 2000, False),
        ("multipart/form-data; boundary=x", 5000, True),
    ]:
        connection = client.connect()
        connection.send(
            b"POST /nobody/dev/ HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (content_type.encode(), length)
        )
        client.flush()
        assert connection.status_line.startswith(b"HTTP/1.1 413 ") is refused, (content_type, length)

"""
Serving stored files over a real loopback port: validators, conditional
requests, byte ranges, HEAD, and a body streamed from disk that neither
holds the file in memory nor keeps other requests waiting, and that lets
go of the file when the client goes away.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import pytest_twisted
from klein import Klein
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from devpi_tx.web.files import CHUNK_SIZE, IMMUTABLE, FileBody, serve_file
from devpi_tx.web.sendfile import SendfileWorkers

#: Sun, 06 Nov 1994 08:49:37 GMT, plus a fraction HTTP dates cannot carry.
MTIME = 784111777.25
LAST_MODIFIED = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sun, 06 Nov 1994 08:49:36 GMT"
LATER = "Sun, 06 Nov 1994 08:49:38 GMT"

SMALL = bytes((i * 7 + 3) % 251 for i in range(1000))
SMALL_SHA = hashlib.sha256(SMALL).hexdigest()
ETAG = f'"{SMALL_SHA}"'

#: Generous bound for anything awaited from the network, so that a bug
#: fails the test instead of hanging it.
TIMEOUT = 20

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")


class FileServer:
    """
    A Klein app with one route, C{/<name>}, that serves the files the test
    registered through L{serve_file}, and keeps what it saw for the test to
    look at.
    """

    app = Klein()

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.files: dict[str, dict] = {}
        #: Server-side requests, in arrival order.
        self.requests: list = []
        #: The producers of streamed answers, in order.
        self.bodies: list[FileBody] = []
        #: Fire when the streamed answer of the same index is over.
        self.finished: list[Deferred] = []
        #: For each error serve_file raised: was the request still untouched?
        self.untouched: list[bool] = []
        #: Called with each request before it is answered.
        self.on_request = lambda request: None

    def add(self, name: str, data: bytes, **kwargs) -> str:
        path = str(self.tmp_path / name)
        with open(path, "wb") as f:
            f.write(data)
        self.register(name, path, size=len(data), sha256=hashlib.sha256(data).hexdigest(), **kwargs)
        return path

    def add_random(self, name: str, size: int) -> tuple[str, str]:
        """
        A file of C{size} random bytes, written a MiB at a time; returns its
        path and sha256.
        """
        path = str(self.tmp_path / name)
        digest = hashlib.sha256()
        with open(path, "wb") as f:
            for offset in range(0, size, 1 << 20):
                chunk = os.urandom(min(1 << 20, size - offset))
                digest.update(chunk)
                f.write(chunk)
        self.register(name, path, size=size, sha256=digest.hexdigest())
        return path, digest.hexdigest()

    def register(self, name: str, path: str, **kwargs) -> None:
        # The producer path is what these tests look into; the sendfile path
        # has tests of its own in test_sendfile.py.
        kwargs.setdefault("use_sendfile", False)
        self.files[name] = dict(path=path, last_modified=MTIME, **kwargs)

    @app.route("/<name>", methods=["GET", "HEAD"])
    def serve(self, request, name):
        self.requests.append(request)
        self.on_request(request)
        try:
            result = serve_file(request, **self.files[name])
        except OSError as e:
            self.untouched.append(
                not request.startedWriting
                and request.code == 200
                and not request.responseHeaders.hasHeader(b"etag")
            )
            request.setResponseCode(404 if isinstance(e, FileNotFoundError) else 500)
            return b"no such file\n" if isinstance(e, FileNotFoundError) else b"broken\n"
        if isinstance(result, Deferred):
            self.bodies.append(request.producer)
            finished: Deferred = Deferred()

            def over(passthrough):
                finished.callback(None)
                return passthrough

            result.addBoth(over)
            self.finished.append(finished)
        return result


@pytest.fixture
def server(tmp_path):
    """
    The file server listening on loopback: yields it with C{url} and a
    treq C{client} set; fails the test if anything logged a failure.
    """
    files = FileServer(tmp_path)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    site = Site(files.app.resource())
    site.sendfile_workers = SendfileWorkers(reactor)  # as make_site gives every site
    files.site = site
    port = pytest_twisted.blockon(serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site))
    pool = HTTPConnectionPool(reactor)
    files.url = f"http://127.0.0.1:{port.getHost().port}"
    files.port = port.getHost().port
    files.client = HTTPClient(Agent(reactor, pool=pool))
    files.events = events
    files.add("small", SMALL)
    files.add("empty", b"")
    yield files
    pytest_twisted.blockon(pool.closeCachedConnections())
    pytest_twisted.blockon(port.stopListening())
    site.sendfile_workers.stop()
    globalLogPublisher.removeObserver(events.append)
    failures = [event for event in events if "log_failure" in event]
    assert not failures, failures[0]["log_failure"].getTraceback()


async def fetch(server, name: str, headers: dict | None = None, method: str = "GET"):
    response = await server.client.request(method, f"{server.url}/{name}", headers=headers)
    body = await response.content()
    return response, body


def header(response, name: str) -> list[str] | None:
    return response.headers.getRawHeaders(name)


class RawClient(Protocol):
    """
    Sends one request and reads the answer off the socket as it comes,
    hashing the body rather than keeping it; can stop reading (pause) or
    reset the connection once C{pause_at} / C{abort_at} body bytes are in.
    """

    def __init__(self, request: bytes, *, pause_at: int | None = None, abort_at: int | None = None):
        self.request = request
        self.pause_at = pause_at
        self.abort_at = abort_at
        self.head = b""
        self._buffer = b""
        self.body_length = 0
        self.body_sha = hashlib.sha256()
        self.paused: Deferred = Deferred()
        self.closed: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if not self.head:
            self._buffer += data
            head, separator, data = self._buffer.partition(b"\r\n\r\n")
            if not separator:
                return
            self.head = head + separator
        self.body_length += len(data)
        self.body_sha.update(data)
        if self.abort_at is not None and self.body_length >= self.abort_at:
            self.abort_at = None
            self.transport.abortConnection()
        if self.pause_at is not None and self.body_length >= self.pause_at:
            self.pause_at = None
            self.transport.pauseProducing()
            self.paused.callback(None)

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)

    def status_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def headers(self) -> dict[bytes, bytes]:
        lines = self.head.split(b"\r\n")[1:]
        return dict(line.split(b": ", 1) for line in lines if line)


async def raw(server, request: bytes, **kwargs) -> RawClient:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port)
    return await connectProtocol(endpoint, RawClient(request, **kwargs))


def raw_request(method: str, name: str, *extra: str) -> bytes:
    lines = [f"{method} /{name} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def wait(d: Deferred) -> None:
    await d.addTimeout(TIMEOUT, reactor)


def open_paths() -> set[str]:
    paths = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return paths


# -- whole files ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_sends_file_and_headers(server):
    response, body = await fetch(server, "small")
    assert response.code == 200
    assert body == SMALL
    assert header(response, "Content-Type") == ["application/octet-stream"]
    assert response.length == 1000
    assert header(response, "ETag") == [ETAG]
    assert header(response, "Last-Modified") == [LAST_MODIFIED]
    assert header(response, "Accept-Ranges") == ["bytes"]
    assert header(response, "Cache-Control") == [IMMUTABLE]
    assert header(response, "Content-Range") is None


@pytest_twisted.ensureDeferred
async def test_content_type_and_cache_control_as_given(server):
    server.register(
        "custom",
        server.files["small"]["path"],
        size=1000,
        sha256=SMALL_SHA,
        content_type="application/zip",
        cache_control="no-cache",
    )
    response, body = await fetch(server, "custom")
    assert (response.code, body) == (200, SMALL)
    assert header(response, "Content-Type") == ["application/zip"]
    assert header(response, "Cache-Control") == ["no-cache"]


@pytest_twisted.ensureDeferred
async def test_empty_file(server):
    response, body = await fetch(server, "empty")
    assert (response.code, body) == (200, b"")
    assert response.length == 0
    assert header(response, "ETag") == [f'"{hashlib.sha256(b"").hexdigest()}"']
    # An empty file has no byte to range over: the whole (empty) file.
    response, body = await fetch(server, "empty", {"Range": "bytes=0-5"})
    assert (response.code, body) == (200, b"")
    assert header(response, "Content-Range") is None
    # Every answer so far came with a body-free file: nothing was streamed.
    assert server.bodies == []


@pytest_twisted.ensureDeferred
async def test_missing_file_raises_before_anything_is_written(server):
    server.register("gone", str(server.tmp_path / "gone"), size=10, sha256="0" * 64)
    for headers, method in [(None, "GET"), (None, "HEAD"), ({"If-None-Match": '"' + "0" * 64 + '"'}, "GET")]:
        response, body = await fetch(server, "gone", headers, method)
        assert response.code == 404
        assert header(response, "ETag") is None
        assert header(response, "Cache-Control") is None
        if method == "GET":
            assert body == b"no such file\n"
    assert server.untouched == [True, True, True]


# -- HEAD ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_head_sends_get_headers_without_body(server):
    response, body = await fetch(server, "small", method="HEAD")
    assert (response.code, body) == (200, b"")
    assert header(response, "ETag") == [ETAG]
    assert header(response, "Content-Type") == ["application/octet-stream"]
    # treq does not read a HEAD body, so look at the socket: the answer
    # ends with its headers.
    client = await raw(server, raw_request("HEAD", "small"))
    await wait(client.closed)
    assert client.status_line() == b"HTTP/1.1 200 OK"
    assert client.headers()[b"Content-Length"] == b"1000"
    assert client.body_length == 0


@pytest_twisted.ensureDeferred
async def test_head_of_large_file_reads_nothing(server):
    server.add_random("big", 3 * CHUNK_SIZE + 5)
    client = await raw(server, raw_request("HEAD", "big"))
    await wait(client.closed)
    assert client.status_line() == b"HTTP/1.1 200 OK"
    assert client.headers()[b"Content-Length"] == str(3 * CHUNK_SIZE + 5).encode()
    assert client.body_length == 0
    assert server.bodies == []


@pytest_twisted.ensureDeferred
async def test_head_with_range_answers_as_get_would(server):
    client = await raw(server, raw_request("HEAD", "small", "Range: bytes=10-19"))
    await wait(client.closed)
    assert client.status_line() == b"HTTP/1.1 206 Partial Content"
    assert client.headers()[b"Content-Length"] == b"10"
    assert client.headers()[b"Content-Range"] == b"bytes 10-19/1000"
    assert client.body_length == 0


# -- conditional requests ------------------------------------------------------


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"If-None-Match": ETAG}, 304),
        ({"If-None-Match": f"W/{ETAG}"}, 304),
        ({"If-None-Match": f'"other", {ETAG}'}, 304),
        ({"If-None-Match": f'"other",W/{ETAG} , "more"'}, 304),
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": '"other"'}, 200),
        ({"If-None-Match": SMALL_SHA}, 200),
        ({"If-None-Match": '"other", W/"more"'}, 200),
        ({"If-Modified-Since": LAST_MODIFIED}, 304),
        ({"If-Modified-Since": LATER}, 304),
        ({"If-Modified-Since": "Sunday, 06-Nov-94 08:49:37 GMT"}, 304),
        ({"If-Modified-Since": "Sun Nov  6 08:49:37 1994"}, 304),
        ({"If-Modified-Since": EARLIER}, 200),
        ({"If-Modified-Since": "yesterday"}, 200),
        ({"If-Modified-Since": "Sun, 06 Nov 1994 25:49:37 GMT"}, 200),
        # If-None-Match decides whenever it is sent.
        ({"If-None-Match": ETAG, "If-Modified-Since": EARLIER}, 304),
        ({"If-None-Match": '"other"', "If-Modified-Since": LATER}, 200),
    ],
)
@pytest_twisted.ensureDeferred
async def test_conditional_get(server, headers, status):
    response, body = await fetch(server, "small", headers)
    assert response.code == status
    assert header(response, "ETag") == [ETAG]
    assert header(response, "Last-Modified") == [LAST_MODIFIED]
    assert header(response, "Cache-Control") == [IMMUTABLE]
    if status == 304:
        assert body == b""
        assert header(response, "Content-Type") is None
    else:
        assert body == SMALL


@pytest_twisted.ensureDeferred
async def test_not_modified_on_head_and_over_range(server):
    response, body = await fetch(server, "small", {"If-None-Match": ETAG}, method="HEAD")
    assert (response.code, body) == (304, b"")
    response, body = await fetch(server, "small", {"If-None-Match": ETAG, "Range": "bytes=0-9"})
    assert (response.code, body) == (304, b"")
    client = await raw(server, raw_request("GET", "small", f"If-None-Match: {ETAG}"))
    await wait(client.closed)
    assert client.status_line() == b"HTTP/1.1 304 Not Modified"
    assert client.headers()[b"ETag"] == ETAG.encode()
    assert b"Content-Length" not in client.headers()
    assert b"Content-Type" not in client.headers()
    assert client.body_length == 0


# -- ranges --------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, start, end",
    [
        ("bytes=0-9", 0, 9),
        ("bytes=10-10", 10, 10),
        ("bytes=990-", 990, 999),
        ("bytes=0-", 0, 999),
        ("bytes=-5", 995, 999),
        ("bytes=-1000", 0, 999),
        ("bytes=-5000", 0, 999),
        ("bytes=500-99999", 500, 999),
        ("bytes=999-999", 999, 999),
        ("bytes=999-1000", 999, 999),
        ("Bytes=1-2", 1, 2),
        ("bytes= 3-4 ", 3, 4),
        ("bytes=5-6,", 5, 6),
        ("bytes=0007-0008", 7, 8),
    ],
)
@pytest_twisted.ensureDeferred
async def test_single_range(server, value, start, end):
    response, body = await fetch(server, "small", {"Range": value})
    assert response.code == 206
    assert body == SMALL[start : end + 1]
    assert header(response, "Content-Range") == [f"bytes {start}-{end}/1000"]
    assert response.length == end - start + 1
    assert header(response, "Content-Type") == ["application/octet-stream"]
    assert header(response, "ETag") == [ETAG]
    assert header(response, "Accept-Ranges") == ["bytes"]


@pytest.mark.parametrize(
    "value",
    ["bytes=1000-", "bytes=1000-2000", "bytes=-0", "bytes=5000-6000", "bytes=" + "9" * 5000 + "-"],
)
@pytest_twisted.ensureDeferred
async def test_unsatisfiable_range(server, value):
    response, body = await fetch(server, "small", {"Range": value})
    assert (response.code, body) == (416, b"")
    assert header(response, "Content-Range") == ["bytes */1000"]
    assert response.length == 0
    assert header(response, "Cache-Control") is None


@pytest.mark.parametrize(
    "value",
    [
        "bytes=5-1",
        "bytes=abc",
        "bytes=",
        "bytes=-",
        "bytes",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=1 -2",
        "bytes=٣-4",
        "items=0-5",
        "=0-5",
        # Several ranges: the whole file rather than multipart/byteranges.
        "bytes=0-1,5-6",
        "bytes=0-1, 5-",
        "bytes=-5,0-0",
        "bytes=1000-,2000-",
    ],
)
@pytest_twisted.ensureDeferred
async def test_range_ignored(server, value):
    response, body = await fetch(server, "small", {"Range": value})
    assert (response.code, body) == (200, SMALL)
    assert header(response, "Content-Range") is None
    assert response.length == 1000


@pytest.mark.parametrize(
    "if_range, status",
    [
        (ETAG, 206),
        (LAST_MODIFIED, 206),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 206),
        ('"other"', 200),
        (f"W/{ETAG}", 200),
        (SMALL_SHA, 200),
        (EARLIER, 200),
        (LATER, 200),
        ("garbage", 200),
    ],
)
@pytest_twisted.ensureDeferred
async def test_if_range(server, if_range, status):
    response, body = await fetch(server, "small", {"Range": "bytes=100-199", "If-Range": if_range})
    assert response.code == status
    if status == 206:
        assert body == SMALL[100:200]
        assert header(response, "Content-Range") == ["bytes 100-199/1000"]
    else:
        assert body == SMALL
        assert header(response, "Content-Range") is None


@pytest_twisted.ensureDeferred
async def test_if_range_mismatch_sends_whole_file_even_for_unsatisfiable_range(server):
    response, body = await fetch(server, "small", {"Range": "bytes=5000-", "If-Range": '"other"'})
    assert (response.code, body) == (200, SMALL)


# -- streaming -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_large_file_whole_and_ranges_byte_exact(server):
    size = 5 * 1024 * 1024 + 123
    path, sha = server.add_random("big", size)
    with open(path, "rb") as f:
        data = f.read()

    response, body = await fetch(server, "big")
    assert response.code == 200
    assert response.length == size
    assert len(body) == size
    assert body == data
    assert hashlib.sha256(body).hexdigest() == sha

    cases = [
        (0, CHUNK_SIZE - 1),
        (CHUNK_SIZE - 1, 2 * CHUNK_SIZE + 1),
        (CHUNK_SIZE, CHUNK_SIZE * 3 - 1),
        (1_000_001, 4_000_003),
        (size - 3 * CHUNK_SIZE - 7, size - 1),
        (123, 123 + CHUNK_SIZE),
    ]
    for start, end in cases:
        response, body = await fetch(server, "big", {"Range": f"bytes={start}-{end}"})
        assert response.code == 206
        assert header(response, "Content-Range") == [f"bytes {start}-{end}/{size}"]
        assert response.length == end - start + 1
        assert body == data[start : end + 1], (start, end)
    response, body = await fetch(server, "big", {"Range": "bytes=-200000"})
    assert (response.code, body) == (206, data[-200000:])
    response, body = await fetch(server, "big", {"Range": f"bytes={size - 100000}-"})
    assert (response.code, body) == (206, data[-100000:])

    # The whole file and every range above but the first (one chunk, read
    # at once) went through the producer, which read exactly the bytes
    # asked for, finished each request and closed its file.
    lengths = [size] + [end - start + 1 for start, end in cases[1:]] + [200000, 100000]
    assert [body.produced for body in server.bodies] == lengths
    for body, finished in zip(server.bodies, server.finished, strict=True):
        await wait(finished)
        assert body.closed


class FlowWatch:
    """
    Watches the flow control of the first request's connection: the
    transport pauses its channel (and so the body's producer) when the
    socket will take no more, and resumes it when it will.
    """

    def __init__(self) -> None:
        self.paused = False
        self.resumes = 0
        self._watching = False

    def watch(self, request) -> None:
        if self._watching:
            return
        self._watching = True
        channel = request.channel
        pause, resume = channel.pauseProducing, channel.resumeProducing

        def paused() -> None:
            self.paused = True
            pause()

        def resumed() -> None:
            self.paused = False
            self.resumes += 1
            resume()

        # The transport calls its producer's methods through the instance.
        channel.pauseProducing, channel.resumeProducing = paused, resumed


@needs_proc
@pytest_twisted.ensureDeferred
async def test_slow_reader_holds_up_nothing_but_itself(server):
    size = 50 * 1024 * 1024
    path, sha = server.add_random("big", size)
    flow = FlowWatch()
    server.on_request = flow.watch
    client = await raw(server, raw_request("GET", "big"), pause_at=1)
    await wait(client.paused)
    assert client.status_line() == b"HTTP/1.1 200 OK"
    big_request = server.requests[0]
    [body] = server.bodies

    # Another request is answered in full while the big one waits for its
    # reader.
    response, small = await fetch(server, "small")
    assert (response.code, small) == (200, SMALL)
    assert not big_request.finished
    assert not client.closed.called
    assert client.body_length < size

    # Wait until the producer stops being asked for more: the connection
    # is paused (the socket buffers are full) and stays paused while
    # another request is answered from start to end.
    for _ in range(200):
        resumes = flow.resumes
        await fetch(server, "small")
        if flow.paused and flow.resumes == resumes:
            break
    else:
        raise AssertionError("the producer never stopped reading")
    assert body.produced < size // 2
    assert path in open_paths()
    assert not body.closed

    client.transport.resumeProducing()
    await wait(client.closed)
    assert client.body_length == size
    assert client.body_sha.hexdigest() == sha
    await wait(server.finished[0])
    assert big_request.finished
    assert body.closed
    assert path not in open_paths()


@needs_proc
@pytest_twisted.ensureDeferred
async def test_disconnect_mid_transfer_stops_producer_and_closes_file(server):
    size = 20 * 1024 * 1024
    path, _ = server.add_random("big", size)
    client = await raw(server, raw_request("GET", "big"), abort_at=2 * CHUNK_SIZE)
    await wait(client.closed)
    assert 2 * CHUNK_SIZE <= client.body_length < size
    [body] = server.bodies
    await wait(server.finished[0])
    assert body.closed
    assert body.produced < size
    assert path not in open_paths()
    assert not server.requests[0].finished
    # The producer asks for nothing more once stopped, and the server
    # goes on answering.
    produced = body.produced
    response, small = await fetch(server, "small")
    assert (response.code, small) == (200, SMALL)
    assert body.produced == produced


@needs_proc
@pytest_twisted.ensureDeferred
async def test_disconnect_during_range_closes_file(server):
    size = 8 * 1024 * 1024
    path, sha = server.add_random("big", size)
    client = await raw(
        server, raw_request("GET", "big", f"Range: bytes=1000-{size - 1000}"), abort_at=CHUNK_SIZE
    )
    await wait(client.closed)
    assert client.status_line() == b"HTTP/1.1 206 Partial Content"
    await wait(server.finished[0])
    assert server.bodies[0].closed
    assert path not in open_paths()


@pytest_twisted.ensureDeferred
async def test_file_shorter_than_recorded(server):
    # A small body is read before anything is set, so this is an error the
    # caller can still answer.
    path = server.add("short", b"x" * 100)
    server.register("short", path, size=200, sha256="1" * 64)
    response, body = await fetch(server, "short")
    assert (response.code, body) == (500, b"broken\n")
    assert header(response, "ETag") is None
    assert server.untouched == [True]

    # A streamed body has sent its headers already: the connection is cut
    # after what there is, so the client cannot take it for the file.
    path = server.add("short-big", b"y" * (3 * CHUNK_SIZE))
    server.register("short-big", path, size=4 * CHUNK_SIZE, sha256="2" * 64)
    client = await raw(server, raw_request("GET", "short-big"))
    await wait(client.closed)
    assert client.status_line() == b"HTTP/1.1 200 OK"
    assert client.headers()[b"Content-Length"] == str(4 * CHUNK_SIZE).encode()
    assert client.body_length == 3 * CHUNK_SIZE
    await wait(server.finished[0])
    assert server.bodies[0].closed
    errors = [e for e in server.events if e.get("log_namespace") == "devpi_tx.files"]
    assert [e["log_format"] for e in errors] == ["{path} ended after {produced} of {length} bytes"]
    assert (errors[0]["produced"], errors[0]["length"]) == (3 * CHUNK_SIZE, 4 * CHUNK_SIZE)


@pytest_twisted.ensureDeferred
async def test_streamed_answers_on_one_connection(server):
    """
    A persistent connection carries streamed, small and bodyless answers
    one after another: each answer is exactly as long as it says.
    """
    size = 3 * CHUNK_SIZE + 17
    path, _ = server.add_random("big", size)
    with open(path, "rb") as f:
        data = f.read()
    for headers, method, code, expected in [
        (None, "GET", 200, data),
        (None, "HEAD", 200, b""),
        ({"Range": "bytes=5-"}, "GET", 206, data[5:]),
        ({"If-None-Match": "*"}, "GET", 304, b""),
        ({"Range": "bytes=-10"}, "GET", 206, data[-10:]),
        ({"Range": f"bytes={size}-"}, "GET", 416, b""),
        (None, "GET", 200, data),
    ]:
        response, body = await fetch(server, "big", headers, method)
        assert (response.code, body) == (code, expected)
    ports = {request.getClientAddress().port for request in server.requests}
    assert len(ports) == 1
    assert len(server.requests) == 7

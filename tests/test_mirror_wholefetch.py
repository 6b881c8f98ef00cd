"""
Fetching small documents whole over kept connections: the framings a
server may use, gzip, redirects (credentials kept within the origin only),
limits on what is read, and every way an answer can go wrong ending in a
L{FetchError}, never in a short body.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import URI, BrowserLikePolicyForHTTPS

from devpi_tx.mirror.client import DirectEndpoints
from devpi_tx.mirror.wholefetch import FetchError, WholeFetcher, split_target
from tests.test_tls import TrustOnly, make_self_signed, ssl_endpoint

#: What a scripted server sends for one request: bytes, then whether to
#: close the connection (None: send nothing at all).
Script = Callable[[bytes, int], "tuple[bytes, bool] | None"]


class Scripted(Protocol):
    """
    Reads requests (without bodies) and answers each as the script says.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.factory.requests.append(head)
            answer = self.factory.script(head, len(self.factory.requests))
            if answer is None:
                continue
            data, close = answer
            self.transport.write(data)
            if close:
                self.transport.loseConnection()


class ScriptedFactory(Factory):
    protocol = Scripted

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0


def ok(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), head.encode(), body)


def moved(code: int, location: str) -> bytes:
    return b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % (code, location.encode())


@pytest.fixture
def scripted():
    """
    Serve a script on loopback: C{serve(script)} gives the server's factory
    and base URL.
    """
    ports = []

    def serve(script: Script):
        factory = ScriptedFactory(script)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        return factory, f"http://127.0.0.1:{port.getHost().port}"

    yield serve
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def fetcher():
    made = []

    def make(max_kept: int = 4, max_redirects: int = 3, tls_policy=None) -> WholeFetcher:
        client = WholeFetcher(
            reactor,
            DirectEndpoints(reactor, tls_policy or BrowserLikePolicyForHTTPS()),
            max_kept=max_kept,
            idle_timeout=60.0,
            max_redirects=max_redirects,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close_idle()


def fetch(client: WholeFetcher, url: str, **kwargs) -> Deferred:
    return ensureDeferred(client.fetch("GET", url, **kwargs))


async def fails(client: WholeFetcher, url: str, **kwargs) -> str:
    with pytest.raises(FetchError) as caught:
        await client.fetch("GET", url, **kwargs)
    return str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_body_of_known_length_is_read_and_the_connection_kept(scripted, fetcher):
    server, url = scripted(lambda head, n: (ok(b"page %d" % n, "ETag: abc", "X-Two: a", "X-Two: b"), False))
    client = fetcher()
    first = await fetch(client, url + "/simple/one/", headers={"Accept": "text/html"})
    second = await fetch(client, url + "/simple/two/")
    assert (first.code, first.body, second.body) == (200, b"page 1", b"page 2")
    assert first.header("ETag") == "abc"
    assert first.header("x-two") == "a, b"
    assert server.connections == 1
    lines = server.requests[0].split(b"\r\n")
    assert lines[0] == b"GET /simple/one/ HTTP/1.1"
    assert b"Host: 127.0.0.1:%s" % url.rsplit(":", 1)[1].encode() in lines
    assert b"Accept: text/html" in lines
    assert b"Accept-Encoding: gzip" in lines


@pytest_twisted.ensureDeferred
async def test_keeping_off_asks_the_server_to_close(scripted, fetcher):
    server, url = scripted(lambda head, n: (ok(b"x"), False))
    client = fetcher(max_kept=0)
    await fetch(client, url + "/a")
    assert b"Connection: close" in server.requests[0].split(b"\r\n")


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_decoded(scripted, fetcher):
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    server, url = scripted(lambda head, n: (body, False))
    client = fetcher()
    assert (await fetch(client, url + "/a")).body == b"hello world"
    assert (await fetch(client, url + "/b")).body == b"hello world"
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_a_body_without_length_ends_with_the_connection(scripted, fetcher):
    server, url = scripted(lambda head, n: (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", True))
    client = fetcher()
    assert (await fetch(client, url + "/a")).body == b"until the end"
    await fetch(client, url + "/b")
    assert server.connections == 2


@pytest_twisted.ensureDeferred
async def test_connection_close_is_honoured(scripted, fetcher):
    server, url = scripted(lambda head, n: (ok(b"x", "Connection: close"), False))
    client = fetcher()
    await fetch(client, url + "/a")
    await fetch(client, url + "/b")
    assert server.connections == 2


@pytest_twisted.ensureDeferred
async def test_gzip_is_decoded(scripted, fetcher):
    packed = gzip.compress(b'{"files": []}')
    server, url = scripted(lambda head, n: (ok(packed, "Content-Encoding: gzip"), False))
    assert (await fetch(fetcher(), url + "/a")).body == b'{"files": []}'


@pytest_twisted.ensureDeferred
async def test_an_unknown_content_encoding_is_an_error(scripted, fetcher):
    server, url = scripted(lambda head, n: (ok(b"x", "Content-Encoding: br"), False))
    assert "Content-Encoding" in await fails(fetcher(), url + "/a")


@pytest_twisted.ensureDeferred
async def test_not_modified_and_head_have_no_body(scripted, fetcher):
    answers = {
        1: b"HTTP/1.1 304 Not Modified\r\nETag: e\r\n\r\n",
        2: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    }
    server, url = scripted(lambda head, n: (answers[n], False))
    client = fetcher()
    not_modified = await fetch(client, url + "/a", headers={"If-None-Match": "e"})
    head = await ensureDeferred(client.fetch("HEAD", url + "/a"))
    assert (not_modified.code, not_modified.body, head.code, head.body) == (304, b"", 200, b"")
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_interim_answers_are_skipped(scripted, fetcher):
    server, url = scripted(lambda head, n: (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real"), False))
    assert (await fetch(fetcher(), url + "/a")).body == b"real"


@pytest_twisted.ensureDeferred
async def test_redirects_are_followed_and_credentials_stay_within_the_origin(scripted, fetcher):
    final, final_url = scripted(lambda head, n: (ok(b"there"), False))

    def redirecting(head, n):
        if n == 1:
            return moved(302, "/moved/"), False
        return moved(301, final_url + "/final/"), False

    first, first_url = scripted(redirecting)
    answer = await fetch(fetcher(), first_url + "/start/", headers={"Authorization": "Basic c2VjcmV0"})
    assert (answer.body, answer.url) == (b"there", final_url + "/final/")
    asked = [head.split(b"\r\n")[0] for head in first.requests]
    assert asked == [b"GET /start/ HTTP/1.1", b"GET /moved/ HTTP/1.1"]
    assert all(b"Authorization: Basic c2VjcmV0" in head for head in first.requests)
    assert b"Authorization" not in final.requests[0]


@pytest_twisted.ensureDeferred
async def test_redirects_are_limited(scripted, fetcher):
    server, url = scripted(lambda head, n: (moved(302, "/again"), False))
    assert "more than 3 redirects" in await fails(fetcher(max_redirects=3), url + "/a")
    assert len(server.requests) == 4


@pytest_twisted.ensureDeferred
async def test_a_redirect_without_location_is_an_error(scripted, fetcher):
    server, url = scripted(lambda head, n: (b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n", False))
    assert "without a Location" in await fails(fetcher(), url + "/a")


@pytest_twisted.ensureDeferred
async def test_a_body_over_the_limit_is_refused(scripted, fetcher):
    server, url = scripted(lambda head, n: (ok(b"x" * 100), False))
    assert "over the limit" in await fails(fetcher(), url + "/a", max_body=99)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"a\r\n0123456789\r\n" * 10 + b"0\r\n\r\n"
    server, url = scripted(lambda head, n: (chunked, False))
    assert "over the limit" in await fails(fetcher(), url + "/a", max_body=99)
    packed = gzip.compress(b"y" * 1000)
    server, url = scripted(lambda head, n: (ok(packed, "Content-Encoding: gzip"), False))
    assert "once decoded" in await fails(fetcher(), url + "/a", max_body=999)


@pytest_twisted.ensureDeferred
async def test_a_head_that_never_ends_is_refused(scripted, fetcher):
    server, url = scripted(lambda head, n: (b"HTTP/1.1 200 OK\r\n" + b"X-Long: y\r\n" * 10000, False))
    assert "answer head over" in await fails(fetcher(), url + "/a")


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"SPDY/3 200 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2xx OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed answer"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_answers_are_errors(scripted, fetcher, answer, message):
    server, url = scripted(lambda head, n: (answer, False))
    assert message in await fails(fetcher(), url + "/a")


@pytest_twisted.ensureDeferred
async def test_a_body_cut_short_is_an_error_not_a_short_page(scripted, fetcher):
    server, url = scripted(lambda head, n: (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", True))
    assert "in the middle of the answer" in await fails(fetcher(), url + "/a")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    server, url = scripted(lambda head, n: (chunked, True))
    assert "in the middle of the answer" in await fails(fetcher(), url + "/a")


@pytest_twisted.ensureDeferred
async def test_a_kept_connection_closed_by_the_server_is_replaced_once(scripted, fetcher):
    # The first connection answers once and then closes on the next request
    # without a word, as a server does whose keep-alive timer ran out.
    def script(head, n):
        if n == 2:
            return b"", True
        return ok(b"answer %d" % n), False

    server, url = scripted(script)
    client = fetcher()
    assert (await fetch(client, url + "/a")).body == b"answer 1"
    assert (await fetch(client, url + "/b")).body == b"answer 3"
    assert server.connections == 2


@pytest_twisted.ensureDeferred
async def test_a_new_connection_closed_without_answer_is_an_error(scripted, fetcher):
    server, url = scripted(lambda head, n: (b"", True))
    assert "closed before any answer" in await fails(fetcher(), url + "/a")
    assert server.connections == 1


@pytest_twisted.ensureDeferred
async def test_silence_ends_the_exchange_after_the_timeout(scripted, fetcher):
    server, url = scripted(lambda head, n: None)
    assert "no answer for 0.2 s" in await fails(fetcher(), url + "/a", timeout=0.2)


@pytest_twisted.ensureDeferred
async def test_a_cancelled_fetch_drops_its_connection(scripted, fetcher):
    server, url = scripted(lambda head, n: None)
    client = fetcher()
    pending = fetch(client, url + "/a")
    while not server.requests:
        await deferLater(0.01)
    pending.cancel()
    with pytest.raises(Exception) as caught:
        await pending
    assert caught.type.__name__ == "CancelledError"
    assert client._idle.take((b"http", b"127.0.0.1", int(url.rsplit(":", 1)[1]))) is None


@pytest.mark.parametrize("path", ["/a b", "/a\r\nX-Evil: 1"])
@pytest_twisted.ensureDeferred
async def test_a_request_target_with_spaces_or_line_breaks_is_refused(scripted, fetcher, path):
    server, url = scripted(lambda head, n: (ok(b"x"), False))
    with pytest.raises((FetchError, ValueError)):
        await fetch(fetcher(), url + path)
    assert server.requests == []


@pytest_twisted.ensureDeferred
async def test_a_header_value_with_a_line_break_is_refused(scripted, fetcher):
    server, url = scripted(lambda head, n: (ok(b"x"), False))
    assert "line break" in await fails(fetcher(), url + "/a", headers={"X-A": "1\r\nX-Evil: 2"})
    assert server.requests == []


def deferLater(seconds: float) -> Deferred:
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_bytes_past_the_announced_length_are_not_taken_for_the_next_answer(scripted, fetcher):
    server, url = scripted(lambda head, n: (ok(b"mine") + b"HTTP/1.1 200 OK\r\n", False))
    client = fetcher()
    assert (await fetch(client, url + "/a")).body == b"mine"
    assert (await fetch(client, url + "/b")).body == b"mine"
    assert server.connections == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/simple/a/",
        "https://example.test/simple/a/?x=1&y=2",
        "http://example.test",
        "http://example.test?q=1",
        "http://example.test#top",
        "http://example.test/a/b#frag?not-a-query",
        "http://[::1]:3141/root/pypi/+simple/a/",
        "http://example.test:80/a%20b/",
    ],
)
def test_the_request_target_is_the_origin_form_twisted_would_send(url):
    origin, target = split_target(url)
    parsed = URI.fromBytes(url.encode("ascii"))
    # An empty path is sent as "/" (RFC 9112, 3.2.1), where Twisted would
    # send "?q=1" alone.
    assert target == (parsed.originForm if parsed.originForm.startswith(b"/") else b"/" + parsed.originForm)
    assert target.startswith(b"/")
    reparsed = URI.fromBytes(origin + b"/")
    assert (reparsed.scheme, reparsed.host, reparsed.port) == (parsed.scheme, parsed.host, parsed.port)


@pytest.mark.parametrize(
    "url", ["/simple/a/", "example.test/a", "ftp://example.test/a", "http://ex\u00e4mple.test/"]
)
@pytest_twisted.ensureDeferred
async def test_only_absolute_ascii_http_urls_are_fetched(fetcher, url):
    assert "URL" in await fails(fetcher(), url)


@pytest_twisted.ensureDeferred
async def test_one_origin_is_parsed_once_for_many_pages(scripted, fetcher):
    server, url = scripted(lambda head, n: (ok(b"p"), False))
    client = fetcher()
    for name in ("a", "b", "c"):
        await fetch(client, f"{url}/simple/{name}/")
    assert list(client._origins) == [url.encode("ascii")]
    assert [request.split(b"\r\n")[0] for request in server.requests] == [
        b"GET /simple/%s/ HTTP/1.1" % name for name in (b"a", b"b", b"c")
    ]


@pytest_twisted.ensureDeferred
async def test_an_https_upstream_is_fetched_over_verified_tls_on_a_kept_connection(fetcher, tmp_path):
    cert = make_self_signed(tmp_path / "tls", "upstream")
    other = make_self_signed(tmp_path / "tls", "other")
    factory = ScriptedFactory(lambda head, n: (ok(b"page %d" % n), False))
    port = await serverFromString(reactor, ssl_endpoint(0, cert)).listen(factory)
    url = f"https://127.0.0.1:{port.getHost().port}"
    trusting = fetcher(tls_policy=TrustOnly(cert.cert_pem))
    distrusting = fetcher(tls_policy=TrustOnly(other.cert_pem))
    try:
        first = await fetch(trusting, url + "/simple/one/")
        second = await fetch(trusting, url + "/simple/two/")
        assert (first.body, second.body) == (b"page 1", b"page 2")
        assert factory.connections == 1
        assert factory.requests[0].startswith(b"GET /simple/one/ HTTP/1.1\r\n")
        message = await fails(distrusting, url + "/simple/three/")
        assert "certificate verify failed" in message
        assert len(factory.requests) == 2
    finally:
        await port.stopListening()

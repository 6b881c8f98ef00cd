"""
The upstream client over a real loopback connection: gzip, redirects (to
a limit), credentials moved out of the URL, timeouts, URLs that are not
ASCII.
"""

from __future__ import annotations

import gzip
import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from devpi_tx.mirror.client import (
    JSON_V1,
    MAX_REDIRECTS,
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
    ask_upstream,
    fetch_whole,
    make_http_client,
)

from .conftest import on_loopback

PAGE = {
    "meta": {"api-version": "1.1"},
    "name": "hello",
    "files": [{"filename": "hello-1.0.tar.gz", "url": "hello-1.0.tar.gz", "hashes": {}}],
}


class Upstream(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes | None, bytes | None]] = []
        self.channels: list[object] = []

    def render_GET(self, request):
        self.channels.append(request.channel)
        self.seen.append(
            (request.path, request.getHeader(b"accept-encoding"), request.getHeader(b"authorization"))
        )
        parts = request.path.strip(b"/").split(b"/")
        if parts[0] == b"silent":
            return NOT_DONE_YET  # never answers
        if parts[0] == b"big":
            return b"x" * 200_000
        if parts[0] == b"hop":
            # /hop/N/...: redirect N more times, then to the page.
            left = int(parts[1])
            target = b"/hop/%d/" % (left - 1) if left > 1 else b"/simple/hello/"
            request.setResponseCode(302)
            request.setHeader(b"Location", target)
            return b""
        body = json.dumps(PAGE).encode()
        request.setHeader(b"Content-Type", JSON_V1.encode())
        if b"gzip" in (request.getHeader(b"accept-encoding") or b""):
            request.setHeader(b"Content-Encoding", b"gzip")
            return gzip.compress(body)
        return body


@pytest.fixture
def upstream():
    resource = Upstream()
    with on_loopback(Site(resource)) as port:
        yield resource, f"http://127.0.0.1:{port}"


def client():
    return UpstreamClient(make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False)), timeout=5)


@pytest_twisted.ensureDeferred
async def test_gzip_answers_are_decoded_and_credentials_sent_as_basic(upstream):
    resource, url = upstream
    page = await client().project_page(url.replace("http://", "http://u:p@") + "/simple/", "hello")
    assert [link.filename for link in page.links] == ["hello-1.0.tar.gz"]
    ((path, encoding, authorization),) = resource.seen
    assert path == b"/simple/hello/"
    assert b"gzip" in encoding
    assert authorization == b"Basic dTpw"


@pytest_twisted.ensureDeferred
async def test_redirects_are_followed_up_to_the_limit(upstream):
    resource, url = upstream
    page = await client().project_page(f"{url}/hop/{MAX_REDIRECTS}/", "x")
    assert [link.filename for link in page.links] == ["hello-1.0.tar.gz"]
    assert len(resource.seen) == MAX_REDIRECTS + 1
    with pytest.raises(UpstreamError, match="Infinite redirection|redirect"):
        await client().project_page(f"{url}/hop/{MAX_REDIRECTS + 1}/", "x")


@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_ascii_is_sent_percent_encoded(upstream):
    resource, url = upstream
    http = make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))
    _, response = await ask_upstream(http, "GET", f"{url}/simple/h\u00e9llo/", timeout=5)
    assert response.code == 200
    assert resource.seen[0][0] == b"/simple/h%C3%A9llo/"


@pytest_twisted.ensureDeferred
async def test_a_page_url_that_is_not_ascii_is_sent_percent_encoded(upstream):
    resource, url = upstream
    await client().project_page(url + "/simple/", "h\u00e9llo")
    assert resource.seen[0][0] == b"/simple/h%C3%A9llo/"


@pytest_twisted.ensureDeferred
async def test_a_silent_upstream_page_times_out(upstream):
    resource, url = upstream
    with pytest.raises(UpstreamError, match="no answer for 0.2 s"):
        await UpstreamClient(make_http_client(reactor), timeout=0.2).project_page(url + "/silent/", "x")


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_does_not_answer_times_out(upstream):
    resource, url = upstream
    http = make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))
    with pytest.raises(UpstreamTimeout, match="silent/: no answer for 0.2 s"):
        await ask_upstream(http, "GET", f"{url}/silent/", timeout=0.2)
    assert [seen[0] for seen in resource.seen] == [b"/silent/"]


@pytest_twisted.ensureDeferred
async def test_upstream_connections_are_not_announced_in_the_log(upstream):
    from twisted.logger import globalLogPublisher

    resource, url = upstream
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        page = await client().project_page(url + "/simple/", "hello")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [link.filename for link in page.links] == ["hello-1.0.tar.gz"]
    assert [e for e in events if "factory" in e.get("log_format", "")] == []


@pytest_twisted.ensureDeferred
async def test_a_burst_of_pages_reuses_the_connections_of_the_last(upstream):
    """
    Installers ask for dozens of pages at once: the connections of one
    burst are kept for the next rather than closed and made again.
    """
    from twisted.internet.defer import gatherResults

    resource, url = upstream
    client = UpstreamClient(make_http_client(reactor), timeout=5)

    def burst():
        return gatherResults(
            [ensureDeferred(client.project_page(url + "/simple/", f"p{n}")) for n in range(40)]
        )

    await burst()
    first, resource.channels = resource.channels, []
    await burst()
    assert len(set(map(id, first))) > 16
    assert set(map(id, resource.channels)) <= set(map(id, first))  # first keeps them alive


@pytest_twisted.ensureDeferred
async def test_kept_connections_are_closed_when_asked():
    resource = Upstream()
    site = Site(resource)
    lost: list[Deferred] = []
    build = site.buildProtocol

    def watched(addr):
        channel = build(addr)
        gone: Deferred = Deferred()
        lost.append(gone)
        end = channel.connectionLost
        channel.connectionLost = lambda reason: (end(reason), gone.callback(None))
        return channel

    site.buildProtocol = watched
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    port = listening.getHost().port
    try:
        http = make_http_client(reactor)
        await UpstreamClient(http, timeout=5).project_page(f"http://127.0.0.1:{port}/simple/", "hello")
        (gone,) = lost
        await UpstreamClient(http, timeout=5).project_page(f"http://127.0.0.1:{port}/simple/", "hello")
        assert len(lost) == 1 and not gone.called  # the one connection was kept and used again
        await http.close_idle()
        await gone
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_whole_answer_over_its_limit_is_refused(upstream):
    resource, url = upstream
    http = make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))
    with pytest.raises(UpstreamError, match="over the limit of 50000"):
        await fetch_whole(http, "GET", url + "/big/", timeout=5, max_body=50_000)
    answer = await fetch_whole(http, "GET", url + "/big/", timeout=5, max_body=200_000)
    assert answer.body == b"x" * 200_000


def test_an_upstream_that_never_accepts_times_out_after_the_request_timeout():
    """
    Connecting counts against the request's timeout (and the endpoint's
    own connect timeout is the server's request timeout too).
    """
    clock = MemoryReactorClock()
    http = make_http_client(clock, HTTPConnectionPool(clock, persistent=False), environ={}, connect_timeout=3)
    d = Deferred.fromCoroutine(
        UpstreamClient(http, timeout=3).project_page("http://127.0.0.1:1/simple/", "x")
    )
    ((host, port, _, connect_timeout, _),) = clock.tcpClients
    assert (host, port, connect_timeout) == ("127.0.0.1", 1, 3)
    clock.advance(2.9)
    assert not d.called
    clock.advance(0.2)
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(UpstreamTimeout)
    assert "no answer for 3 s" in str(failure[0].value)


class _Scripted(Protocol):
    """
    Answers any request with a canned byte string, then closes.
    """

    answer = b""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(self.answer)
        self.transport.loseConnection()


@pytest.mark.parametrize(
    "answer, expected",
    [
        # HTTP/1.0 style: no length, the end of the connection ends the body.
        (b"HTTP/1.0 200 OK\r\n\r\n" + json.dumps(PAGE).encode(), ["hello-1.0.tar.gz"]),
        # Cut short: an error, never a short page.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n<a href='x-1.0.zip'>x-1.0.zip</a>", UpstreamError),
    ],
)
@pytest_twisted.ensureDeferred
async def test_answers_ended_by_the_connection(answer, expected):
    factory = Factory.forProtocol(_Scripted)
    factory.protocol = type("Scripted", (_Scripted,), {"answer": answer})
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port = listening.getHost().port
    try:
        client = UpstreamClient(make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False)), 5)
        if expected is UpstreamError:
            with pytest.raises(UpstreamError):
                await client.project_page(f"http://127.0.0.1:{port}/simple/", "x")
        else:
            page = await client.project_page(f"http://127.0.0.1:{port}/simple/", "x")
            assert [link.filename for link in page.links] == expected
    finally:
        await listening.stopListening()

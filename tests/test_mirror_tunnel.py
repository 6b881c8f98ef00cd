"""
Upstream requests to https URLs go through the CONNECT tunnel of the proxy
that https_proxy names (unless no_proxy matches), with TLS checked against
the target.  Everything runs on 127.0.0.1: a tiny CONNECT proxy that relays
bytes, and a TLS upstream with a self-signed certificate.
"""

from __future__ import annotations

import base64
import json

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from devpi_tx.mirror.client import UpstreamClient, UpstreamError, make_http_client
from devpi_tx.mirror.tunnel import HTTPProxy, TunnelEndpoint, TunnelError
from tests.test_tls import SelfSigned, TrustOnly, make_self_signed, ssl_endpoint

# -- a CONNECT proxy -----------------------------------------------------------


class _Relay(Protocol):
    """
    The proxy's connection to the target: what the target sends goes back
    to the client.
    """

    def __init__(self, client: _ConnectProxy) -> None:
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        self.client.transport.loseConnection()


class _ConnectProxy(Protocol):
    """
    One client of the proxy: reads a request head, records it, and answers
    CONNECT to 127.0.0.1 by connecting there and relaying both ways.  Wrong
    credentials get a 407 with the connection left open (the client must
    not wait for it to close), an unreachable target a 502.
    """

    def __init__(self, factory: ConnectProxyFactory) -> None:
        self.factory = factory
        self.buffer = b""
        self.relay: _Relay | None = None
        self.answered = False

    def connectionMade(self) -> None:
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.transport.write(data)
            return
        self.buffer += data
        head, separator, rest = self.buffer.partition(b"\r\n\r\n")
        if not separator or self.answered:
            return
        self.answered = True
        self.buffer = rest
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.factory.seen.append((request_line, headers))
        method, target, _ = request_line.split(" ")
        host, _, port = target.rpartition(":")
        if self.factory.credentials and headers.get("proxy-authorization") != self.factory.credentials:
            self.transport.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
            )
            return
        if method != "CONNECT" or host != "127.0.0.1":
            self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()
            return
        connecting = TCP4ClientEndpoint(reactor, host, int(port)).connect(
            Factory.forProtocol(lambda: _Relay(self))
        )
        connecting.addCallbacks(self._connected, self._unreachable)

    def _connected(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self.buffer:
            relay.transport.write(self.buffer)
            self.buffer = b""

    def _unreachable(self, failure: Failure) -> None:
        self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.transport.loseConnection()


class ConnectProxyFactory(Factory):
    noisy = False

    def __init__(self) -> None:
        #: (request line, lower-cased headers) of each request.
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.connections: list[_ConnectProxy] = []
        #: The Proxy-Authorization value required, if any.
        self.credentials: str | None = None

    def buildProtocol(self, addr) -> _ConnectProxy:
        return _ConnectProxy(self)


@attrs.frozen
class Running:
    proxy: ConnectProxyFactory
    proxy_port: int
    upstream_port: int
    cert: SelfSigned
    other_cert: SelfSigned

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def upstream_url(self) -> str:
        return f"https://127.0.0.1:{self.upstream_port}/simple/"


class Upstream(Resource):
    """
    The same PEP 691 page for every project.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader("Content-Type", "application/vnd.pypi.simple.v1+json")
        files = [{"filename": "hello-1.0.tar.gz", "url": "hello-1.0.tar.gz", "hashes": {}}]
        return json.dumps({"meta": {"api-version": "1.1"}, "name": "hello", "files": files}).encode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[SelfSigned, SelfSigned]:
    """
    The upstream's certificate, and another one it does not use.
    """
    directory = tmp_path_factory.mktemp("tls")
    return make_self_signed(directory, "upstream"), make_self_signed(directory, "other")


@pytest.fixture
def running(certs: tuple[SelfSigned, SelfSigned]):
    cert, other_cert = certs
    proxy = ConnectProxyFactory()
    proxy_port = pytest_twisted.blockon(serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(proxy))
    upstream_port = pytest_twisted.blockon(
        serverFromString(reactor, ssl_endpoint(0, cert)).listen(Site(Upstream()))
    )
    yield Running(proxy, proxy_port.getHost().port, upstream_port.getHost().port, cert, other_cert)
    for connection in proxy.connections:
        connection.transport.abortConnection()
    pytest_twisted.blockon(proxy_port.stopListening())
    pytest_twisted.blockon(upstream_port.stopListening())


def upstream_client(
    running: Running, environ: dict[str, str], pool: HTTPConnectionPool | None = None, trust=None
) -> UpstreamClient:
    pool = pool or HTTPConnectionPool(reactor, persistent=False)
    policy = TrustOnly((trust or running.cert).cert_pem)
    return UpstreamClient(make_http_client(reactor, pool, environ, tls_policy=policy), timeout=5)


def connect_line(port: int) -> tuple[str, dict[str, str]]:
    return f"CONNECT 127.0.0.1:{port} HTTP/1.1", {"host": f"127.0.0.1:{port}"}


# -- through the proxy ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_https_upstream_goes_through_the_tunnel(running: Running) -> None:
    client = upstream_client(running, {"https_proxy": running.proxy_url})
    page = await client.project_page(running.upstream_url, "hello")
    assert [link.url for link in page.links] == [running.upstream_url + "hello/hello-1.0.tar.gz"]
    assert running.proxy.seen == [connect_line(running.upstream_port)]


@pytest_twisted.ensureDeferred
async def test_proxy_credentials_are_sent(running: Running) -> None:
    running.proxy.credentials = "Basic " + base64.b64encode(b"alice:s3:cr@t").decode()
    # Upper-case name, credentials percent-encoded in the URL.
    proxy_url = f"http://alice:s3%3Acr%40t@127.0.0.1:{running.proxy_port}"
    client = upstream_client(running, {"HTTPS_PROXY": proxy_url})
    page = await client.project_page(running.upstream_url, "hello")
    assert [link.filename for link in page.links] == ["hello-1.0.tar.gz"]
    [(line, headers)] = running.proxy.seen
    assert line == connect_line(running.upstream_port)[0]
    assert headers["proxy-authorization"] == running.proxy.credentials


@pytest.mark.parametrize(
    ("credentials", "target_port", "status"),
    [
        (None, None, "407 Proxy Authentication Required"),
        ("alice:wrong", None, "407 Proxy Authentication Required"),
        (None, 9, "502 Bad Gateway"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_proxy_refusal_fails_clearly(
    running: Running, credentials: str | None, target_port: int | None, status: str
) -> None:
    """
    A proxy that does not open the tunnel fails the request at once, with
    the proxy and its answer named (and no credentials).
    """
    if status.startswith("407"):
        running.proxy.credentials = "Basic " + base64.b64encode(b"alice:right").decode()
    auth = f"{credentials}@" if credentials else ""
    client = upstream_client(running, {"https_proxy": f"http://{auth}127.0.0.1:{running.proxy_port}"})
    port = target_port or running.upstream_port
    started = reactor.seconds()
    with pytest.raises(UpstreamError) as info:
        await client.project_page(f"https://127.0.0.1:{port}/simple/", "hello")
    message = str(info.value)
    assert f"proxy 127.0.0.1:{running.proxy_port} refused CONNECT 127.0.0.1:{port}: {status}" in message
    assert "TunnelError" in message
    assert "wrong" not in message
    # Failed on the answer, not on the 5 s timeout (the 407 leaves the
    # connection open).
    assert reactor.seconds() - started < 4


@pytest_twisted.ensureDeferred
async def test_no_proxy_hosts_are_reached_directly(running: Running) -> None:
    environ = {"https_proxy": running.proxy_url, "no_proxy": "localhost,127.0.0.1"}
    client = upstream_client(running, environ)
    page = await client.project_page(running.upstream_url, "hello")
    assert [link.filename for link in page.links] == ["hello-1.0.tar.gz"]
    assert running.proxy.seen == []


@pytest_twisted.ensureDeferred
async def test_a_tunnel_is_reused_for_its_target(running: Running) -> None:
    pool = HTTPConnectionPool(reactor, persistent=True)
    client = upstream_client(running, {"https_proxy": running.proxy_url}, pool)
    try:
        for _ in range(3):
            page = await client.project_page(running.upstream_url, "hello")
            assert [link.filename for link in page.links] == ["hello-1.0.tar.gz"]
    finally:
        await pool.closeCachedConnections()
    assert running.proxy.seen == [connect_line(running.upstream_port)]


@pytest.mark.parametrize("trust", ["other", "platform"])
@pytest_twisted.ensureDeferred
async def test_untrusted_target_certificate_is_refused(running: Running, trust: str) -> None:
    """
    TLS is checked against the target's certificate, end to end through
    the tunnel: one not issued by a trusted root is refused.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    policy = TrustOnly(running.other_cert.cert_pem) if trust == "other" else None
    http = make_http_client(reactor, pool, {"https_proxy": running.proxy_url}, tls_policy=policy)
    with pytest.raises(ResponseNeverReceived) as info:
        await http.request("GET", running.upstream_url + "hello/", timeout=5)
    assert "certificate verify failed" in str(info.value.reasons[0].value)
    assert running.proxy.seen == [connect_line(running.upstream_port)]


# -- the endpoint on its own ---------------------------------------------------


@implementer(IStreamClientEndpoint)
class FakeProxyEndpoint:
    """
    "Connects" at once, to a transport that keeps what is written.
    """

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Protocol | None = None

    def connect(self, factory):
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return succeed(self.protocol)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


def tunnel_to_target() -> tuple[FakeProxyEndpoint, list]:
    proxy = FakeProxyEndpoint()
    endpoint = TunnelEndpoint(HTTPProxy("proxy.invalid", 3128), proxy, "::1", 8443)
    results: list = []
    endpoint.connect(Factory.forProtocol(Recorder)).addBoth(results.append)
    return proxy, results


def test_bytes_after_the_answer_reach_the_protocol() -> None:
    proxy, results = tunnel_to_target()
    assert proxy.transport.value() == b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n"
    # The answer's head arrives in pieces, the tunnelled bytes right after it.
    for piece in [b"HTTP/1.1 200 Conn", b"ection established\r\nVia: 1.1 proxy\r", b"\n\r\nfirst"]:
        assert results == []
        proxy.protocol.dataReceived(piece)
    [inner] = results
    assert isinstance(inner, Recorder)
    assert inner.transport is proxy.transport
    assert inner.received == b"first"
    proxy.protocol.dataReceived(b" second")
    assert inner.received == b"first second"
    proxy.protocol.connectionLost(Failure(ConnectionError("gone")))
    assert inner.lost is not None and inner.lost.check(ConnectionError)


def test_proxy_closing_before_answering_fails() -> None:
    proxy, results = tunnel_to_target()
    proxy.protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
    proxy.protocol.connectionLost(Failure(ConnectionError("gone")))
    [failure] = results
    assert failure.check(TunnelError)
    assert "proxy proxy.invalid:3128 closed the connection before answering CONNECT [::1]:8443" in str(
        failure.value
    )


def test_not_http_answer_fails() -> None:
    proxy, results = tunnel_to_target()
    proxy.protocol.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
    [failure] = results
    assert failure.check(TunnelError)
    assert "did not answer CONNECT [::1]:8443 with HTTP" in str(failure.value)
    assert proxy.transport.disconnecting


def test_cancelling_while_waiting_for_the_answer_drops_the_connection() -> None:
    proxy = FakeProxyEndpoint()
    endpoint = TunnelEndpoint(HTTPProxy("proxy.invalid", 3128), proxy, "127.0.0.1", 443)
    results: list = []
    connecting = endpoint.connect(Factory.forProtocol(Recorder))
    connecting.addBoth(results.append)
    connecting.cancel()
    [failure] = results
    assert failure.check(CancelledError)
    assert proxy.transport.disconnecting


def test_proxy_url_parsing() -> None:
    proxy = HTTPProxy.from_url("http://bob:p%40ss@proxy.invalid:3128/")
    assert (proxy.host, proxy.port) == ("proxy.invalid", 3128)
    assert proxy.authorization == b"Basic " + base64.b64encode(b"bob:p@ss")
    assert str(proxy) == "proxy.invalid:3128"
    assert "p@ss" not in repr(proxy)
    assert HTTPProxy.from_url("proxy.invalid") == HTTPProxy("proxy.invalid", 80)
    with pytest.raises(ValueError, match="not an http:// proxy URL"):
        HTTPProxy.from_url("socks5://proxy.invalid:1080")

"""
HTTPS through an HTTP proxy: a client endpoint that asks the proxy for a
C{CONNECT} tunnel to the target and then speaks TLS to the target through
it, and an L{Agent} that uses it for C{https} URLs.

Twisted's L{ProxyAgent} only forwards plain-http requests (absolute URIs
sent to the proxy); it has no C{CONNECT}.  The tunnel is an ordinary
L{IStreamClientEndpoint}, so L{wrapClientTLS} layers TLS on top of it, with
the certificate and host name checked against the I{target} (the proxy
only relays bytes it cannot read), and L{HTTPConnectionPool} keeps and
reuses the tunnelled connections like any other.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from .quickack import QuickAckEndpoint

#: The most header bytes taken from a proxy's answer to CONNECT.
MAX_ANSWER_BYTES = 64 * 1024


class TunnelError(Exception):
    """
    The proxy did not open the tunnel (it refused, or did not answer HTTP).
    """


@attrs.frozen
class HTTPProxy:
    """
    An HTTP proxy: where it is, and the C{Proxy-Authorization} value that
    its URL's C{user:password@} turns into.
    """

    host: str
    port: int
    authorization: bytes | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> HTTPProxy:
        """
        Parse C{[http://][user:password@]host[:port]} as curl and urllib
        take C{https_proxy}: the port defaults to 80 and the credentials are
        percent-decoded.

        @raise ValueError: not an C{http://} proxy URL with a host.
        """
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// proxy URL: {parts.scheme}://{parts.hostname or ''}")
        authorization = None
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(credentials.encode("utf-8"))
        return cls(parts.hostname, parts.port or 80, authorization)

    def __str__(self) -> str:
        # Never the credentials: this names the proxy in errors and logs.
        return f"{_bracket(self.host)}:{self.port}"


def _bracket(host: str) -> str:
    """
    An IPv6 literal in brackets, as an authority (C{host:port}) needs it.
    """
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _TunnelProtocol(Protocol):
    """
    The client side of the connection to the proxy: send C{CONNECT}, read
    the answer's head, and on 2xx hand the transport to the real protocol
    and relay everything to it from then on (the transport still calls
    this protocol, so it stays in between as a pass-through).
    """

    def __init__(
        self, proxy: HTTPProxy, authority: str, factory: IProtocolFactory, ready: Deferred[IProtocol]
    ) -> None:
        self._proxy = proxy
        self._authority = authority
        self._factory = factory
        self._ready = ready
        self._buffer = b""
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        target = self._authority.encode("ascii")
        lines = [b"CONNECT " + target + b" HTTP/1.1", b"Host: " + target]
        if self._proxy.authorization is not None:
            lines.append(b"Proxy-Authorization: " + self._proxy.authorization)
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        head, separator, rest = self._buffer.partition(b"\r\n\r\n")
        if not separator:
            if len(self._buffer) > MAX_ANSWER_BYTES:
                self._fail(f"proxy {self._proxy} sent an over-long answer to CONNECT {self._authority}")
            return
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        version, _, status = status_line.partition(" ")
        code, _, reason = status.partition(" ")
        if not (version.startswith("HTTP/") and len(code) == 3 and code.isdigit()):
            self._fail(f"proxy {self._proxy} did not answer CONNECT {self._authority} with HTTP")
            return
        if not code.startswith("2"):
            # The answer's headers (Proxy-Authenticate...) and body are of no
            # use to us: the request fails, and the connection is dropped.
            self._fail(f"proxy {self._proxy} refused CONNECT {self._authority}: {code} {reason}".rstrip())
            return
        self._buffer = b""
        inner = self._factory.buildProtocol(self.transport.getPeer())
        if inner is None:
            self._fail("the protocol factory built no protocol")
            return
        self._inner = inner
        inner.makeConnection(self.transport)
        self._ready.callback(inner)
        # A proxy may send the first tunnelled bytes with its answer: they
        # belong to the inner protocol (the TLS layer), not to us.
        if rest:
            inner.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._ready.called:
            self._ready.errback(
                TunnelError(
                    f"proxy {self._proxy} closed the connection before answering CONNECT "
                    f"{self._authority}: {reason.getErrorMessage()}"
                )
            )

    def _fail(self, message: str) -> None:
        if not self._ready.called:
            self._ready.errback(TunnelError(message))
        self.transport.abortConnection()

    def abort(self) -> None:
        """
        Give up waiting for the proxy (the connection attempt was cancelled).
        """
        if self.transport is not None and self._inner is None:
            self.transport.abortConnection()


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    Connect to C{host:port} through a C{CONNECT} tunnel of an HTTP proxy.

    The connection attempt fails with L{TunnelError} (naming the proxy and
    its answer) unless the proxy answers 2xx; after that the protocol
    sees a transport to the target.  This endpoint adds no TLS: wrap it
    with L{wrapClientTLS}.
    """

    def __init__(self, proxy: HTTPProxy, proxy_endpoint: IStreamClientEndpoint, host: str, port: int) -> None:
        """
        @param proxy: the proxy, for the C{CONNECT} request and the errors.
        @param proxy_endpoint: how to reach the proxy.
        @param host: the target host (name or IP address).
        @param port: the target port.
        """
        self._proxy = proxy
        self._proxy_endpoint = proxy_endpoint
        self._authority = f"{_bracket(host)}:{port}"

    def __repr__(self) -> str:
        return f"<TunnelEndpoint {self._authority} via {self._proxy}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def cancel(_: Deferred[IProtocol]) -> None:
            # Still connecting to the proxy, or waiting for its answer.
            connecting.cancel()
            tunnel.abort()

        ready: Deferred[IProtocol] = Deferred(cancel)
        tunnel = _TunnelProtocol(self._proxy, self._authority, protocolFactory, ready)
        factory = Factory.forProtocol(lambda: tunnel)
        factory.noisy = False
        connecting = self._proxy_endpoint.connect(factory)

        def not_connected(failure: Failure) -> None:
            if not ready.called:
                ready.errback(failure)

        connecting.addErrback(not_connected)
        return ready


@implementer(IAgentEndpointFactory)
class TunnellingEndpointFactory:
    """
    Endpoints for L{Agent}: C{https} URLs through a C{CONNECT} tunnel with
    TLS to the target on top, C{http} URLs directly (the caller sends
    plain http through the proxy with L{ProxyAgent}, or not at all).
    """

    def __init__(self, reactor, proxy: HTTPProxy, tls_policy: IPolicyForHTTPS | None = None) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self._tls_policy = tls_policy or BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        if uri.scheme == b"http":
            return HostnameEndpoint(self._reactor, host, uri.port)
        if uri.scheme != b"https":
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        proxy_endpoint = QuickAckEndpoint(HostnameEndpoint(self._reactor, self._proxy.host, self._proxy.port))
        tunnel = TunnelEndpoint(self._proxy, proxy_endpoint, host.strip("[]"), uri.port)
        return wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), tunnel)


def tunnelling_agent(
    reactor, proxy: HTTPProxy, pool: HTTPConnectionPool, tls_policy: IPolicyForHTTPS | None = None
) -> IAgent:
    """
    An L{Agent} that reaches C{https} URLs through C{proxy}.  Its pool key
    is the Agent's own (scheme, target host, target port): a tunnel is
    kept and reused for its target only.
    """
    return Agent.usingEndpointFactory(
        reactor, TunnellingEndpointFactory(reactor, proxy, tls_policy), pool=pool
    )

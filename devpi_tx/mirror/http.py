"""
The one HTTP client devpi-tx talks to other servers with (upstream
indexes, their files, push targets): a L{treq.HTTPClient} over one
Twisted agent stack, and how its answers are read.

The stack, from the outside in::

    ContentDecoderAgent (gzip)
      BrowserLikeRedirectAgent (MAX_REDIRECTS; credentials dropped across origins)
        ProxyChoosingAgent (http_proxy / https_proxy / no_proxy)
          Agent over DirectEndpoints | ProxyAgent | Agent over a CONNECT tunnel
            one HTTPConnectionPool (MAX_KEPT_CONNECTIONS idle connections per host)

A replica's writes, relayed to its primary, skip the two outer layers
(L{UpstreamHTTP.relay}): a proxy answers redirects and passes bodies on
as they came.

Timeouts all come from the server's C{--request-timeout}: connecting (the
endpoints), the answer's head (treq's timeout, which cancels the request),
and a body that stops arriving (L{.bodies.collect_until_idle}; file
downloads give a longer allowance).  How requests fail is L{.errors}'.
The in-memory tests put L{treq.testing.StubTreq} where the
L{treq.HTTPClient} is; everything above it is the same code.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    BrowserLikeRedirectAgent,
    ContentDecoderAgent,
    GzipDecoder,
    HTTPConnectionPool,
    ProxyAgent,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from .._compat import quiet_pool
from ..logs import logger
from ..model.indexes import redact_url as redact
from .bodies import read_body
from .errors import UpstreamTimeout, is_timeout, upstream_error
from .quickack import QuickAckEndpoint
from .tunnel import HTTPProxy, tunnelling_agent

log = logger("devpi_tx.mirror")

#: Redirects followed for one request.
MAX_REDIRECTS = 5
#: Idle connections kept per host: installers ask for dozens of pages at
#: once, and a burst that finds its connections kept needs no handshakes.
MAX_KEPT_CONNECTIONS = 64
#: Bytes of a (decoded) body read whole, unless the caller says otherwise.
MAX_BODY = 128 * 1024 * 1024


# -- the client ----------------------------------------------------------------------


class UpstreamHTTP:
    """
    The client every outbound request goes through: a treq client (over
    the agent stack of L{make_http_client}, or L{treq.testing.StubTreq} in
    tests), the reactor its timeouts run on, and the pool to close.

    Redirects are followed by the agent stack, not by treq (which would
    stack a redirect agent of its own); answers are never buffered by treq
    (files stream).
    """

    def __init__(
        self,
        http: HTTPClient,
        reactor: IReactorTime,
        pool: HTTPConnectionPool | None = None,
        *,
        relay_agent: IAgent | None = None,
    ) -> None:
        """
        @param relay_agent: the stack's agent below its redirects and
            decoding (L{relay}); L{None} relays through C{http}.
        """
        self.http = http
        self.reactor = reactor
        self._pool = pool
        self._relay_agent = relay_agent
        #: Requests by (method, outcome): C{2xx} ... C{5xx}, C{timeout} or
        #: C{error} (the metrics' upstream requests).
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()

    def _count(self, d: Deferred, method: str) -> Deferred:
        def answered(response):
            self.outcomes[(method, f"{response.code // 100}xx")] += 1
            return response

        def failed(failure):
            self.outcomes[(method, "timeout" if is_timeout(failure.value) else "error")] += 1
            return failure

        return d.addCallbacks(answered, failed)

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> Deferred[IResponse]:
        """
        Send a request without a body.

        @param timeout: seconds until the answer's head is in (connecting
            included), after which the request is cancelled.
        """
        d = self.http.request(
            method,
            url,
            headers=dict(headers or {}),
            timeout=timeout,
            allow_redirects=False,
            unbuffered=True,
            reactor=self.reactor,
        )
        return self._count(d, method)

    def post(self, url: str, *, timeout: float | None = None, **kwargs) -> Deferred[IResponse]:
        """
        Send a C{POST} (a push to another index); treq's keyword arguments.
        """
        d = self.http.post(url, timeout=timeout, allow_redirects=False, reactor=self.reactor, **kwargs)
        return self._count(d, "POST")

    def relay(
        self, method: bytes, url: bytes, headers: Headers, body: IBodyProducer | None
    ) -> Deferred[IResponse]:
        """
        Send a request as a reverse proxy does (a replica's writes, sent on
        to its primary, L{devpi_tx.web.proxy}): over the same pool and
        proxy settings, but a redirect is answered rather than followed (a
        POST followed as a GET would pass another answer off as the
        write's), the body is not decoded (the client's C{Accept-Encoding}
        goes along) and no cookies are kept between requests (they would
        pass from one client to the next).  No timeout: the caller's
        allowance runs while the body moves (an upload may take longer
        than any one timeout).

        Without a relay agent (an L{UpstreamHTTP} over
        L{treq.testing.StubTreq}), through the treq client, redirects not
        followed.
        """
        if self._relay_agent is not None:
            return self._relay_agent.request(method, url, headers, body)
        return self.http.request(
            method.decode("ascii"),
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            unbuffered=True,
            reactor=self.reactor,
        )

    def close_idle(self) -> Deferred[None]:
        """
        Close the connections kept open between requests (at shutdown:
        upstream sees them closed rather than dropped).
        """
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()


def _tcp_endpoint(reactor, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """
    A plain endpoint for an IP address (nothing to resolve), else a
    L{HostnameEndpoint} (resolution, and happy eyeballs over the addresses).
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, str(address), port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, str(address), port, timeout=timeout)


@implementer(IAgentEndpointFactory)
class DirectEndpoints:
    """
    What L{Agent} connects with by default (TCP, TLS on top for C{https}),
    with a connect timeout, and connections that acknowledge at once
    (L{QuickAckEndpoint}).
    """

    def __init__(self, reactor, tls_policy: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        tcp = QuickAckEndpoint(
            _tcp_endpoint(self._reactor, uri.host.decode("ascii"), uri.port, self._timeout)
        )
        if uri.scheme == b"http":
            return tcp
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), tcp)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")


def _proxy_from(environ, scheme: str) -> HTTPProxy | None:
    """
    The proxy that C{<scheme>_proxy} (or its upper-case form) names, if
    any; one that is not an C{http://} URL is logged and ignored.
    """
    url = environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY")
    if not url:
        return None
    try:
        return HTTPProxy.from_url(url)
    except ValueError as exc:
        log.warn(
            "{scheme}_proxy ignored, {scheme} upstreams are reached directly: {error}",
            scheme=scheme,
            error=exc,
        )
        return None


@implementer(IAgent)
class ProxyChoosingAgent:
    """
    Send each request directly or through a proxy, as urllib reads the
    environment: plain C{http} URLs through the proxy that C{http_proxy}
    names (as absolute-URI requests, with C{Proxy-Authorization} when its
    URL has credentials), C{https} URLs through a C{CONNECT} tunnel of the
    proxy that C{https_proxy} names (TLS end to end, checked against the
    target host), and hosts that C{no_proxy} matches directly.

    All routes share one connection pool.  The direct and the tunnelled
    route both key connections by (scheme, target host, target port); they
    cannot mix, because which route a request takes depends on its host
    only.
    """

    def __init__(
        self,
        reactor,
        pool: HTTPConnectionPool,
        environ: Mapping[str, str],
        tls_policy: IPolicyForHTTPS,
        connect_timeout: float,
    ) -> None:
        self._direct = Agent.usingEndpointFactory(
            reactor, DirectEndpoints(reactor, tls_policy, connect_timeout), pool=pool
        )
        self._proxy = None
        self._tunnel = None
        self._no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
        self._proxy_authorization: bytes | None = None
        proxy = _proxy_from(environ, "http")
        if proxy is not None:
            endpoint = QuickAckEndpoint(
                HostnameEndpoint(reactor, proxy.host, proxy.port, timeout=connect_timeout)
            )
            self._proxy = ProxyAgent(endpoint, reactor=reactor, pool=pool)
            self._proxy_authorization = proxy.authorization
        proxy = _proxy_from(environ, "https")
        if proxy is not None:
            self._tunnel = tunnelling_agent(reactor, proxy, pool, tls_policy)

    def _bypass(self, host: str) -> bool:
        for entry in (item.strip().lower() for item in self._no_proxy.split(",")):
            if entry == "*" or (
                entry and (host == entry.lstrip(".") or host.endswith("." + entry.lstrip(".")))
            ):
                return True
        return False

    def request(self, method, uri, headers=None, bodyProducer=None):
        if self._proxy is None and self._tunnel is None:
            return self._direct.request(method, uri, headers, bodyProducer)
        parts = urlsplit(uri.decode("ascii") if isinstance(uri, bytes) else uri)
        agent = {"http": self._proxy, "https": self._tunnel}.get(parts.scheme)
        if agent is not None and not self._bypass(parts.hostname or ""):
            if agent is self._proxy and self._proxy_authorization is not None:
                # ProxyAgent sends the request to the proxy as is: the
                # proxy's credentials go along as a header.
                headers = headers.copy() if headers is not None else Headers()
                headers.setRawHeaders(b"Proxy-Authorization", [self._proxy_authorization])
            return agent.request(method, uri, headers, bodyProducer)
        return self._direct.request(method, uri, headers, bodyProducer)


def make_http_client(
    reactor,
    pool: HTTPConnectionPool | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    tls_policy: IPolicyForHTTPS | None = None,
    connect_timeout: float = 30.0,
) -> UpstreamHTTP:
    """
    The one client, over the agent stack of the module docstring.

    @param environ: where the proxy settings are read; C{os.environ} by
        default.
    @param tls_policy: for C{https} upstreams, direct or tunnelled; L{None}
        is the platform's trust store.
    """
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = MAX_KEPT_CONNECTIONS
    quiet_pool(pool)
    chooser = ProxyChoosingAgent(
        reactor,
        pool,
        os.environ if environ is None else environ,
        tls_policy or BrowserLikePolicyForHTTPS(),
        connect_timeout,
    )
    redirecting = BrowserLikeRedirectAgent(chooser, redirectLimit=MAX_REDIRECTS)
    agent = ContentDecoderAgent(redirecting, [(b"gzip", GzipDecoder)])
    return UpstreamHTTP(HTTPClient(agent), reactor, pool, relay_agent=chooser)


# -- asking ----------------------------------------------------------------------------


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """
    Remove C{user:password@} from a URL and return it with the header that
    carries those credentials instead.
    """
    parts = urlsplit(url) if "@" in url else None
    if parts is None or parts.username is None:
        return url, {}
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


async def ask_upstream(
    http: UpstreamHTTP, method: str, url: str, *, timeout: float, headers: Mapping[str, str] | None = None
) -> tuple[str, IResponse]:
    """
    Send one request upstream, with credentials from the URL moved into
    an Authorization header.

    @return: the URL without credentials and the response (its body not
        read yet).
    @raise UpstreamError: the request could not be made, or no answer came
        within C{timeout} seconds.
    """
    plain, auth = split_credentials(url)
    try:
        response = await http.request(method, plain, headers={**(headers or {}), **auth}, timeout=timeout)
    except Exception as exc:
        if is_timeout(exc):
            raise UpstreamTimeout(f"{redact(plain)}: no answer for {timeout:g} s") from None
        raise upstream_error(plain, exc) from None
    return plain, response


@attrs.frozen
class WholeResponse:
    """
    A response read whole: header names in lower case, repeated headers
    joined with commas, the body decoded.
    """

    code: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


async def fetch_whole(
    http: UpstreamHTTP,
    method: str,
    url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    max_body: int = MAX_BODY,
) -> WholeResponse:
    """
    Send one request upstream and read its answer whole (a project page,
    a wheel's core metadata).

    @param max_body: bytes of the (decoded) body at most.
    @raise UpstreamError: the request failed, its body passed C{max_body}
        or stopped arriving for C{timeout} seconds.
    """
    plain, response = await ask_upstream(http, method, url, timeout=timeout, headers=headers)
    body = await read_body(http, plain, response, max_body, idle=timeout)
    found = {
        name.decode("latin-1").lower(): ", ".join(value.decode("latin-1") for value in values)
        for name, values in response.headers.getAllRawHeaders()
    }
    return WholeResponse(response.code, found, body, plain)

"""
The upstream HTTP client: one agent over kept-alive connections, with
gzip, a bounded number of redirects, proxies, timeouts, upstream
credentials taken from the mirror URL, and conditional requests; bodies are
read through treq's body protocol, bounded in size and given up when they
stall (L{collect_until_idle}).
"""

from __future__ import annotations

import base64
import ipaddress
import os
from urllib.parse import urlsplit, urlunsplit

import attrs
from hyperlink import EncodedURL
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    BrowserLikePolicyForHTTPS,
    BrowserLikeRedirectAgent,
    ContentDecoderAgent,
    GzipDecoder,
    HTTPConnectionPool,
    ProxyAgent,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from ..model.indexes import redact_url as redact
from .keptalive import KeptAliveAgent
from .parse import PageError, UpstreamLink, parse_html, parse_json
from .quickack import QuickAckEndpoint
from .tunnel import HTTPProxy, tunnelling_agent
from .wholefetch import MAX_BODY, FetchTimeout, WholeFetcher, WholeResponse

log = Logger(namespace="devpi_tx.mirror")

JSON_V1 = "application/vnd.pypi.simple.v1+json"
#: Redirects followed for one upstream request.
MAX_REDIRECTS = 5
#: Idle connections kept per upstream host.
MAX_KEPT_CONNECTIONS = 64
#: PEP 691 JSON first, HTML as the fallback.
ACCEPT = f"{JSON_V1}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"


class UpstreamError(Exception):
    """
    Upstream could not be asked, or answered with an error.
    """


class UpstreamTimeout(UpstreamError):
    """
    Upstream did not answer in time (a gateway timeout, 504, rather than a
    bad gateway, 502).
    """


#: What a request that timed out fails with, before any wrapping.
_TIMEOUTS = (FetchTimeout, CancelledError, ConnectingCancelledError, ConnectTimeout, TimeoutError)


def _is_timeout(exc: BaseException) -> bool:
    """
    Whether a failed request timed out: the fetcher's own timeout, treq's
    (which cancels the request), or a connect timeout; the agents wrap the
    last two in L{ResponseNeverReceived}.
    """
    if isinstance(exc, _TIMEOUTS):
        return True
    if isinstance(exc, (ResponseNeverReceived, ResponseFailed)):
        return any(_is_timeout(reason.value) for reason in exc.reasons)
    return False


def gateway_status(exc: UpstreamError) -> int:
    """
    What to answer a client for an upstream failure with nothing cached:
    504 when upstream did not answer in time, else 502.
    """
    return 504 if isinstance(exc, UpstreamTimeout) else 502


def upstream_error(url: str, exc: BaseException) -> UpstreamError:
    """
    The L{UpstreamError} (an L{UpstreamTimeout} when it timed out) that
    says what a request to C{url} failed with, credentials redacted.
    """
    kind = UpstreamTimeout if _is_timeout(exc) else UpstreamError
    return kind(f"{redact(url)}: {exc.__class__.__name__}: {exc}")


@attrs.frozen
class Fetched:
    links: list[UpstreamLink]
    versions: list[str]
    etag: str | None
    serial: int | None


class NotModified(Exception):
    pass


class NotFoundUpstream(Exception):
    pass


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


async def ask_upstream(http, method: str, url: str, *, timeout: float, headers=None, **kwargs):
    """
    Send one request upstream, with credentials from the URL moved into
    an Authorization header.

    @return: the URL without credentials and the response.
    @raise UpstreamError: the request could not be made.
    """
    plain, auth = split_credentials(url)
    try:
        # Redirects are followed by the client's own agent (make_http_client),
        # with a limit; treq's (with StubTreq in tests) would stack another.
        response = await http.request(
            method,
            plain,
            headers={**(headers or {}), **auth},
            timeout=timeout,
            allow_redirects=False,
            **kwargs,
        )
    except Exception as exc:
        raise upstream_error(plain, exc) from None
    return plain, response


def as_uri(url: str) -> str:
    """
    C{url} as a URI: characters outside ASCII percent-encoded (IDNA for
    the host).
    """
    if url.isascii():
        return url
    return EncodedURL.from_text(url).to_uri().to_text()


async def fetch_whole(
    http, method: str, url: str, *, timeout: float, headers=None, max_body: int = MAX_BODY
) -> WholeResponse:
    """
    Send one request upstream and read its answer whole: through the
    client's L{WholeFetcher} when it has one (direct connections), else
    through its agents (proxies; L{treq.testing.StubTreq} in tests).

    @param max_body: bytes of the (decoded) body at most.
    @raise UpstreamError: the request failed.
    """
    plain, auth = split_credentials(url)
    sent = {**(headers or {}), **auth}
    whole = http.whole if isinstance(http, UpstreamHTTP) else None
    try:
        if whole is not None:
            return await whole.fetch(method, as_uri(plain), sent, timeout=timeout, max_body=max_body)
        response = await http.request(method, plain, headers=sent, timeout=timeout, allow_redirects=False)
    except Exception as exc:
        raise upstream_error(plain, exc) from None
    body = await read_body(plain, response, max_body, idle=timeout)
    headers = {
        name.decode("latin-1").lower(): ", ".join(value.decode("latin-1") for value in values)
        for name, values in response.headers.getAllRawHeaders()
    }
    return WholeResponse(response.code, headers, body, plain)


class _OverLimit(Exception):
    pass


class _WatchedBody(TimeoutMixin, Protocol):
    """
    Feed a response's body to a collector; give up, dropping the
    connection, when nothing arrives for C{idle} seconds.
    """

    def __init__(
        self, finished: Deferred[None], collector, clock: IReactorTime, idle: float, url: str
    ) -> None:
        self._finished: Deferred[None] | None = finished
        self._collector = collector
        self.callLater = clock.callLater
        self._idle = idle
        self._url = url

    def connectionMade(self) -> None:
        self.setTimeout(self._idle)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        try:
            self._collector(data)
        except BaseException:
            self._fail(Failure())

    def timeoutConnection(self) -> None:
        self._fail(Failure(UpstreamTimeout(f"{redact(self._url)}: no data for {self._idle:g} s")))

    def _fail(self, failure: Failure) -> None:
        finished, self._finished = self._finished, None
        self.setTimeout(None)
        self.transport.stopProducing()
        if finished is not None:
            finished.errback(failure)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        finished, self._finished = self._finished, None
        if finished is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(None)
        else:
            finished.errback(reason)


def collect_until_idle(
    response, collector, *, idle: float, url: str, clock: IReactorTime | None = None
) -> Deferred[None]:
    """
    Like L{treq.collect}, but a body that stops arriving for C{idle}
    seconds fails with L{UpstreamTimeout} (a stalled upstream would
    otherwise hold the download, and everyone waiting on it, forever).
    """
    if clock is None:
        from twisted.internet import reactor as clock
    finished: Deferred[None] = Deferred()
    response.deliverBody(_WatchedBody(finished, collector, clock, idle, url))
    return finished


async def read_body(url: str, response, limit: int, *, idle: float) -> bytes:
    """
    Read a response's body of at most C{limit} bytes, dropping the
    connection as soon as it passes C{limit} rather than holding all of it
    first.

    @raise UpstreamError: the body failed, passed C{limit}, or stopped
        arriving for C{idle} seconds.
    """
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise _OverLimit()
        chunks.append(data)

    try:
        await collect_until_idle(response, collect, idle=idle, url=url)
    except _OverLimit:
        raise UpstreamError(f"{redact(url)}: answer over the limit of {limit} bytes") from None
    except UpstreamError:
        raise
    except Exception as exc:
        raise upstream_error(url, exc) from None
    return b"".join(chunks)


def _tcp_endpoint(reactor, host: str, port: int) -> IStreamClientEndpoint:
    """
    A plain endpoint for an IP address (nothing to resolve), else a
    L{HostnameEndpoint} (resolution, and happy eyeballs over the addresses).
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return HostnameEndpoint(reactor, host, port)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, str(address), port)
    return TCP4ClientEndpoint(reactor, str(address), port)


@implementer(IAgentEndpointFactory)
class DirectEndpoints:
    """
    What L{Agent} connects with by default (TCP, TLS on top for C{https}),
    with connections that acknowledge at once (L{QuickAckEndpoint}).
    """

    def __init__(self, reactor, tls_policy: IPolicyForHTTPS) -> None:
        self._reactor = reactor
        self._tls_policy = tls_policy

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        tcp = QuickAckEndpoint(_tcp_endpoint(self._reactor, uri.host.decode("ascii"), uri.port))
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


def _quiet(pool: HTTPConnectionPool) -> None:
    """
    Stop C{pool} from logging "Starting factory" and "Stopping factory"
    for every connection it opens and closes: two formatted lines per
    upstream connection, a hundred for fifty cold pages at once.  The pool
    documents its C{_factory} as what it makes connection factories with.
    """
    make = pool._factory
    if getattr(make, "quiet", False):
        return

    def quiet_factory(*args, **kwargs):
        factory = make(*args, **kwargs)
        factory.noisy = False
        return factory

    quiet_factory.quiet = True  # type: ignore[attr-defined]
    pool._factory = quiet_factory  # type: ignore[assignment]


@implementer(IAgent)
class ProxyChoosingAgent:
    """
    Send each request directly or through a proxy, as urllib reads
    the environment: plain C{http} URLs through the proxy that C{http_proxy}
    names (as absolute-URI requests, with C{Proxy-Authorization} when its URL
    has credentials), C{https} URLs through a C{CONNECT}
    tunnel of the proxy that C{https_proxy} names (TLS end to end, checked
    against the target host), and hosts that C{no_proxy} matches directly.

    All routes share one connection pool.  The direct and the tunnelled
    route both key connections by (scheme, target host, target port); they
    cannot mix, because which route a request takes depends on its host
    only.

    @param tls_policy: the L{IPolicyForHTTPS} for C{https} upstreams, direct
        or tunnelled; L{None} is the platform's trust store.
    """

    def __init__(
        self,
        reactor,
        pool: HTTPConnectionPool,
        environ=None,
        *,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        tls_policy = tls_policy or BrowserLikePolicyForHTTPS()
        _quiet(pool)
        # Direct requests, the common route, skip Agent and its pool (see
        # keptalive); they keep as many connections, as long, as the pool
        # would.
        #: How the direct route connects.
        self.direct_endpoints = DirectEndpoints(reactor, tls_policy)
        self._direct = KeptAliveAgent(
            reactor,
            self.direct_endpoints,
            max_kept=pool.maxPersistentPerHost if pool.persistent else 0,
            idle_timeout=pool.cachedConnectionTimeout,
        )
        self._pool = pool
        self._proxy = None
        self._tunnel = None
        self._no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
        self._proxy_authorization: bytes | None = None
        proxy = _proxy_from(environ, "http")
        if proxy is not None:
            endpoint = QuickAckEndpoint(HostnameEndpoint(reactor, proxy.host, proxy.port))
            self._proxy = ProxyAgent(endpoint, reactor=reactor, pool=pool)
            self._proxy_authorization = proxy.authorization
        proxy = _proxy_from(environ, "https")
        if proxy is not None:
            self._tunnel = tunnelling_agent(reactor, proxy, pool, tls_policy)

    @property
    def proxied(self) -> bool:
        """
        Whether some requests go through a proxy.
        """
        return self._proxy is not None or self._tunnel is not None

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

    def close_idle(self) -> Deferred[None]:
        """
        Close the kept connections of every route.
        """
        return gatherResults([self._direct.close_idle(), self._pool.closeCachedConnections()]).addCallback(
            lambda _: None
        )


class UpstreamHTTP:
    """
    Requests to upstream, straight to an agent stack; bodies are read with
    L{collect_until_idle}.

    treq's C{HTTPClient.request} takes every URL through hyperlink (the
    checks and IDNA encoding of each component, twice) and makes a cookie
    jar per request: 0.28 ms of CPU per request, measured with 50 page
    fetches at once on loopback, against 0.75 ms for the whole exchange
    through the agent.  The URLs asked for here are already URIs (the
    mirror URL and the links of upstream pages), and indexes use no
    cookies.  The keyword arguments are treq's, so that tests can pass
    L{treq.testing.StubTreq} instead.
    """

    def __init__(self, agent: IAgent, reactor, close_idle=None, whole: WholeFetcher | None = None) -> None:
        """
        @param agent: follows redirects and decodes gzip itself.
        @param close_idle: closes the connections the agent keeps.
        @param whole: fetches small documents whole (L{fetch_whole}) when
            no proxy is in the way.
        """
        self._agent = agent
        self._reactor = reactor
        self._close_idle = close_idle
        self.whole = whole

    def close_idle(self) -> Deferred[None]:
        """
        Close the upstream connections kept open between requests (at
        shutdown: upstream sees them closed rather than dropped).
        """
        if self.whole is not None:
            self.whole.close_idle()
        if self._close_idle is None:
            return succeed(None)
        return self._close_idle()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
        unbuffered: bool = False,
    ) -> Deferred[IResponse]:
        """
        Send a request without a body.

        @param timeout: seconds until the response's headers, after which
            the request is cancelled.
        @param allow_redirects: must be false; the agent follows redirects.
        @param unbuffered: ignored; a response's body can be read once.
        """
        if allow_redirects:
            raise ValueError("redirects are followed by the agent, not per request")
        uri = as_uri(url).encode("ascii")
        raw = Headers()
        for name, value in (headers or {}).items():
            raw.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1")])
        d = self._agent.request(method.encode("ascii"), uri, raw)
        if timeout:
            call = self._reactor.callLater(timeout, d.cancel)

            def answered(result):
                if call.active():
                    call.cancel()
                return result

            d.addBoth(answered)
        return d


def make_http_client(
    reactor,
    pool: HTTPConnectionPool | None = None,
    environ=None,
    *,
    tls_policy: IPolicyForHTTPS | None = None,
) -> UpstreamHTTP:
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        # Installers fetch many pages at once (uv: dozens, and several
        # installers at once): keep enough connections open that the next
        # burst does not reconnect.  With 16, a burst of 50 cold pages
        # closed 34 connections while answering and opened them again in
        # the next; with 64, repeated bursts took 7 % less time (A/B).
        pool.maxPersistentPerHost = MAX_KEPT_CONNECTIONS
    agent = ProxyChoosingAgent(reactor, pool, environ, tls_policy=tls_policy)
    redirecting = BrowserLikeRedirectAgent(agent, redirectLimit=MAX_REDIRECTS)
    whole = None
    if not agent.proxied:
        whole = WholeFetcher(
            reactor,
            agent.direct_endpoints,
            max_kept=pool.maxPersistentPerHost if pool.persistent else 0,
            idle_timeout=pool.cachedConnectionTimeout,
            max_redirects=MAX_REDIRECTS,
        )
    return UpstreamHTTP(
        ContentDecoderAgent(redirecting, [(b"gzip", GzipDecoder)]),
        reactor,
        close_idle=agent.close_idle,
        whole=whole,
    )


class UpstreamClient:
    """
    Fetch project pages from one upstream simple index.
    """

    def __init__(self, http: UpstreamHTTP, timeout: float) -> None:
        self._http = http
        self._timeout = timeout

    async def project_page(self, mirror_url: str, project: str, etag: str | None = None) -> Fetched:
        """
        @raise NotModified: upstream answered 304 to C{etag}.
        @raise NotFoundUpstream: upstream has no such project.
        @raise UpstreamError: anything else went wrong.
        """
        headers = {"Accept": ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        response = await fetch_whole(
            self._http, "GET", f"{mirror_url.rstrip('/')}/{project}/", headers=headers, timeout=self._timeout
        )
        url, body = response.url, response.body
        if response.code == 304:
            raise NotModified()
        if response.code == 404:
            raise NotFoundUpstream()
        if response.code != 200:
            raise UpstreamError(f"{redact(url)}: upstream answered {response.code}")
        content_type = response.header("content-type") or ""
        serial_header = response.header("x-pypi-last-serial")
        try:
            serial = int(serial_header) if serial_header is not None else None
        except ValueError:
            serial = None
        try:
            if content_type.startswith(JSON_V1):
                links, versions = parse_json(body, url)
            else:
                links, versions = parse_html(body, url), []
        except PageError as exc:
            raise UpstreamError(f"{redact(url)}: {exc}") from None
        new_etag = response.header("etag")
        return Fetched(links, versions, new_etag, serial)

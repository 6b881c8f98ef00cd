"""
Fetch small upstream documents (project pages) whole, over kept-alive
direct connections.

A cold project page is a few kilobytes read in one piece.  Through
L{HTTP11ClientProtocol} and the agents above it, the exchange costs about
0.38 ms of reactor CPU on loopback; the protocol here, which reads the
response into one buffer and fires one Deferred, costs about 0.17 ms.
Fifty cold pages at once (an installer resolving a fresh environment) spend
that on each of them while the others wait: measured with the fake upstream
of the benchmarks and the connections closed before each burst, a server
that does nothing but fetch and answer spent 66-73 ms of reactor CPU per
burst with Twisted's client and 58-59 ms with this one, and devpi-tx's
burst went from 179-188 ms to 167-170 ms (``benchmarks/RESULTS.md``).

It speaks only as much HTTP/1.1 as reading a bounded response needs: one
request at a time per connection, bodies framed by C{Content-Length}, by
C{chunked} (Twisted's own decoder) or by the end of the connection, gzip
decoded, redirects followed as L{BrowserLikeRedirectAgent} does (credentials
dropped when the origin changes), at most C{max_body} bytes, and the
connection abandoned after C{timeout} seconds without a byte.  Files, which
are streamed, and every proxied request keep using Twisted's agents.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from urllib.parse import urljoin

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.http import _ChunkedTransferDecoder, _MalformedChunkedDataError
from twisted.web.iweb import IAgentEndpointFactory

from .keptalive import IdleConnections, Key, host_header

#: Bytes of a response's status line and headers.
MAX_HEAD = 64 * 1024
#: Bytes of a (decoded) body, unless the caller says otherwise.
MAX_BODY = 128 * 1024 * 1024
#: Headers that do not follow a redirect to another origin (as Twisted's
#: redirect agent drops them).
SENSITIVE = frozenset({"authorization", "cookie", "cookie2", "proxy-authorization", "www-authenticate"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Origins whose parsing and endpoint are kept (upstream and its redirects).
MAX_ORIGINS = 32


class FetchError(Exception):
    """
    The exchange failed: no connection, a malformed or oversized answer,
    no answer in time, or too many redirects.
    """


class FetchTimeout(FetchError):
    """
    Upstream sent nothing for longer than the timeout.
    """


class _NothingReceived(FetchError):
    """
    The connection ended before any byte of the answer: on a kept
    connection, the server closed it meanwhile, and the request can be sent
    again on a new one.
    """


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


def _request_bytes(method: bytes, target: bytes, headers: list[tuple[str, str]], close: bool) -> bytes:
    for byte in target:
        if byte <= 0x20 or byte >= 0x7F:
            raise FetchError(f"not a request target: {target!r}")
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise FetchError(f"line break in the header {name!r}")
        lines.append(f"{name}: {value}".encode("latin-1"))
    if close:
        lines.append(b"Connection: close")
    lines.append(b"")
    lines.append(b"")
    return b"\r\n".join(lines)


class WholeResponseProtocol(TimeoutMixin, Protocol):
    """
    One HTTP/1.1 connection that answers one request at a time with a
    L{WholeResponse}; an exchange during which nothing arrives for its
    timeout is given up (L{TimeoutMixin}).

    @ivar reusable: the last exchange ended cleanly and the server keeps
        the connection open; it is idle until the next L{request}.
    """

    def __init__(self, reactor: IReactorTime, on_idle: Callable[[WholeResponseProtocol], None]) -> None:
        self.callLater = reactor.callLater
        self._on_idle = on_idle
        self.reusable = False
        self.connected = False
        self._waiting: Deferred[tuple[int, dict[str, str], bytes]] | None = None

    def connectionMade(self) -> None:
        self.connected = True

    def request(
        self, method: bytes, data: bytes, *, max_body: int, timeout: float | None
    ) -> Deferred[tuple[int, dict[str, str], bytes]]:
        """
        Send C{data} (a whole request of C{method}, without a body) and
        read the answer.
        """
        self.reusable = False
        self._head_only = method == b"HEAD"
        self._max_body = max_body
        self._buffer = b""
        self._received = False
        self._code = 0
        self._headers: dict[str, str] = {}
        self._keep = False
        self._body: list[bytes] = []
        self._size = 0
        self._remaining: int | None = None
        self._chunked: _ChunkedTransferDecoder | None = None
        self._until_close = False
        self.setTimeout(timeout or None)
        self._waiting = Deferred(lambda _: self._abort(None))
        self.transport.write(data)
        return self._waiting

    def timeoutConnection(self) -> None:
        self._abort(FetchTimeout(f"no answer for {self.timeOut:g} s"))

    def _abort(self, error: Exception | None) -> None:
        """
        Give up the exchange: fail it with C{error} (nothing, when it was
        cancelled and its Deferred fails by itself) and drop the connection.
        """
        waiting = self._finish()
        self.transport.abortConnection()
        if waiting is not None and error is not None:
            waiting.errback(Failure(error))

    def _finish(self) -> Deferred | None:
        waiting, self._waiting = self._waiting, None
        self.setTimeout(None)
        return waiting

    def dataReceived(self, data: bytes) -> None:
        if self._waiting is None:
            # Bytes nobody asked for: the connection cannot be trusted.
            self.reusable = False
            self.transport.abortConnection()
            return
        self._received = True
        self.resetTimeout()
        try:
            if not self._code:
                data = self._read_head(data)
                if data is None:
                    return
            self._read_body(data)
        except (FetchError, _MalformedChunkedDataError, ValueError) as exc:
            self._abort(exc if isinstance(exc, FetchError) else FetchError(f"malformed answer: {exc}"))

    def _read_head(self, data: bytes) -> bytes | None:
        """
        Collect the status line and headers; return what follows them, or
        L{None} while they are incomplete.
        """
        buffer = self._buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise FetchError(f"answer head over {MAX_HEAD} bytes")
                self._buffer = buffer
                return None
            if end > MAX_HEAD:
                raise FetchError(f"answer head over {MAX_HEAD} bytes")
            lines = buffer[:end].decode("latin-1").split("\r\n")
            buffer = buffer[end + 4 :]
            version, _, rest = lines[0].partition(" ")
            status = rest[:3]
            if version not in ("HTTP/1.1", "HTTP/1.0") or not status.isdigit():
                raise FetchError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            code = int(status)
            if 100 <= code < 200:
                continue  # an interim answer; the real one follows
            break
        self._buffer = b""
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip() or line[0] in " \t":
                raise FetchError(f"malformed header line {line[:80]!r}")
            name = name.lower()
            value = value.strip(" \t")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._code = code
        self._headers = headers
        connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        self._keep = version == "HTTP/1.1" and "close" not in connection
        if self._head_only or code in (204, 304):
            self._remaining = 0
        elif "transfer-encoding" in headers:
            if headers["transfer-encoding"].rsplit(",", 1)[-1].strip().lower() == "chunked":
                self._chunked = _ChunkedTransferDecoder(self._add, self._chunks_done)
            else:
                self._until_close = True
        elif "content-length" in headers:
            lengths = {value.strip() for value in headers["content-length"].split(",")}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise FetchError(f"bad Content-Length {headers['content-length'][:40]!r}")
            self._remaining = int(lengths.pop())
            if self._remaining > self._max_body:
                raise FetchError(f"answer of {self._remaining} bytes, over the limit of {self._max_body}")
        else:
            self._until_close = True
        if self._until_close:
            self._keep = False
        return buffer

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_body:
            raise FetchError(f"answer over the limit of {self._max_body} bytes")
        self._body.append(data)

    def _chunks_done(self, rest: bytes) -> None:
        self._chunked = None
        self._remaining = 0
        if rest:
            self._keep = False

    def _read_body(self, data: bytes) -> None:
        if self._chunked is not None:
            self._chunked.dataReceived(data)
        elif self._remaining is not None:
            if len(data) > self._remaining:
                self._keep = False
                data = data[: self._remaining]
            if data:
                self._remaining -= len(data)
                self._add(data)
        elif data:
            self._add(data)
        if self._remaining == 0:
            self._done()

    def _done(self) -> None:
        waiting = self._finish()
        answer = (self._code, self._headers, b"".join(self._body))
        self._body = []
        if self._keep:
            self.reusable = True
            self._on_idle(self)
        else:
            self.transport.loseConnection()
        if waiting is not None:
            waiting.callback(answer)

    def connectionLost(self, reason: Failure = None) -> None:
        self.connected = False
        self.reusable = False
        if self._waiting is None:
            return
        if self._until_close and self._code and reason is not None and reason.check(ConnectionDone):
            self._done()
            return
        waiting = self._finish()
        why = _why(reason)
        if not self._received:
            waiting.errback(Failure(_NothingReceived(f"the connection closed before any answer{why}")))
        else:
            waiting.errback(Failure(FetchError(f"the connection closed in the middle of the answer{why}")))


def _why(reason: Failure | None) -> str:
    """
    What ended a connection, unless it simply closed: a TLS handshake
    that failed (an untrusted certificate) must say so.
    """
    if reason is None or reason.check(ConnectionDone):
        return ""
    return f" ({reason.type.__name__}: {reason.getErrorMessage()})"


class _Factory(ClientFactory):
    noisy = False

    def __init__(self, reactor: IReactorTime, on_idle: Callable[[WholeResponseProtocol], None]) -> None:
        self._reactor = reactor
        self._on_idle = on_idle

    def buildProtocol(self, addr) -> WholeResponseProtocol:
        return WholeResponseProtocol(self._reactor, self._on_idle)


class WholeFetcher:
    """
    Fetch documents whole over direct connections, kept open between
    requests: at most C{max_kept} idle ones per (scheme, host, port), each
    closed after C{idle_timeout} seconds unused.

    @param endpoints: how to reach a URI (TCP, TLS for C{https}): the same
        endpoints as the agent of the direct route.
    @param max_kept: 0 keeps none (every request asks the server to close).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        endpoints: IAgentEndpointFactory,
        *,
        max_kept: int,
        idle_timeout: float,
        max_redirects: int,
    ) -> None:
        self._reactor = reactor
        self._endpoints = endpoints
        self._close = max_kept == 0
        self._max_redirects = max_redirects
        self._origins: dict[bytes, _Origin] = {}
        self._idle: IdleConnections[WholeResponseProtocol] = IdleConnections(
            reactor,
            max_kept=max_kept,
            idle_timeout=idle_timeout,
            usable=lambda protocol: protocol.reusable and protocol.connected,
        )

    async def fetch(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
        max_body: int = MAX_BODY,
    ) -> WholeResponse:
        """
        Send a request without a body and read its answer whole, following
        redirects.

        @param timeout: seconds without a byte from upstream after which
            the exchange is abandoned.
        @raise FetchError: the exchange failed (connection errors pass
            through as they are).
        """
        verb = method.encode("ascii")
        sent = dict(headers or {})
        for _ in range(self._max_redirects + 1):
            code, answer_headers, body = await self._exchange(verb, url, sent, timeout, max_body)
            if code in REDIRECTS and verb in (b"GET", b"HEAD"):
                location = answer_headers.get("location")
                if not location:
                    raise FetchError(f"redirect {code} without a Location")
                target = urljoin(url, location)
                if _origin(target) != _origin(url):
                    sent = {name: value for name, value in sent.items() if name.lower() not in SENSITIVE}
                url = target
                continue
            encoding = answer_headers.get("content-encoding", "").strip().lower()
            if encoding in ("gzip", "x-gzip"):
                body = _gunzip(body, max_body)
            elif encoding not in ("", "identity"):
                raise FetchError(f"unsupported Content-Encoding {encoding!r}")
            return WholeResponse(code, answer_headers, body, url)
        raise FetchError(f"more than {self._max_redirects} redirects")

    async def _exchange(
        self, method: bytes, url: str, headers: dict[str, str], timeout: float | None, max_body: int
    ) -> tuple[int, dict[str, str], bytes]:
        origin_part, target = split_target(url)
        origin = self._known_origin(origin_part, url)
        sent = [("Host", origin.host_header)]
        if not any(name.lower() == "accept-encoding" for name in headers):
            sent.append(("Accept-Encoding", "gzip"))
        sent.extend(headers.items())
        data = _request_bytes(method, target, sent, self._close)
        kept = self._idle.take(origin.key)
        if kept is not None:
            try:
                return await kept.request(method, data, max_body=max_body, timeout=timeout)
            except _NothingReceived:
                pass  # closed by the server meanwhile: once more, on a new connection
        protocol = await self._connect(origin)
        try:
            return await protocol.request(method, data, max_body=max_body, timeout=timeout)
        except _NothingReceived as exc:
            raise FetchError(str(exc)) from None

    def _known_origin(self, origin: bytes, url: str) -> _Origin:
        """
        What requests to C{origin} need, parsed and its endpoint made once
        (an upstream is a handful of origins; its pages are thousands).
        """
        known = self._origins.get(origin)
        if known is not None:
            return known
        parsed = URI.fromBytes(origin + b"/")
        if parsed.scheme not in (b"http", b"https"):
            raise FetchError(f"not an http(s) URL: {url}")
        key = (parsed.scheme, parsed.host, parsed.port)
        known = _Origin(key, host_header(*key).decode("ascii"), self._endpoints.endpointForURI(parsed))
        if len(self._origins) >= MAX_ORIGINS:
            self._origins.clear()
        self._origins[origin] = known
        return known

    def _connect(self, origin: _Origin) -> Deferred[WholeResponseProtocol]:
        key = origin.key
        return origin.endpoint.connect(
            _Factory(self._reactor, lambda protocol: self._idle.keep(key, protocol))
        )

    def close_idle(self) -> None:
        """
        Close every kept connection.
        """
        self._idle.close_all()


@attrs.frozen
class _Origin:
    key: Key
    host_header: str
    endpoint: IStreamClientEndpoint


def split_target(url: str) -> tuple[bytes, bytes]:
    """
    Split an absolute URL into its origin (C{scheme://authority}) and the
    request target to send there (its origin form: path and query, never
    the fragment), as L{URI} does, without parsing the rest.

    @raise FetchError: C{url} is not absolute, or not ASCII.
    """
    try:
        raw = url.encode("ascii")
    except UnicodeEncodeError:
        raise FetchError(f"not an ASCII URL: {url!r}") from None
    scheme, sep, rest = raw.partition(b"://")
    if not sep or not scheme:
        raise FetchError(f"not an http(s) URL: {url}")
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        at = rest.find(delimiter)
        if 0 <= at < end:
            end = at
    target = rest[end:].partition(b"#")[0]
    if not target.startswith(b"/"):
        target = b"/" + target
    return scheme + b"://" + rest[:end], target


def _origin(url: str) -> tuple[bytes, bytes, int]:
    parsed = URI.fromBytes(url.encode("ascii"))
    return parsed.scheme, parsed.host, parsed.port


def _gunzip(body: bytes, limit: int) -> bytes:
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise FetchError(f"bad gzip body: {exc}") from None
    if len(out) > limit:
        raise FetchError(f"answer over the limit of {limit} bytes once decoded")
    return out


__all__ = [
    "FetchError",
    "FetchTimeout",
    "WholeFetcher",
    "WholeResponse",
    "WholeResponseProtocol",
    "split_target",
]

"""
A replica's writes, relayed to its primary (devpi's replica proxy, section
8.7 of the protocol notes): a replica's state is a copy of the primary's
changelog, so anything that would change it (C{PUT}, C{POST} including
uploads and C{/+login}, C{PATCH}, C{DELETE}, C{PUSH}) is sent on to the
primary, and its answer relayed once the replica has applied the serial it
reports, so that a client reads its own write from the replica next.

What the client sees: the primary's status, reason phrase, headers
(hop-by-hop ones dropped) and body, streamed both ways at the client's
pace; C{X-Devpi-Proxy: replica}; C{X-Devpi-Primary-Serial: N}, the serial
the primary reported (C{X-Devpi-Serial} and the uuids stay the replica's);
C{X-Devpi-Replica-Lag: serial=N; waited=T} when the replica had not
applied C{N} after C{T} seconds (the write is done, but this replica may
not show it yet); a C{Location} into the primary pointing into the replica
instead.  502 when the primary cannot be reached or fails before its
answer, 504 when it does not answer in time (devpi's envelope for JSON
clients); the connection closed, never a short body passed off as whole,
when the primary's answer breaks off after its head was sent.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from typing import IO
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IRequest, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from .._compat import pending_request_line
from ..mirror.errors import is_timeout
from ..mirror.http import UpstreamHTTP
from ..model.indexes import redact_url as redact
from .render import error

log = Logger(namespace="devpi_tx.proxy")

#: The methods a replica relays: every one that may change the state.
MUTATING = frozenset({b"PUT", b"POST", b"PATCH", b"DELETE", b"PUSH"})
#: Bytes of the request's body read from its file at a time.
CHUNK = 64 * 1024
#: Bodies up to this size are spooled in memory, larger ones to a file.
IN_MEMORY = 100_000
#: Headers of one connection, not of the message (RFC 9110 7.6.1), never
#: passed on, in either direction; nor are those the Connection header names.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization proxy-connection te trailer"
    b" trailers transfer-encoding upgrade".split()
)
#: Not sent to the primary: the agent writes its own Host and the body's
#: length, and twisted.web has answered an C{Expect} already.
_NOT_SENT = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
#: Not relayed from the primary: the length is the body's as relayed, and
#: the serial header is the replica's own (the primary's goes as
#: C{X-Devpi-Primary-Serial}).
_NOT_RELAYED = HOP_BY_HOP | {b"content-length", b"x-devpi-serial"}
PROXY_HEADER = b"X-Devpi-Proxy"
PRIMARY_SERIAL_HEADER = b"X-Devpi-Primary-Serial"
LAG_HEADER = b"X-Devpi-Replica-Lag"


def is_mutating(method: bytes) -> bool:
    """
    Whether a replica relays a request of this method to its primary.
    """
    return method in MUTATING


def _connection_names(headers: Headers) -> set[bytes]:
    """
    The header names a C{Connection} header lists: hop-by-hop too.
    """
    names: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        names.update(token.strip().lower() for token in value.split(b","))
    return names


def _origin(url: str) -> tuple[str, str, int | None]:
    # Scheme, host and port, as compared: case-insensitive, default ports filled in.
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def rewrite_location(location: str, primary_url: str, replica_url: str) -> str:
    """
    A C{Location} the primary sent, pointing into the replica if it pointed
    into the primary (an absolute URL at or below C{primary_url}, or an
    absolute path on its host, below its path); any other one unchanged.
    """
    primary = urlsplit(primary_url)
    if location.startswith("/") and not location.startswith("//"):
        location_url = f"{primary.scheme}://{primary.netloc}{location}"
    else:
        location_url = location
    if _origin(location_url) != _origin(primary_url):
        return location
    found = urlsplit(location_url)
    prefix = primary.path.rstrip("/")
    if found.path != prefix and not found.path.startswith(prefix + "/"):
        return location
    rest = found.path[len(prefix) :]
    query = f"?{found.query}" if found.query else ""
    fragment = f"#{found.fragment}" if found.fragment else ""
    return replica_url.rstrip("/") + rest + query + fragment


def _describe(exc: BaseException) -> str:
    """
    What a request failed with, in words: the first reason an agent's
    wrapper exception (C{ResponseNeverReceived} and the like) carries.
    """
    reasons = getattr(exc, "reasons", None)
    if reasons:
        exc = reasons[0].value
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _BrokeOff(Exception):
    """
    The primary's answer broke off before any of it was relayed.
    """


class _ReadWatch:
    """
    The request's spooled body, as the producer reads it: each read is
    progress (the proxy's allowance counts from the last one); the file
    stays open when the producer is done with it (the request owns it).
    """

    def __init__(self, file: IO[bytes], progress: Callable[[], None]) -> None:
        self._file, self._progress = file, progress
        self.seek, self.tell = file.seek, file.tell

    def read(self, size: int = -1) -> bytes:
        self._progress()
        return self._file.read(size)

    def close(self) -> None:
        pass


class SpooledBody:
    """
    A relayed request's body, as it arrives: what the site's
    C{stream_receiver} gives for a write (L{WriteProxy.body_receiver}).
    Left to twisted.web, a multipart body (an upload) would be read whole
    into memory and parsed before the request is processed; this one is
    kept in memory while small, in a temporary file beyond, and read from
    there in pieces when sent on.
    """

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)

    def feed(self, data: bytes) -> None:
        self.file.write(data)

    def body_complete(self) -> None:
        self.file.seek(0)

    def discard(self) -> None:
        self.file.close()


class WriteProxy:
    """
    Relays a replica's writes to its primary; one per replica, shared by
    its requests.
    """

    def __init__(
        self,
        primary_url: str,
        upstream: UpstreamHTTP,
        wait_for_serial: Callable[[int, float], Deferred[bool]],
        headers: Callable[[], Mapping[str, str]],
        timeout: float,
        outside_url: str | None = None,
    ) -> None:
        """
        @param primary_url: where the primary is (a path below its host
            allowed); requests go to it with their path and query appended.
        @param upstream: the server's one client; its reactor runs the
            timers and reads the request bodies' files.
        @param wait_for_serial: the replica's sync service: a fresh
            Deferred that fires with True once the replica has applied the
            serial, or False after the given seconds.  The proxy does not
            cancel it; it stops waiting when the client goes away.
        @param headers: the replica's headers for the primary (its uuid,
            the primary's it expects); sent in place of a client's of the
            same names, except C{Authorization}: a write's identity is its
            client's, and the replica's own must never stand in for an
            anonymous client's.
        @param timeout: seconds (C{--proxy-timeout}) the primary may go
            without progress (reading the body, answering, sending its
            answer), and the wait for the serial.
        @param outside_url: the replica's URL for clients (C{--outside-url});
            without it, the request's C{X-Outside-Url} header or its host.
        """
        if urlsplit(primary_url).scheme not in ("http", "https"):
            raise ValueError(f"primary URL {redact(primary_url)!r} is not an http(s) URL")
        self.primary_url = primary_url.rstrip("/")
        self.upstream = upstream
        self.wait_for_serial = wait_for_serial
        self.headers = headers
        self.timeout = timeout
        self.outside_url = outside_url.rstrip("/") if outside_url else None
        reactor = upstream.reactor
        self._cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))

    def forward(self, request: IRequest) -> Deferred[None]:
        """
        Relay C{request} to the primary and its answer to the client; the
        request is finished (or its connection closed) when the Deferred
        fires, which it always does with L{None}.

        @raise RuntimeError: the body went to an upload receiver (a
            replica's site must not give one: uploads are the primary's).
        """
        receiver = getattr(request, "devpi_upload", None)
        if receiver is not None and not isinstance(receiver, SpooledBody):
            raise RuntimeError("a relayed request's body went to an upload receiver")
        body = receiver.file if receiver is not None else request.content
        return Deferred.fromCoroutine(_Relay(self, request, body).run())

    def body_receiver(self, request: IRequest) -> SpooledBody | None:
        """
        For the site's C{stream_receiver}: a L{SpooledBody} for a request
        that will be relayed (its head is in), else L{None}.
        """
        method, _ = pending_request_line(request.channel)
        return SpooledBody() if method is not None and is_mutating(method) else None

    def replica_url(self, request: IRequest) -> str:
        """
        The replica's URL as this client knows it: the C{X-Outside-Url}
        header (a front proxy's), the configured outside URL, or the
        request's scheme and host (as the API's own URLs are made).
        """
        header = request.getHeader("x-outside-url")
        if header:
            return header.rstrip("/")
        if self.outside_url:
            return self.outside_url
        host = request.getHeader("host")
        if not host:
            address = request.getHost()
            host = f"{address.host}:{address.port}"
        return f"{'https' if request.isSecure() else 'http'}://{host}"

    def request_headers(self, request: IRequest) -> Headers:
        """
        The headers sent to the primary: the client's but hop-by-hop ones,
        with what a reverse proxy adds (C{X-Forwarded-For} extended,
        C{X-Forwarded-Host} and C{-Proto} unless a front proxy set them,
        C{X-Outside-Url} so that the primary's URLs name the replica), and
        the replica's own headers.
        """
        incoming = request.requestHeaders
        skip = _NOT_SENT | _connection_names(incoming)
        sent = Headers()
        for name, values in incoming.getAllRawHeaders():
            if name.lower() not in skip:
                sent.setRawHeaders(name, list(values))
        address = request.getClientAddress()
        client = getattr(address, "host", None)
        if client is not None:
            chain = incoming.getRawHeaders(b"x-forwarded-for", []) + [client.encode()]
            sent.setRawHeaders(b"X-Forwarded-For", [b", ".join(chain)])
        host = incoming.getRawHeaders(b"host")
        if host and not sent.hasHeader(b"x-forwarded-host"):
            sent.setRawHeaders(b"X-Forwarded-Host", [host[-1]])
        if not sent.hasHeader(b"x-forwarded-proto"):
            sent.setRawHeaders(b"X-Forwarded-Proto", [b"https" if request.isSecure() else b"http"])
        if not sent.hasHeader(b"x-outside-url"):
            sent.setRawHeaders(b"X-Outside-Url", [self.replica_url(request).encode("utf-8")])
        for name, value in self.headers().items():
            if name.lower() != "authorization":
                sent.setRawHeaders(name.encode("latin-1"), [value.encode("utf-8")])
        return sent

    def url_for(self, request: IRequest) -> bytes:
        """
        The primary's URL for the request: its path and query, as sent.
        """
        target = request.uri
        if not target.startswith(b"/"):  # absolute-form: the path and query only
            parts = urlsplit(target)
            target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
        return self.primary_url.encode("utf-8") + target


class ForwardWrites(Resource):
    """
    A replica's root resource: writes (L{MUTATING}) go to the primary
    through a L{WriteProxy}, everything else to the resource within.
    """

    isLeaf = True

    def __init__(self, inner: Resource, proxy: WriteProxy) -> None:
        super().__init__()
        self._inner = inner
        self._proxy = proxy

    def render(self, request: IRequest):
        if is_mutating(request.method):
            self._proxy.forward(request)
            return NOT_DONE_YET
        return self._inner.render(request)


class _Relay:
    """
    One request's trip: sent, the answer's head awaited, the serial
    waited for, the answer relayed; stopped wherever the client leaves.
    """

    def __init__(self, proxy: WriteProxy, request: IRequest, content: IO[bytes] | None) -> None:
        self.proxy = proxy
        self.request = request
        self.content = content
        #: What is awaited now (the answer's head, the serial), to cancel.
        self.pending: Deferred | None = None
        self.body: _RelayBody | None = None
        self.gone = False
        self.timed_out = False
        self._timer: IDelayedCall | None = None
        self._fields = {
            "method": request.method.decode("ascii", "replace"),
            "path": request.uri.decode("utf-8", "replace"),
            "primary": redact(proxy.primary_url),
        }

    # -- the allowance -----------------------------------------------------

    def arm(self) -> None:
        """
        (Re)start the allowance: the primary must make progress within it.
        """
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.proxy.timeout)
        else:
            self._timer = self.proxy.upstream.reactor.callLater(self.proxy.timeout, self._expired)

    def disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _sent_some(self) -> None:
        # Reading the body is progress until the answer's head is in.
        if self.body is None and not self.gone:
            self.arm()

    def _expired(self) -> None:
        self._timer = None
        self.timed_out = True
        if self.pending is not None:
            self.pending.cancel()
        elif self.body is not None:
            self.body.stop()

    # -- the trip ----------------------------------------------------------

    async def run(self) -> None:
        self.request.notifyFinish().addErrback(self._client_gone)
        try:
            await self._relay()
        except Exception as exc:
            self.disarm()
            if self.gone:
                return
            if self.request.startedWriting:
                log.failure("relaying {method} {path} failed", Failure(), **self._fields)
                self._drop_client()
            else:
                self._refuse(exc)

    async def _relay(self) -> None:
        request, proxy, content = self.request, self.proxy, self.content
        producer = None
        if content is not None:
            content.seek(0)
            producer = FileBodyProducer(_ReadWatch(content, self._sent_some), proxy._cooperator, CHUNK)
            if producer.length == 0:
                producer = None
        self.arm()
        self.pending = proxy.upstream.relay(
            request.method, proxy.url_for(request), proxy.request_headers(request), producer
        )
        response = await self.pending
        self.pending = None
        self.disarm()
        serial = self._serial(response)
        self.body = body = _RelayBody(self)
        response.deliverBody(body)
        applied = True
        if serial is not None and response.code < 400:
            applied = await self._wait(serial)
        if body.failed_early():
            # Nothing was sent yet: a gateway error says more than a head
            # with a broken body.
            raise _BrokeOff(_describe(body.failure.value))
        self._send_head(response, serial, applied)
        if await body.start():
            request.unregisterProducer()
            request.finish()
        else:
            if self.gone:
                return
            log.warn(
                "the primary's answer to {method} {path} broke off ({reason}): client dropped",
                reason="no progress" if self.timed_out else _describe(body.failure.value),
                **self._fields,
            )
            self._drop_client()

    def _serial(self, response: IResponse) -> int | None:
        found = (response.headers.getRawHeaders(b"x-devpi-serial") or [b""])[-1]
        if found.isdigit():
            return int(found)
        if response.code < 400:
            log.warn("{method} {path}: no serial from the primary ({value!r})", value=found, **self._fields)
        return None

    def _wait(self, serial: int) -> Deferred[bool]:
        waited: Deferred[bool] = Deferred()

        def done(applied: bool) -> None:
            if not waited.called:
                waited.callback(bool(applied))

        def failed(failure: Failure) -> None:
            log.failure("waiting for serial {serial} failed", failure, serial=serial, **self._fields)
            done(False)

        self.pending = waited
        self.proxy.wait_for_serial(serial, self.proxy.timeout).addCallbacks(done, failed)
        return waited

    def _send_head(self, response: IResponse, serial: int | None, applied: bool) -> None:
        request, proxy = self.request, self.proxy
        self.pending = None
        request.setResponseCode(response.code, response.phrase)
        own = request.responseHeaders
        skip = _NOT_RELAYED | _connection_names(response.headers)
        for name, values in response.headers.getAllRawHeaders():
            # The replica's own headers (its uuids, Date, Server) stay.
            if name.lower() in skip or own.hasHeader(name):
                continue
            if name.lower() == b"location":
                replica = proxy.replica_url(request)
                values = [
                    rewrite_location(value.decode("latin-1"), proxy.primary_url, replica).encode("latin-1")
                    for value in values
                ]
            own.setRawHeaders(name, list(values))
        if response.length is not UNKNOWN_LENGTH:
            own.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        own.setRawHeaders(PROXY_HEADER, [b"replica"])
        if serial is not None:
            own.setRawHeaders(PRIMARY_SERIAL_HEADER, [b"%d" % serial])
        if not applied:
            log.warn(
                "{method} {path}: serial {serial} not applied after {timeout} s, answered anyway",
                serial=serial,
                timeout=proxy.timeout,
                **self._fields,
            )
            own.setRawHeaders(LAG_HEADER, [f"serial={serial}; waited={proxy.timeout:g}".encode()])

    # -- failures ------------------------------------------------------------

    def _refuse(self, exc: BaseException) -> None:
        """
        Answer for a primary that gave no answer: 504 if it ran out of
        time, 502 otherwise.
        """
        primary = self._fields["primary"]
        if self.timed_out or is_timeout(exc):
            status, message = 504, f"primary {primary} did not answer within {self.proxy.timeout:g} s"
        elif isinstance(exc, _BrokeOff):
            status, message = 502, f"primary {primary} broke off its answer: {exc}"
        else:
            status, message = 502, f"primary {primary} could not be reached: {_describe(exc)}"
        log.warn("{method} {path}: {status} {message}", status=status, message=message, **self._fields)
        self.request.setHeader(PROXY_HEADER, b"replica")
        self.request.write(error(self.request, status, message))
        self.request.finish()

    def _drop_client(self) -> None:
        """
        End a relayed answer that broke off after its head was sent: the
        connection is closed, so that the client sees a broken answer
        rather than a short one.
        """
        if self.request.producer is not None:
            self.request.unregisterProducer()
        self.request.loseConnection()

    def _client_gone(self, reason: Failure) -> None:
        """
        The client went away: nothing it asked for is wanted any more.
        """
        self.gone = True
        self.disarm()
        pending, self.pending = self.pending, None
        if pending is not None or (self.body is not None and not self.body.ended):
            log.info("{method} {path}: the client went away, relay cancelled", **self._fields)
        if pending is not None:
            pending.cancel()
        if self.body is not None:
            self.body.stop()


@implementer(IPushProducer)
class _RelayBody(Protocol):
    """
    The primary's answer body, held (its connection paused) until the
    answer may be sent, then written to the client as it arrives: paused
    while the client does not take it (its channel pauses this producer),
    timed while it should be arriving.
    """

    def __init__(self, relay: _Relay) -> None:
        self._relay = relay
        self._request = relay.request
        self._held: list[bytes] = []
        self._started = False
        self._client_paused = False
        self.ended = False
        #: Why the body ended, if it did not end well.
        self.failure: Failure | None = None
        self._done: Deferred[bool] | None = None

    def connectionMade(self) -> None:
        if not self._started:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self._started:
            self._held.append(data)
            return
        self._request.write(data)
        if not self._client_paused:
            self._relay.arm()

    def connectionLost(self, reason: Failure) -> None:
        self.ended = True
        if not reason.check(ResponseDone, PotentialDataLoss):
            self.failure = reason
        if self._started:
            self._relay.disarm()
        done, self._done = self._done, None
        if done is not None:
            done.callback(self.failure is None)

    def failed_early(self) -> bool:
        """
        Whether the body failed before any of it could be sent.
        """
        return self.failure is not None and not self._held

    def start(self) -> Deferred[bool]:
        """
        Send the body: what is held first, the rest as it arrives.

        @return: fires with whether the body arrived whole.
        """
        self._started = True
        self._request.registerProducer(self, True)
        held, self._held = self._held, []
        for data in held:
            self._request.write(data)
        if self.ended:
            return succeed(self.failure is None)
        self._done = Deferred()
        if not self._client_paused:
            self._relay.arm()
            self.transport.resumeProducing()
        return self._done

    def stop(self) -> None:
        if not self.ended:
            self.transport.stopProducing()

    # IPushProducer, for the client's channel.

    def pauseProducing(self) -> None:
        self._client_paused = True
        self._relay.disarm()
        if not self.ended:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._client_paused = False
        if not self.ended:
            self._relay.arm()
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stop()

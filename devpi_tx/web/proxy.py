"""
A replica's writes, relayed to its primary (devpi's replica proxy, section
8.7 of the protocol notes): the replica's state is a copy of the primary's
changelog, so a request that would change it (C{PUT}, C{POST} including
uploads and C{/+login}, C{PATCH}, C{DELETE}, C{PUSH}) goes to the primary,
and its answer back once the replica has applied the serial it reports:
the client then reads its own write from the replica.

What the client sees: the primary's status, reason phrase, headers
(hop-by-hop ones dropped) and body (the request's body is sent from where
it was spooled, in pieces; the answer's as it arrives, at the client's
pace); C{X-Devpi-Proxy: replica}; C{X-Devpi-Primary-Serial: N}, the serial
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
from urllib.parse import SplitResult, urlsplit, urlunsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IRequest, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from .._compat import pending_request_line
from ..logs import logger
from ..mirror.errors import UpstreamError, is_timeout
from ..mirror.http import UpstreamHTTP
from ..model.indexes import redact_url as redact
from .render import error

log = logger("devpi_tx.proxy")

#: The methods a replica relays: every one that may change the state.
MUTATING = frozenset({b"PUT", b"POST", b"PATCH", b"DELETE", b"PUSH"})
#: Bytes of the request's body read from its file at a time.
CHUNK = 64 * 1024
#: Bodies up to this size are spooled in memory, larger ones to a file.
IN_MEMORY = 100_000
#: Headers of one connection (RFC 9110 7.6.1), never passed on; nor are
#: those a Connection header names.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization proxy-connection te trailer"
    b" trailers transfer-encoding upgrade".split()
)
#: Not sent to the primary: the agent writes its own Host and the body's
#: length, and twisted.web has answered an C{Expect} already.
_NOT_SENT = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
#: Not relayed from the primary: the length is the body's as relayed; the
#: serial is the replica's own (the primary's goes as PRIMARY_SERIAL_HEADER).
_NOT_RELAYED = HOP_BY_HOP | {b"content-length", b"x-devpi-serial"}
PROXY_HEADER = b"X-Devpi-Proxy"
PRIMARY_SERIAL_HEADER = b"X-Devpi-Primary-Serial"
LAG_HEADER = b"X-Devpi-Replica-Lag"


def _connection_names(headers: Headers) -> set[bytes]:
    # The names a Connection header lists: hop-by-hop too.
    names: set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", []):
        names.update(token.strip().lower() for token in value.split(b","))
    return names


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    # As compared: case-insensitive, default ports filled in.
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def rewrite_location(location: str, primary_url: str, replica_url: str) -> str:
    """
    A C{Location} the primary sent, pointing into the replica if it pointed
    into the primary (an absolute URL at or below C{primary_url}, or an
    absolute path below its path); any other one unchanged.
    """
    primary, prefix = urlsplit(primary_url), urlsplit(primary_url).path.rstrip("/")
    relative = location.startswith("/") and not location.startswith("//")
    found = urlsplit(f"{primary.scheme}://{primary.netloc}{location}" if relative else location)
    if _origin(found) != _origin(primary) or not (found.path + "/").startswith(prefix + "/"):
        return location
    rest = urlunsplit(("", "", found.path[len(prefix) :], found.query, found.fragment))
    return replica_url.rstrip("/") + rest


def _describe(exc: BaseException) -> str:
    # In words; the first reason of an agent's wrappers (ResponseNeverReceived...).
    reasons = getattr(exc, "reasons", None)
    if reasons:
        exc = reasons[0].value
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _ReadWatch:
    """
    The request's spooled body as the producer reads it: each read is
    progress (the proxy's allowance counts from the last one).
    """

    def __init__(self, file: IO[bytes], progress: Callable[[], None]) -> None:
        self._file, self._progress = file, progress
        self.seek, self.tell, self.close = file.seek, file.tell, file.close

    def read(self, size: int = -1) -> bytes:
        self._progress()
        return self._file.read(size)


class SpooledBody:
    """
    A relayed request's body, kept as it arrives (the site's
    C{stream_receiver}, L{WriteProxy.body_receiver}): twisted.web would
    read a multipart body (an upload) whole into memory to parse it.
    """

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=IN_MEMORY)

    def feed(self, data: bytes) -> None:
        self.file.write(data)

    def body_complete(self) -> None:
        self.file.seek(0)

    def discard(self) -> None:  # the client went away, or the relay is over
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
        @param primary_url: the primary's URL (a path allowed), to which
            the request's path and query are appended.
        @param upstream: the server's one client; its reactor runs the
            timers and reads the bodies' files.
        @param wait_for_serial: the sync service's: fires with True once
            the replica has applied the serial, False after the seconds
            given (never cancelled by the proxy).
        @param headers: the replica's headers for the primary, sent in
            place of a client's of the same names, but C{Authorization}:
            a write's identity is its client's, never the replica's.
        @param timeout: seconds (C{--proxy-timeout}) the primary may go
            without progress (taking the body, answering, sending the
            answer); also the wait for the serial.
        @param outside_url: the replica's URL (C{--outside-url}); else the
            request's C{X-Outside-Url} header or its host.
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
        if receiver is None:
            return Deferred.fromCoroutine(_Relay(self, request, request.content).run())
        done = Deferred.fromCoroutine(_Relay(self, request, receiver.file).run())
        return done.addBoth(lambda _: receiver.discard())

    def body_receiver(self, request: IRequest) -> SpooledBody | None:
        """
        The site's C{stream_receiver}: a L{SpooledBody} for a write.
        """
        method, _ = pending_request_line(request.channel)
        return SpooledBody() if method in MUTATING else None

    def replica_url(self, request: IRequest) -> str:
        """
        The replica's URL as the client knows it, as the API's own URLs
        are made: a front proxy's C{X-Outside-Url}, the outside URL, the host.
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
        The client's headers but hop-by-hop ones, what a reverse proxy adds
        (C{X-Forwarded-*} unless a front proxy did; C{X-Outside-Url}, so
        that the primary's URLs name the replica), and the replica's own.
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
        """The primary's URL for the request: its path and query, as sent."""
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
        self._inner, self._proxy = inner, proxy

    def render(self, request: IRequest):
        if request.method in MUTATING:
            request.devpi_route = "(relayed to the primary)"  # the metrics' route label
            self._proxy.forward(request)
            return NOT_DONE_YET
        return self._inner.render(request)


@implementer(IPushProducer)
class _Relay(Protocol):
    """
    One request's trip (sent, answered, the serial waited for, the answer
    relayed), stopped wherever the client leaves; the protocol the answer's
    body is delivered to (held, its connection paused, until the head may
    go), and the producer the client's connection pauses.
    """

    def __init__(self, proxy: WriteProxy, request: IRequest, content: IO[bytes] | None) -> None:
        self.proxy, self.request, self.content = proxy, request, content
        #: What is awaited now (the answer's head, the serial), to cancel.
        self.pending: Deferred | None = None
        self.answered = self.sending = self.client_paused = self.ended = False
        self.gone = self.timed_out = False
        #: The answer's body, what arrived before it could be sent.
        self.held: list[bytes] = []
        #: Why the answer's body ended, if it did not end well.
        self.failure: Failure | None = None
        self._body_done: Deferred[bool] | None = None
        self._timer: IDelayedCall | None = None
        self._fields = {
            "method": request.method.decode("ascii", "replace"),
            "path": request.uri.decode("utf-8", "replace"),
            "primary": redact(proxy.primary_url),
        }

    def arm(self) -> None:
        # (Re)start the allowance: the primary must make progress within it.
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.proxy.timeout)
        else:
            self._timer = self.proxy.upstream.reactor.callLater(self.proxy.timeout, self._expired)

    def disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _sent_some(self) -> None:
        # Reading the request's body is progress until the answer's head is in.
        if not self.answered and not self.gone:
            self.arm()

    def _expired(self) -> None:
        self._timer = None
        self.timed_out = True
        if self.pending is not None:
            self.pending.cancel()
        else:
            self._stop_body()

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
        body = producer if producer is not None and producer.length else None
        self.arm()
        headers = proxy.request_headers(request)
        self.pending = proxy.upstream.relay(request.method, proxy.url_for(request), headers, body)
        response = await self.pending
        self.pending, self.answered = None, True
        self.disarm()
        found = (response.headers.getRawHeaders(b"x-devpi-serial") or [b""])[-1]
        serial = int(found) if found.isdigit() else None
        response.deliverBody(self)
        applied = True
        if serial is not None and response.code < 400:
            applied = await self._wait(serial)
        elif response.code < 400:
            log.warn("{method} {path}: no serial from the primary ({value!r})", value=found, **self._fields)
        if self.failure is not None and not self.held:
            # Nothing was sent yet: a gateway error says more than a head
            # with a broken body.
            raise UpstreamError(f"broke off its answer: {_describe(self.failure.value)}")
        self._send_head(response, serial, applied)
        if await self._send_body():
            request.unregisterProducer()
            request.finish()
        elif not self.gone:
            reason = "no progress" if self.timed_out else _describe(self.failure.value)
            log.warn("{method} {path}: the answer broke off ({reason})", reason=reason, **self._fields)
            self._drop_client()

    def _wait(self, serial: int) -> Deferred[bool]:
        # A Deferred of our own, cancelled if the client goes (the sync
        # service's may be shared), and given up on if that one never fires.
        self.pending = waited = Deferred()
        waited.addTimeout(2 * self.proxy.timeout, self.proxy.upstream.reactor, lambda result, timeout: False)

        def failed(failure: Failure) -> bool:
            log.failure("waiting for serial {serial} failed", failure, serial=serial, **self._fields)
            return False

        found = self.proxy.wait_for_serial(serial, self.proxy.timeout).addErrback(failed)
        found.addCallback(lambda applied: None if waited.called else waited.callback(bool(applied)))
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
            log.warn("{method} {path}: serial {serial} not applied in time", serial=serial, **self._fields)
            own.setRawHeaders(LAG_HEADER, [f"serial={serial}; waited={proxy.timeout:g}".encode()])

    # The answer's body, delivered here.

    def connectionMade(self) -> None:
        if not self.sending:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.sending:
            self.held.append(data)
            return
        self.request.write(data)
        if not self.client_paused:
            self.arm()

    def connectionLost(self, reason: Failure) -> None:
        self.ended = True
        if not reason.check(ResponseDone, PotentialDataLoss):
            self.failure = reason
        if self.sending:
            self.disarm()
        done, self._body_done = self._body_done, None
        if done is not None:
            done.callback(self.failure is None)

    def _send_body(self) -> Deferred[bool]:
        # What is held first, the rest as it arrives; fires with whether it came whole.
        self.sending = True
        self.request.registerProducer(self, True)
        held, self.held = self.held, []
        for data in held:
            self.request.write(data)
        if self.ended:
            return succeed(self.failure is None)
        self._body_done = Deferred()
        if not self.client_paused:
            self.arm()
            self.transport.resumeProducing()
        return self._body_done

    def _stop_body(self) -> None:
        if self.transport is not None and not self.ended:
            self.transport.stopProducing()

    # IPushProducer, for the client's connection.

    def pauseProducing(self) -> None:
        self.client_paused = True
        self.disarm()
        if not self.ended:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.client_paused = False
        if not self.ended:
            self.arm()
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._stop_body()

    def _refuse(self, exc: BaseException) -> None:
        # The primary gave no answer: 504 if it ran out of time, else 502.
        primary = self._fields["primary"]
        if self.timed_out or is_timeout(exc):
            status, message = 504, f"primary {primary} did not answer within {self.proxy.timeout:g} s"
        elif isinstance(exc, UpstreamError):
            status, message = 502, f"primary {primary} {exc}"
        else:
            status, message = 502, f"primary {primary} could not be reached: {_describe(exc)}"
        log.warn("{method} {path}: {status} {message}", status=status, message=message, **self._fields)
        self.request.setHeader(PROXY_HEADER, b"replica")
        self.request.write(error(self.request, status, message))
        self.request.finish()

    def _drop_client(self) -> None:
        # The head is out: closing the connection tells the client the
        # answer broke off, where finishing would pass a short one off as whole.
        if self.request.producer is not None:
            self.request.unregisterProducer()
        self.request.loseConnection()

    def _client_gone(self, reason: Failure) -> None:
        # Nothing the client asked for is wanted any more.
        self.gone = True
        self.disarm()
        pending, self.pending = self.pending, None
        if pending is not None or (self.transport is not None and not self.ended):
            log.info("{method} {path}: the client went away, relay cancelled", **self._fields)
        if pending is not None:
            pending.cancel()
        self._stop_body()

"""
The HTTP site: devpi's headers on every response, a cap on request bodies
enforced before they are read, and one structured log event per request
(sent to the access log, L{accesslog}).
"""

from __future__ import annotations

import io
import re
import time
import uuid
from urllib.parse import unquote_to_bytes

from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.web.server import Request, Site

from .. import COMPATIBLE_SERVER_VERSION
from .._compat import pending_request_line
from ..logs import logger
from ..storage.errors import FileStoreUnavailable, StorageUnavailable
from .channel import MAX_HEADER_BYTES, MAX_REQUEST_LINE, DevpiChannel
from .render import error

log = logger("devpi_tx.site")


def storage_unavailable(request, exc: StorageUnavailable) -> bytes:
    """
    The answer while the state's database cannot be reached: a 503 with
    the one-line reason (the storage reconnects on its own), logged
    without a traceback, which would say nothing more.
    """
    log.warn(
        "{method} {path}: 503, {reason}",
        method=request.method.decode("latin-1"),
        path=request.path.decode("latin-1"),
        reason=str(exc),
    )
    request.setHeader("Retry-After", "5")
    what = "file store" if isinstance(exc, FileStoreUnavailable) else "state"
    return error(request, 503, f"{what} unavailable: {exc}")


#: The methods devpi's API and installers use (PUSH is devpi-client's).
#: Methods are case-sensitive: anything else is not implemented (501).
METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"PUSH"})
#: A Host header: a name of labels up to 63 characters, an IPv4 address or
#: a bracketed IPv6 one, and a port.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = re.compile(rb"(?:" + _LABEL + rb"(?:\." + _LABEL + rb")*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class DevpiRequest(Request):
    """
    A request that knows the state it answers from (for C{X-Devpi-Serial})
    and refuses an over-long body as soon as its length is known.
    """

    #: The route that answered, if one did: the route label of the
    #: request's metrics (see L{devpi_tx.web.metrics.route_label}).
    devpi_route: tuple | str | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self._body_limit = 0
        self._body_received = 0
        self._body_refused = False
        self.devpi_upload = None

    # -- body limits -------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        content_type = (self.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
        self._body_limit = site.body_limit(content_type)
        if length is not None and length > self._body_limit:
            self._refuse_body()
            return
        self.devpi_upload = site.stream_receiver(self)
        if self.devpi_upload is not None:
            # The body goes to the receiver as it arrives, not to a buffer.
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._body_refused:
            return
        self._body_received += len(data)
        if self._body_received > self._body_limit:
            self._refuse_body()
            if self.devpi_upload is not None:
                self.devpi_upload.discard()
            return
        if self.devpi_upload is not None:
            self.devpi_upload.feed(data)
            return
        super().handleContentChunk(data)

    def _refuse_body(self) -> None:
        """
        Answer 413 at once and close the connection, without reading (let
        alone storing) the rest of the body.
        """
        self._body_refused = True
        message = f"request body too large: the limit is {self._body_limit} bytes"
        size = self.channel.refuse(413, message, reason_is_message=True)
        self.channel.site.log_refused(self, size)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._body_refused:
            return
        if self.devpi_upload is not None:
            self.devpi_upload.body_complete()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason) -> None:
        # A client that goes away mid-upload leaves no partial file.
        if self.devpi_upload is not None:
            self.devpi_upload.discard()
        super().connectionLost(reason)

    # -- headers -----------------------------------------------------------

    def process(self) -> None:
        headers = self.responseHeaders
        for name, value in self.channel.site.static_headers:
            headers.setRawHeaders(name, [value])
        refusal = self._refusal()
        if refusal is not None:
            status, message = refusal
            self.write(error(self, status, message))
            self.finish()
            return
        serial_wait = self.channel.site.serial_wait
        waiting = None if serial_wait is None else serial_wait.wanted(self)
        if waiting is None:
            super().process()
            return
        # Read-your-writes: handled once this node has the serial asked for.
        self.notifyFinish().addErrback(lambda _: waiting.cancel())
        waiting.addCallback(lambda _: None if self._disconnected else Request.process(self))

    def _refusal(self) -> tuple[int, str] | None:
        """
        What is wrong with the request line or the Host header before any
        route sees them, as (status, message); L{None} if nothing is.
        """
        if self.method not in METHODS:
            return 501, f"method {self.method.decode('latin-1')!r} not implemented"
        path = self.path
        if b"%2f" in path.lower():
            return 400, "names cannot contain '/' (an encoded slash in the path)"
        try:
            decoded = unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            return 400, "the request path is not UTF-8"
        if _CONTROL.search(decoded):
            return 400, "the request path holds control characters"
        host = self.requestHeaders.getRawHeaders(b"host")
        if host is not None and (len(host) > 1 or not _HOST.fullmatch(host[0])):
            return 400, "bad Host header"
        return None

    def getHeader(self, key):
        """
        As Twisted's, but a header that is not UTF-8 (C{Accept: \\xff})
        reads as Latin-1 rather than raising.
        """
        if not isinstance(key, str):
            return super().getHeader(key)
        values = self.requestHeaders.getRawHeaders(key.encode("latin-1"))
        if values is None:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            return values[-1].decode("latin-1")

    @property
    def request_id(self) -> str:
        """
        An id for this request, made when first asked for: what a 500
        answer carries and its log entry names.
        """
        found = getattr(self, "_request_id", None)
        if found is None:
            found = self._request_id = uuid.uuid4().hex[:16]
        return found

    def processingFailed(self, reason):
        """
        An exception no handler turned into an answer: logged with its
        traceback and the request's id, answered 500 with that id (and
        nothing else about it).  The state's database being unreachable
        is a 503 (L{storage_unavailable}).
        """
        if reason.check(StorageUnavailable) and not (
            self.finished or self._disconnected or self.startedWriting
        ):
            self.write(storage_unavailable(self, reason.value))
            self.finish()
            return None
        log.failure(
            "request {request_id} {method} {path} failed",
            reason,
            request_id=self.request_id,
            method=self.method.decode("latin-1"),
            path=self.path.decode("latin-1"),
        )
        if self.finished or self._disconnected:
            return None
        if self.startedWriting:
            # The head is out: all that is left is not to pass a short
            # answer off as complete.
            self.channel.transport.abortConnection()
            return None
        self.responseHeaders.setRawHeaders(b"X-Devpi-Request-Id", [self.request_id.encode("ascii")])
        body = error(self, 500, f"internal error; the server log has request id {self.request_id}")
        self.write(body)
        self.finish()
        return reason

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # The serial of the state this answer was computed from: the
            # handler ran to here without yielding after its last read or
            # commit, so the current serial is exactly that.  (finish()
            # writes b"" first when nothing was written.)
            self.responseHeaders.setRawHeaders(b"X-Devpi-Serial", [b"%d" % self.channel.site.serial()])
        super().write(data)


class DevpiSite(Site):
    """
    A L{Site} serving the devpi-tx resource.
    """

    requestFactory = DevpiRequest
    protocol = DevpiChannel
    displayTracebacks = False
    #: Holds back a request whose X-Devpi-Serial this node has not reached
    #: (a L{SerialWait}, set by the service); L{None}: never.
    serial_wait = None

    def __init__(
        self,
        resource,
        *,
        storage,
        uuid: str,
        config,
        stream_receiver=lambda request: None,
        access_log: ILogObserver | None = globalLogPublisher,
        request_stats=None,
        **kwargs,
    ) -> None:
        """
        @param request_stats: counts each request (a L{RequestStats}),
            unless L{None}.
        """
        super().__init__(resource, **kwargs)
        self.request_stats = request_stats
        #: Receives one event per request (see L{accesslog}).
        self._access = Logger(namespace="devpi_tx.request", observer=access_log) if access_log else None
        #: Given a request whose headers are in, returns an object to feed
        #: its body to as it arrives (uploads), or None.
        self.stream_receiver = stream_receiver
        self._storage = storage
        self._config = config
        #: Limits of a request's head (see L{channel}).
        self.max_request_line = getattr(config, "max_request_line", MAX_REQUEST_LINE)
        self.max_header_bytes = getattr(config, "max_header_size", MAX_HEADER_BYTES)
        #: The X-Devpi-* headers that do not change (all but the serial).
        self.static_headers: list[tuple[bytes, bytes]] = [
            (b"X-Devpi-Api-Version", b"2"),
            (b"X-Devpi-Server-Version", COMPATIBLE_SERVER_VERSION.encode("ascii")),
            (b"X-Devpi-Uuid", uuid.encode("ascii")),
            (b"X-Devpi-Master-Uuid", uuid.encode("ascii")),
            (b"X-Devpi-Primary-Uuid", uuid.encode("ascii")),
        ]

    def devpi_headers(self) -> list[tuple[bytes, bytes]]:
        return self.static_headers + [(b"X-Devpi-Serial", b"%d" % self.serial())]

    def serial(self) -> int:
        return self._storage.serial

    def body_limit(self, content_type: bytes) -> int:
        """
        Multipart bodies (uploads) may be as large as
        C{--max-request-body-size}; anything else is a JSON API call and
        gets a much smaller cap.
        """
        if content_type.lower().startswith(b"multipart/"):
            return self._config.max_request_body_size
        return min(self._config.max_json_body_size, self._config.max_request_body_size)

    def log(self, request: DevpiRequest) -> None:
        seconds = time.monotonic() - request.started
        if self.request_stats is not None:
            self.request_stats.observe(
                request.devpi_route, request.method, request.code, seconds, request.sentLength
            )
        if self._access is None:
            return
        address = request.getClientAddress()
        self._access.info(
            "{method} {path} {status} {bytes}B {ms:.1f}ms",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("utf-8", "replace"),
            status=request.code,
            bytes=request.sentLength,
            ms=seconds * 1000,
            client=getattr(address, "host", None),
        )

    def log_refused(self, request: DevpiRequest, size: int) -> None:
        seconds = time.monotonic() - request.started
        if self.request_stats is not None:
            command, _ = pending_request_line(request.channel)
            self.request_stats.observe(None, command or b"OTHER", 413, seconds, size)
        if self._access is None:
            return
        self._access.info(
            "{method} {path} {status} {bytes}B {ms:.1f}ms",
            method=self._pending_method(request),
            path="-",
            status=413,
            bytes=size,
            ms=seconds * 1000,
        )

    @staticmethod
    def _pending_method(request: DevpiRequest) -> str:
        command, _ = pending_request_line(request.channel)
        return (command or b"-").decode("ascii", "replace")

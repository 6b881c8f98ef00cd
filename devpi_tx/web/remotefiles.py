"""
Serving a file of a remote store (L{IRemoteFileStore}: S3): streamed from
the store through the server's one upstream HTTP client on the reactor, or,
with C{--files-redirect}, a redirect to the store.

Both go by a presigned URL of short validity that the store computes
locally.  The conditional request (304) is answered here from the digest
and date devpi records, as for a local file; a C{Range} goes to the store
as the client sent it (unless an C{If-Range} does not match), and the
store's status, C{Content-Length} and C{Content-Range} are relayed, so a
range costs the store no more than the bytes asked for.  The body is
relayed with backpressure: reading from the store pauses while the
client's connection is full, so memory holds a few chunks, never the file.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IRequest, IResponse
from zope.interface import implementer

from ..interfaces import IRemoteFileStore
from ..logs import logger
from .files import IMMUTABLE, _if_range_matches, _not_modified, _set_headers, file_validators
from .render import error

log = logger("devpi_tx.files")

#: Seconds a presigned URL is valid: long enough to start the download it
#: is made for (S3 checks the expiry when a request starts, not while its
#: body flows), short enough that a leaked URL is soon worthless.
URL_EXPIRY = 300


def serve_remote(
    request: IRequest,
    http,
    files: IRemoteFileStore,
    *,
    sha256: str,
    last_modified: float,
    content_type: str,
    redirect: bool = False,
    timeout: float = 30.0,
) -> bytes | Deferred:
    """
    Answer a GET or HEAD for a stored file from a remote store.

    @param http: the server's L{devpi_tx.mirror.http.UpstreamHTTP}.
    @param redirect: answer 302 to a presigned URL instead of streaming.
    @param timeout: seconds until the store's answer head is in.
    """
    etag = f'"{sha256}"'
    mtime = int(last_modified)
    head = request.method == b"HEAD"
    validators = file_validators(etag, mtime)
    if _not_modified(request, etag, mtime):
        request.setResponseCode(304)
        _set_headers(request, validators, {"Cache-Control": IMMUTABLE})
        return b""
    method = "HEAD" if head else "GET"
    if redirect:
        url = files.download_url(sha256, URL_EXPIRY, method, content_type)
        request.setResponseCode(302)
        # The URL expires: no cache may keep the answer.
        _set_headers(request, {"Location": url, "Cache-Control": "no-store", "Content-Length": "0"})
        return b""
    headers = {}
    ranges = request.getHeader(b"range")
    if ranges is not None and _if_range_matches(request, etag, mtime):
        headers["Range"] = ranges.decode("latin-1")
    return Deferred.fromCoroutine(
        _relay(request, http, files, sha256, head, headers, timeout, validators, content_type)
    )


async def _relay(
    request: IRequest,
    http,
    files: IRemoteFileStore,
    sha256: str,
    head: bool,
    headers: dict[str, str],
    timeout: float,
    validators: dict[str, str],
    content_type: str,
):
    """
    A HEAD is asked of the store as a GET of its first byte (or of the
    range asked for): Twisted's client gives no length for an answer to a
    HEAD, and the total is in that answer's C{Content-Range}.
    """
    whole_head = head and "Range" not in headers
    if whole_head:
        headers = {"Range": "bytes=0-0"}
    url = files.download_url(sha256, URL_EXPIRY, "GET")
    try:
        response: IResponse = await http.request("GET", url, headers=headers, timeout=timeout)
    except Exception as exc:
        # The URL carries a signature: it is not logged.
        log.error("file {sha256}: the file store did not answer: {error}", sha256=sha256, error=repr(exc))
        return error(request, 502, "the file store did not answer")
    if response.code not in (200, 206, 416):
        _discard(response)
        if response.code == 404:
            log.error("file {sha256} is linked but missing in the file store", sha256=sha256)
            return error(request, 500, "file is missing in the server's file store")
        log.error("file {sha256}: the file store answered {code}", sha256=sha256, code=response.code)
        return error(request, 502, f"the file store answered {response.code}")
    ranges = response.headers.getRawHeaders(b"content-range")
    if whole_head:
        # 416: an empty object has no first byte.  A 200: a store that
        # ignores Range sent the whole object, whose length it gave.
        if ranges and response.code == 206:
            total = ranges[0].rpartition(b"/")[2]
        elif response.code == 200 and isinstance(response.length, int):
            total = str(response.length).encode("ascii")
        else:
            total = b"0"
        _discard(response)
        request.setResponseCode(200)
        _set_headers(request, validators, {"Content-Type": content_type, "Cache-Control": IMMUTABLE})
        request.setHeader(b"content-length", total)
        return b""
    request.setResponseCode(response.code)
    _set_headers(request, validators, {"Content-Type": content_type, "Cache-Control": IMMUTABLE})
    # (Twisted's client takes Content-Length out of the headers.)  A 416
    # from the store has an error document for its body: not relayed.
    if response.code == 416:
        request.setHeader(b"content-length", b"0")
    elif isinstance(response.length, int):
        request.setHeader(b"content-length", str(response.length).encode("ascii"))
    if ranges:
        request.setHeader(b"content-range", ranges[0])
    if response.code == 416 or head or response.length == 0:
        _discard(response)
        return b""
    relay = BodyRelay(request, http.reactor, timeout)
    response.deliverBody(relay)
    return await relay.done


class _Discard(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass


def _discard(response: IResponse) -> None:
    """
    Drop an answer's body (its connection is closed, not kept).
    """
    if response.length != 0:
        response.deliverBody(_Discard())


@implementer(IPushProducer)
class BodyRelay(Protocol):
    """
    The store's answer body, written to the client as it arrives; the
    client's connection pauses the store's (the relay is the request's
    producer and passes pause and resume on to the response's transport).
    A store that sends nothing for C{idle} seconds while the client could
    take more is given up: the client's connection is cut (its copy is
    short), rather than left hanging.

    @ivar done: fires with L{None} once the request is finished or the
        client has gone; cancelling it (Klein does when the client goes)
        stops the transfer and drops the client's connection.
    """

    def __init__(self, request: IRequest, clock: IReactorTime | None = None, idle: float = 30.0) -> None:
        self._request = request
        self._gone = False
        self._clock = clock
        self._idle = idle
        self._timer: IDelayedCall | None = None
        self.done: Deferred[None] = Deferred(self._cancel)

    def _arm(self) -> None:
        if self._clock is None or self._gone:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._idle)
        else:
            self._timer = self._clock.callLater(self._idle, self._stalled)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _stalled(self) -> None:
        self._timer = None
        if not self._gone:
            log.error("file relay from the store stalled for {idle} s: client cut", idle=self._idle)
            self._cancel(self.done)
            self._fire()

    def connectionMade(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(self._client_gone)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if not self._gone:
            self._request.write(data)
            if self._timer is not None:
                self._arm()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._disarm()
        if not self._gone:
            self._gone = True
            self._request.unregisterProducer()
            if reason is not None and reason.check(ResponseDone, PotentialDataLoss):
                self._request.finish()
            else:
                # The headers promised a length: a cut connection tells
                # the client its copy is short.
                log.error("file relay from the store broke off: {error}", error=str(reason and reason.value))
                self._request.loseConnection()
        self._fire()

    def pauseProducing(self) -> None:
        # The client is slow, not the store: no allowance runs meanwhile.
        self._disarm()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._arm()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self._disarm()
        self._gone = True
        self.transport.stopProducing()

    def _client_gone(self, reason: object) -> None:
        if not self._gone:
            self.stopProducing()
        self._fire()

    def _cancel(self, done: Deferred) -> None:
        if not self._gone:
            self.stopProducing()
            self._request.unregisterProducer()
            self._request.loseConnection()

    def _fire(self) -> None:
        if not self.done.called:
            self.done.callback(None)

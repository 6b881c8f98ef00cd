"""
Reading the body of an answer from another server: as it arrives, to a
collector, given up when it stops arriving for a while, and bounded in
size when read whole.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from ..model.indexes import redact_url as redact
from .errors import UpstreamError, UpstreamTimeout, upstream_error


class _OverLimit(Exception):
    pass


class _WatchedBody(TimeoutMixin, Protocol):
    """
    Feed a response's body to a collector; give up, dropping the
    connection, when nothing arrives for C{idle} seconds.
    """

    def __init__(
        self,
        finished: Deferred[None],
        collector: Callable[[bytes], None],
        clock: IReactorTime,
        idle: float,
        url: str,
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

    def cancel(self) -> None:
        """
        The reader gave up (its Deferred was cancelled): drop the connection;
        the Deferred fails with L{CancelledError}.
        """
        self._finished = None
        self.setTimeout(None)
        self.transport.stopProducing()

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
        # PotentialDataLoss: a body without a length, ended by closing the
        # connection (HTTP/1.0 style) -- complete as far as anyone knows.
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(None)
        else:
            finished.errback(reason)


def collect_until_idle(
    http, response: IResponse, collector: Callable[[bytes], None], *, idle: float, url: str
) -> Deferred[None]:
    """
    Like L{treq.collect}, but a body that stops arriving for C{idle}
    seconds fails with L{UpstreamTimeout} (a stalled upstream would
    otherwise hold a download, and everyone waiting on it, forever).
    Cancelling the Deferred drops the connection (a replica stopping in
    the middle of a stream).
    """
    protocol: _WatchedBody | None = None

    def cancel(d: Deferred) -> None:
        if protocol is not None:
            protocol.cancel()

    finished: Deferred[None] = Deferred(cancel)
    protocol = _WatchedBody(finished, collector, http.reactor, idle, url)
    response.deliverBody(protocol)
    return finished


async def read_body(http, url: str, response: IResponse, limit: int, *, idle: float) -> bytes:
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
        await collect_until_idle(http, response, collect, idle=idle, url=url)
    except _OverLimit:
        raise UpstreamError(f"{redact(url)}: answer over the limit of {limit} bytes") from None
    except UpstreamError:
        raise
    except Exception as exc:
        raise upstream_error(url, exc) from None
    return b"".join(chunks)

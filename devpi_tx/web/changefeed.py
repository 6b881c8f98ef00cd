"""
The primary's side of replication: the changelog as replicas read it.

L{ChangeFeed} is the one listener of the state's commits for every
replication request (L{IStorage.subscribe} has no way to unsubscribe, so
requests register with the feed, not with the state).  It answers:

  - one entry (C{GET /+changelog/<n>}) as one frame
    (L{devpi_tx.model.changes});
  - a stream (C{GET /+changelog/<n>-}): the entries there are, in batches
    of about L{BATCH_BYTES} of text read from the state only when the
    connection has room for them (L{ChangeStream}, a push producer the
    transport pauses), then each new commit's entry as it is committed
    (batched non-durable ones too: the state serves them from memory),
    until no commit has come for C{idle} seconds;
  - for the next serial, which does not exist yet: the answer waits up to
    C{wait} seconds (C{initial_wait} for a replica's first request) for
    a commit, then starts as above, or is a 202 with the current serial.

It also keeps L{PollingReplicas}, what C{/+status} reports of them.  Every
timer runs on the clock given (the server's reactor; a test's clock).
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ..logs import logger
from ..model.changes import MEDIA_TYPE, encode_frame
from .render import error

log = logger("devpi_tx.changefeed")

#: How much changes text one read of the state returns (one entry at least).
BATCH_BYTES = 256 * 1024
#: How much a stream writes in one turn of the reactor before letting other
#: requests in (a transport that fills up pauses it sooner).
TURN_BYTES = 1024 * 1024
#: devpi's waits for the next serial: 30 s, 1 s for a replica's first request.
WAIT = 30.0
INITIAL_WAIT = 1.0
#: A stream ends when no commit came for this long.
IDLE = 30.0
#: A stream whose client has read nothing for this long is dropped.
STALL = 120.0


def _fire(d: Deferred, result: object) -> None:
    if not d.called:  # (not cancelled meanwhile)
        d.callback(result)


class PollingReplicas:
    """
    The replicas that asked for the changelog lately, for C{/+status}:
    uuid -> devpi's record (C{remote-ip}, C{serial}: the next serial the
    replica needs, C{in-request}, C{is-streaming}, C{last-request},
    C{outside-url}).  A replica no request of which is under way is
    forgotten C{keep} seconds after its last one; at most C{limit} are
    kept (the least recently seen idle ones go first).
    """

    def __init__(self, clock: IReactorTime, keep: float = 300.0, limit: int = 1000) -> None:
        self._clock = clock
        self._keep = keep
        self._limit = limit
        self._records: OrderedDict[str, dict] = OrderedDict()
        #: uuid -> how many of its requests are under way.
        self._active: dict[str, int] = {}

    def started(
        self, uuid: str, remote_ip: str | None, serial: int, outside_url: str | None, streaming: bool
    ):
        self._active[uuid] = self._active.get(uuid, 0) + 1
        self._records[uuid] = {
            "remote-ip": remote_ip,
            "serial": serial,
            "in-request": True,
            "is-streaming": streaming,
            "last-request": self._clock.seconds(),
            "outside-url": outside_url,
        }
        self._records.move_to_end(uuid)
        self._prune()

    def progress(self, uuid: str, serial: int) -> None:
        record = self._records.get(uuid)
        if record is not None:
            record["serial"] = serial

    def ended(self, uuid: str) -> None:
        left = self._active.get(uuid, 1) - 1
        if left > 0:
            self._active[uuid] = left
        else:
            self._active.pop(uuid, None)
        record = self._records.get(uuid)
        if record is not None:
            record["in-request"] = left > 0
            if left <= 0:
                record["is-streaming"] = False
            record["last-request"] = self._clock.seconds()
            self._records.move_to_end(uuid)

    def snapshot(self) -> dict[str, dict]:
        self._prune()
        return {uuid: dict(record) for uuid, record in self._records.items()}

    def _prune(self) -> None:
        cutoff = self._clock.seconds() - self._keep
        idle = [uuid for uuid in self._records if uuid not in self._active]
        for uuid in idle:
            if self._records[uuid]["last-request"] < cutoff:
                del self._records[uuid]
        idle = [uuid for uuid in self._records if uuid not in self._active]
        for uuid in idle[: max(0, len(self._records) - self._limit)]:
            del self._records[uuid]


class ChangeFeed:
    """
    The changelog served to replicas; see the module's docstring.

    @ivar streams: the streams under way.
    """

    def __init__(
        self,
        storage,
        clock: IReactorTime,
        *,
        wait: float = WAIT,
        initial_wait: float = INITIAL_WAIT,
        idle: float = IDLE,
        stall: float = STALL,
        batch_bytes: int = BATCH_BYTES,
        turn_bytes: int = TURN_BYTES,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.wait = wait
        self.initial_wait = initial_wait
        self.idle = idle
        self.stall = stall
        self.batch_bytes = batch_bytes
        self.turn_bytes = turn_bytes
        self.replicas = PollingReplicas(clock)
        self.streams: set[ChangeStream] = set()
        #: Requests waiting for the next serial: their Deferreds, which
        #: fire with whether it came.
        self._waiters: dict[Deferred[bool], tuple[int, IDelayedCall]] = {}
        self._stopped = False
        storage.subscribe(self._committed)

    def _committed(self, serial: int, keys: frozenset[str]) -> None:
        # Called from within the commit: nothing here may raise into it,
        # and the streams only schedule their next write.
        for d, (wanted, call) in list(self._waiters.items()):
            if serial >= wanted:
                del self._waiters[d]
                call.cancel()
                self.clock.callLater(0, _fire, d, True)
        for stream in list(self.streams):
            try:
                stream.committed()
            except Exception:
                log.failure("a changelog stream failed to take a commit")

    def wait_for(self, serial: int, timeout: float) -> Deferred[bool]:
        """
        Fire with L{True} once C{serial} is committed, or with L{False}
        after C{timeout} seconds (or when the feed stops); cancelling it
        forgets it.
        """
        if self.storage.serial >= serial:
            return succeed(True)
        if self._stopped:
            return succeed(False)

        def forget(d: Deferred[bool]) -> None:
            _, call = self._waiters.pop(d, (None, None))
            if call is not None and call.active():
                call.cancel()

        d: Deferred[bool] = Deferred(forget)

        def timed_out() -> None:
            if self._waiters.pop(d, None) is not None:
                d.callback(False)

        self._waiters[d] = (serial, self.clock.callLater(timeout, timed_out))
        return d

    async def answer(self, request: IRequest, start: int, *, stream: bool, initial: bool, replica: str):
        """
        Answer C{GET /+changelog/<start>} (C{stream}: C{<start>-}) for the
        authenticated C{replica}.
        """
        if self._stopped:
            return error(request, 503, "the server is stopping")
        current = self.storage.serial
        if start > current + 1:
            return error(request, 404, f"serial {start} is beyond the next serial {current + 1}")
        address = request.getClientAddress()
        self.replicas.started(
            replica,
            getattr(address, "host", None),
            start,
            request.getHeader("x-devpi-replica-outside-url"),
            stream,
        )
        try:
            if start == current + 1:
                came = await self.wait_for(start, self.initial_wait if initial else self.wait)
                if not came:
                    request.setResponseCode(202)
                    request.setHeader("Content-Type", MEDIA_TYPE)
                    return b""
            if stream:
                return await ChangeStream(self, request, start, replica).start()
            frames = self.storage.changelog_frames(start, 1)
            if not frames or frames[0][0] != start:
                return error(request, 404, f"no changelog entry {start}")
            body = encode_frame(*frames[0])
            request.setHeader("Content-Type", MEDIA_TYPE)
            request.setHeader("Content-Length", str(len(body)))
            self.replicas.progress(replica, start + 1)
            return body
        finally:
            self.replicas.ended(replica)

    def stop(self) -> None:
        """
        The server is stopping: end every stream (what was sent is whole
        entries) and answer the waiting requests 202, before the state
        closes.
        """
        self._stopped = True
        for d, (_, call) in list(self._waiters.items()):
            del self._waiters[d]
            call.cancel()
            _fire(d, False)
        for stream in list(self.streams):
            stream.end()


@implementer(IPushProducer)
class ChangeStream:
    """
    The body of one streaming answer: frames from serial C{start} on,
    written while the transport takes them.

    It is a push producer registered with the request: when the
    transport's buffer is full Twisted pauses it, and it reads nothing
    more from the state until resumed, so what is in memory is the
    transport's buffer and at most one batch.  Whenever it is not paused
    and behind (after a commit, a resume, or a full turn), it writes the
    next batches in a call of its own on the clock, never from within the
    commit that woke it.

    @ivar next: the serial of the next entry to send.
    @ivar done: fires with C{b""} when the stream has ended (Klein then
        finishes the request); cancelling it (Klein does when the client
        goes away) stops the stream.
    """

    def __init__(self, feed: ChangeFeed, request: IRequest, start: int, replica: str) -> None:
        self._feed = feed
        self._request = request
        self._replica = replica
        self.next = start
        self.paused = False
        self.ended = False
        self.done: Deferred[bytes] = Deferred(lambda d: self._stop())
        self._write_call: IDelayedCall | None = None
        self._idle_call: IDelayedCall | None = None
        self._stall_call: IDelayedCall | None = None

    def start(self) -> Deferred[bytes]:
        request = self._request
        request.setHeader("Content-Type", MEDIA_TYPE)
        self._feed.streams.add(self)
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _: self._stop())
        self._write()
        return self.done

    # -- what wakes it ---------------------------------------------------------

    def committed(self) -> None:
        """
        A new entry exists: the stream is no longer idle, and writes it
        at the next turn unless paused.
        """
        if self.ended:
            return
        if self._idle_call is not None:
            self._idle_call.cancel()
            self._idle_call = None
        self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True
        if self._write_call is not None:
            self._write_call.cancel()
            self._write_call = None
        if self._stall_call is None and not self.ended:
            self._stall_call = self._feed.clock.callLater(self._feed.stall, self._stalled)

    def resumeProducing(self) -> None:
        self.paused = False
        if self._stall_call is not None:
            self._stall_call.cancel()
            self._stall_call = None
        self._schedule()

    def stopProducing(self) -> None:
        # The connection is gone.
        self._stop()

    # -- writing ---------------------------------------------------------------

    def _schedule(self) -> None:
        if self._write_call is None and not self.paused and not self.ended:
            self._write_call = self._feed.clock.callLater(0, self._turn)

    def _turn(self) -> None:
        try:
            self._write()
        except Exception:
            # Nothing can be said to the client in the middle of a body:
            # drop it (it keeps the whole entries it has) and end.
            log.failure("changelog stream to replica {replica} failed", replica=self._replica)
            self._stop()
            self._request.channel.transport.abortConnection()

    def _write(self) -> None:
        """
        Write batches until the transport is full, the turn's allowance is
        spent (then go on at the next turn), or there is nothing more
        (then wait for a commit, at most C{idle} seconds).
        """
        self._write_call = None
        feed, request = self._feed, self._request
        written = 0
        while not self.paused and not self.ended:
            frames = feed.storage.changelog_frames(self.next, feed.batch_bytes)
            if not frames:
                if self._idle_call is None:
                    self._idle_call = feed.clock.callLater(feed.idle, self.end)
                return
            if self._idle_call is not None:
                self._idle_call.cancel()
                self._idle_call = None
            for serial, timestamp, text in frames:
                frame = encode_frame(serial, timestamp, text)
                request.write(frame)
                written += len(frame)
                self.next = serial + 1
                if self.paused or self.ended:
                    break
            feed.replicas.progress(self._replica, self.next)
            if written >= feed.turn_bytes:
                self._schedule()
                return

    # -- ending ----------------------------------------------------------------

    def end(self) -> None:
        """
        End the answer where it is (between two frames).
        """
        if self.ended:
            return
        self._stop()
        self.done.callback(b"")

    def _stalled(self) -> None:
        """
        The client has taken nothing for C{stall} seconds: drop it (its
        buffer will never drain, and a clean end would wait for that).
        """
        self._stall_call = None
        log.warn(
            "replica {replica} read nothing of its changelog stream for {seconds} s; dropped",
            replica=self._replica,
            seconds=self._feed.stall,
        )
        self._stop()
        # The connection's loss cancels the route (Klein), and so L{done}.
        self._request.channel.transport.abortConnection()

    def _stop(self) -> None:
        """
        Stop for good: timers off, off the feed and the request.
        """
        if self.ended:
            return
        self.ended = True
        for name in ("_write_call", "_idle_call", "_stall_call"):
            call = getattr(self, name)
            if call is not None:
                if call.active():
                    call.cancel()
                setattr(self, name, None)
        self._feed.streams.discard(self)
        if self._request.channel is not None:
            # Gone with a lost connection: the request let go of it already.
            self._request.unregisterProducer()

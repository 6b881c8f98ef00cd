"""
Following a primary's changelog: the replica's state becomes the primary's,
entry by entry, with the primary's serials.

One request at a time, C{GET <primary>/+changelog/<next>-}: the primary
answers with a stream of frames (L{devpi_tx.model.changes}), the entries it
has at once and then each new one as it is committed, and ends the stream
after a while without commits; C{202} when nothing came within its wait.
Every whole entry is applied as it arrives (L{IStorage.import_entry}), in
serial order, so an entry is either in the state or not asked for yet: a
stream cut anywhere, or a frame that makes no sense, costs the entry in
flight, and the next request starts after the last entry applied.  Of
the entries that arrive together, only the last is synced to disk on its
own (it syncs the others): catching up on many entries costs few fsyncs.

What cannot be mended by asking again stops replication and is reported to
C{on_fatal} (the server exits, as devpi's replica does): a primary with
another uuid than the one this replica learned from its first answer, a
primary whose state is behind the replica's, a primary that refuses the
replica as a client (400).  Everything else (network errors, timeouts,
refused tokens, broken streams) is logged, kept in L{ReplicaSync.errors}
and retried after a pause that doubles from C{backoff_initial} up to
C{backoff_max} and starts again after an answer that worked.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.iweb import IResponse

from ..interfaces import IStorage
from ..logs import logger
from ..mirror.bodies import collect_until_idle, read_body
from ..mirror.errors import UpstreamError
from ..mirror.http import UpstreamHTTP, ask_upstream
from ..model.changes import MEDIA_TYPE, Entry, FrameParser
from .primary import PrimaryLink

log = logger("devpi_tx.replica")

#: Frames; refusals as JSON (their message alone, not an HTML page).
ACCEPT = f"{MEDIA_TYPE}, application/json; q=0.5"


class ReplicationFatal(Exception):
    """
    Going on would replicate the wrong state: the replica must stop.
    """


class _Broken(Exception):
    """
    An answer or a stream that cannot be used; asked for again later.
    """


@attrs.frozen
class ReplicaOptions:
    """
    @ivar poll_timeout: seconds the primary may take to answer a request
        for the changelog (it holds one for up to about 30 s when there is
        nothing new), and may leave a stream silent.
    @ivar backoff_initial: the pause before the first retry after an error.
    @ivar backoff_max: the longest pause between retries.
    @ivar max_errors: how many recent errors L{ReplicaSync.errors} keeps.
    """

    poll_timeout: float = 37.5
    backoff_initial: float = 0.5
    backoff_max: float = 1.0
    max_errors: int = 20


class ReplicaSync(Service):
    """
    The loop that keeps the state equal to the primary's; a service, so
    that it starts with the server and stops before the state is closed.

    @ivar primary_serial: the primary's serial as last heard (L{None}
        before its first answer).
    @ivar primary_serial_timestamp: when it was heard.
    @ivar primary_contacted_at: when the primary last answered.
    @ivar update_from_primary_at: when the last entry was applied.
    @ivar in_sync_at: when the state was last at the primary's serial.
    @ivar connected: the last request got an answer and nothing failed since.
    @ivar streaming: entries are being received.
    @ivar fatal: why replication stopped for good, if it did.
    """

    name = "replica-sync"

    def __init__(
        self,
        storage: IStorage,
        http: UpstreamHTTP,
        primary: PrimaryLink,
        *,
        clock: IReactorTime,
        on_fatal: Callable[[str], object],
        files=None,
        options: ReplicaOptions | None = None,
    ) -> None:
        """
        @param files: told of each applied entry's changes
            (C{entry_applied(changes)}, a L{devpi_tx.replica.files.FileReplicator}),
            to fetch the files they name.
        @param on_fatal: called once, with a message, when replication must
            stop (see the module docstring); the loop has ended by then.
        """
        self._storage = storage
        self._http = http
        self._primary = primary
        self._clock = clock
        self._on_fatal = on_fatal
        self._files = files
        self._options = options or ReplicaOptions()
        self.primary_serial: int | None = None
        self.primary_serial_timestamp: float | None = None
        self.primary_contacted_at: float | None = None
        self.update_from_primary_at: float | None = None
        self.in_sync_at: float | None = None
        self.started_at: float | None = None
        self.connected = False
        self.streaming = False
        self.fatal: str | None = None
        self._errors: collections.deque[dict] = collections.deque(maxlen=self._options.max_errors)
        #: Consecutive failed requests: the next pause.
        self._failures = 0
        self._loop: Deferred[None] | None = None
        #: wait_for_serial's waiters: (serial, Deferred, timeout call).
        self._waiters: list[tuple[int, Deferred[bool], IDelayedCall]] = []
        storage.subscribe(self._committed)

    # -- what others read ------------------------------------------------------------

    @property
    def serial(self) -> int:
        """
        The serial of the replica's state.
        """
        return self._storage.serial

    @property
    def errors(self) -> list[dict]:
        """
        Recent errors, oldest first: C{{"time": ..., "message": ...}}.
        """
        return list(self._errors)

    def status(self) -> dict:
        """
        The replication fields of C{/+status}, under devpi's names.
        """
        return {
            "primary-url": self._primary.url,
            "primary-uuid": self._primary.primary_uuid or None,
            "primary-serial": self.primary_serial,
            "primary-serial-timestamp": self.primary_serial_timestamp,
            "primary-contacted-at": self.primary_contacted_at,
            "update-from-primary-at": self.update_from_primary_at,
            "replica-started-at": self.started_at,
            "replica-in-sync-at": self.in_sync_at,
            # devpi's replication-errors are the files' (FileReplicator.status).
            "replica-changelog-errors": list(self._errors),
        }

    def wait_for_serial(self, serial: int, timeout: float) -> Deferred[bool]:
        """
        Fires with C{True} once the state has reached C{serial} (a write
        sent on to the primary is visible here: read-your-writes), with
        C{False} after C{timeout} seconds or when the service stops first.
        """
        if self._storage.serial >= serial:
            return succeed(True)

        def cancel(d: Deferred) -> None:
            self._drop_waiter(d)

        waiting: Deferred[bool] = Deferred(cancel)
        call = self._clock.callLater(timeout, self._expire, waiting)
        self._waiters.append((serial, waiting, call))
        return waiting

    # -- the service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.started_at = self._clock.seconds()
        log.info(
            "replicating {primary} from serial {serial}",
            primary=self._primary.url,
            serial=self._storage.serial,
        )
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda failure: log.failure("replication loop failed", failure))

    def stopService(self) -> Deferred[None]:
        """
        Cancel the request in flight (an entry being applied is applied
        first: that happens on the reactor thread, between reads) and
        fire when the loop has ended.
        """
        super().stopService()
        loop, self._loop = self._loop, None
        for _, waiting, call in list(self._waiters):
            call.cancel()
            waiting.callback(False)
        self._waiters.clear()
        self.connected = self.streaming = False
        if loop is None:
            return succeed(None)
        loop.cancel()
        return loop

    # -- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        initial = True
        while self.running:
            try:
                await self._poll(initial)
                initial = False
                # Again at once, after a turn of the reactor.
                await deferLater(self._clock, 0, lambda: None)
            except ReplicationFatal as exc:
                if self.running:
                    self._stop_for_good(str(exc))
                return
            except Exception as exc:
                if not self.running:
                    return  # cancelled by stopService
                initial = False
                delay = self._record(exc)
                try:
                    await deferLater(self._clock, delay, lambda: None)
                except CancelledError:
                    return

    def _record(self, exc: Exception) -> float:
        """
        Keep and log an error; return the pause before the next request.
        """
        message = str(exc) if isinstance(exc, (_Broken, UpstreamError)) else f"{type(exc).__name__}: {exc}"
        delay = min(self._options.backoff_initial * 2**self._failures, self._options.backoff_max)
        self._failures += 1
        self.connected = False
        self._errors.append({"time": self._clock.seconds(), "message": message})
        log.warn(
            "replication from {primary} at serial {serial}: {error}; again in {delay:g} s",
            primary=self._primary.url,
            serial=self._storage.serial,
            error=message,
            delay=delay,
        )
        return delay

    def _stop_for_good(self, message: str) -> None:
        self.fatal = message
        self.connected = False
        log.critical("replication stopped: {message}", message=message)
        # Not from inside the loop's own call stack: on_fatal may stop us.
        self._clock.callLater(0, self._on_fatal, message)

    def _answered(self) -> None:
        """
        An answer that worked: the next error is retried soon again.
        """
        self._failures = 0
        self.connected = True

    async def _poll(self, initial: bool) -> None:
        """
        One request for the changelog, and its answer.
        """
        start = self._storage.serial + 1
        url = self._primary.url_for(f"+changelog/{start}-") + ("?initial_fetch" if initial else "")
        timeout = self._options.poll_timeout
        _, response = await ask_upstream(
            self._http, "GET", url, timeout=timeout, headers=self._primary.headers(Accept=ACCEPT)
        )
        self.primary_contacted_at = self._clock.seconds()
        code = response.code
        if code in (200, 202):
            try:
                self._check_primary(response)
            except Exception:
                _abandon(response)
                raise
            self._heard_serial(_int_header(response, "X-Devpi-Serial"))
        if code == 202:
            await self._drop_body(response, url)
            self._answered()
            return
        if code == 200:
            await self._stream(response, url, start)
            return
        message = await self._drop_body(response, url)
        if code == 404:
            primary = _int_header(response, "X-Devpi-Serial")
            if primary is not None and primary < start - 1:
                raise ReplicationFatal(
                    f"the primary is at serial {primary}, behind this replica's {start - 1}: "
                    f"it is not the primary this state came from, or it lost commits"
                )
            raise _Broken(f"the primary answered 404 for the changelog from serial {start}: {message}")
        if code == 400:
            raise ReplicationFatal(f"the primary refused this replica: {message}")
        if code in (401, 403):
            raise _Broken(f"the primary refused the replica's credentials ({code}): {message}")
        raise _Broken(f"the primary answered {code}: {message}")

    def _check_primary(self, response: IResponse) -> None:
        """
        Learn the primary's uuid from its first answer; stop if a later
        one names another.
        """
        found = _header(response, "X-Devpi-Primary-Uuid")
        if not found:
            raise _Broken("the primary's answer has no X-Devpi-Primary-Uuid header")
        known = self._primary.primary_uuid
        if not known:
            self._primary.save_primary_uuid(found)
            log.info("primary {primary} has uuid {uuid}", primary=self._primary.url, uuid=found)
        elif found != known:
            raise ReplicationFatal(
                f"primary uuid changed from {known} to {found}; this replica belongs to another primary"
            )

    def _heard_serial(self, serial: int | None) -> None:
        if serial is None:
            return
        self.primary_serial = serial
        self.primary_serial_timestamp = self._clock.seconds()
        self._check_in_sync()

    def _check_in_sync(self) -> None:
        if self.primary_serial is not None and self._storage.serial >= self.primary_serial:
            if self.in_sync_at is None:
                log.info("in sync with the primary at serial {serial}", serial=self._storage.serial)
            self.in_sync_at = self._clock.seconds()

    async def _stream(self, response: IResponse, url: str, start: int) -> None:
        """
        Apply the entries of a stream as each one is whole.
        """
        content_type = (_header(response, "Content-Type") or "").split(";")[0].strip()
        if content_type != MEDIA_TYPE:
            _abandon(response)
            raise _Broken(f"the primary answered {content_type or 'no content type'}, not {MEDIA_TYPE}")
        parser = FrameParser()
        applied = 0

        def collect(data: bytes) -> None:
            nonlocal applied
            entries = parser.feed(data)
            for at, entry in enumerate(entries, 1):
                # The last of the entries that came together syncs them all.
                self._apply(entry, durable=at == len(entries))
                if not applied:
                    self._answered()
                applied += 1

        self.streaming = True
        try:
            await collect_until_idle(self._http, response, collect, idle=self._options.poll_timeout, url=url)
        except (_Broken, UpstreamError, CancelledError):
            raise
        except Exception as exc:
            raise _Broken(
                f"the stream from serial {start} broke after {applied} entries: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            self.streaming = False
        if parser.midframe:
            raise _Broken(f"the stream from serial {start} ended in the middle of an entry")
        self._answered()

    def _apply(self, entry: Entry, durable: bool) -> None:
        due = self._storage.serial + 1
        if entry.serial != due:
            raise _Broken(f"the primary sent entry {entry.serial} where {due} was due")
        self._storage.import_entry(entry.serial, entry.timestamp, entry.changes, durable=durable)
        now = self._clock.seconds()
        self.update_from_primary_at = now
        if self.primary_serial is None or entry.serial > self.primary_serial:
            self.primary_serial = entry.serial
            self.primary_serial_timestamp = now
        self._check_in_sync()
        log.debug("applied entry {serial} ({count} keys)", serial=entry.serial, count=len(entry.changes))
        if self._files is not None:
            try:
                self._files.entry_applied(entry.changes)
            except Exception:
                log.failure("queueing the files of entry {serial}", serial=entry.serial)

    async def _drop_body(self, response: IResponse, url: str) -> str:
        """
        Read (a little of) an answer that is not a stream; return its text.
        """
        try:
            body = await read_body(self._http, url, response, 4096, idle=self._options.poll_timeout)
        except UpstreamError:
            return ""
        if (_header(response, "Content-Type") or "").startswith("application/json"):
            try:
                return str(json.loads(body)["message"])[:500]
            except (ValueError, KeyError, TypeError):
                pass
        return body.decode("utf-8", "replace").strip()[:500]

    # -- read-your-writes ----------------------------------------------------------------

    def _committed(self, serial: int, keys: frozenset[str]) -> None:
        if not self._waiters:
            return
        ready = [waiter for waiter in self._waiters if waiter[0] <= serial]
        if not ready:
            return
        self._waiters = [waiter for waiter in self._waiters if waiter[0] > serial]
        for _, waiting, call in ready:
            call.cancel()
            waiting.callback(True)

    def _expire(self, waiting: Deferred[bool]) -> None:
        self._waiters = [waiter for waiter in self._waiters if waiter[1] is not waiting]
        waiting.callback(False)

    def _drop_waiter(self, waiting: Deferred[bool]) -> None:
        for waiter in self._waiters:
            if waiter[1] is waiting:
                waiter[2].cancel()
        self._waiters = [waiter for waiter in self._waiters if waiter[1] is not waiting]


class _Abandon(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _abandon(response: IResponse) -> None:
    """
    Drop the connection of an answer whose body is of no use (it may be
    a stream that goes on for a while).
    """
    response.deliverBody(_Abandon())


def _header(response: IResponse, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[-1] if values else None


def _int_header(response: IResponse, name: str) -> int | None:
    try:
        return int(_header(response, name) or "")
    except ValueError:
        return None

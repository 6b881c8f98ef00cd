"""
How a node learns, within milliseconds, of what other nodes committed to
the PostgreSQL state it shares with them.

Each commit notifies the channel L{CHANNEL}.  A L{CommitWatcher} keeps a
second connection that LISTENs on it, watched by the reactor like any
socket; when a notification arrives the storage catches up from the
changelog (the payload is never trusted alone, so a notification lost with
a dropped connection costs a delay, never an entry).  A check every
C{interval} seconds catches up too, and connects the listener again when
its connection was lost.
"""

from __future__ import annotations

import os

import psycopg
from twisted.application.service import Service
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from ..logs import logger
from .errors import StorageUnavailable, first_line
from .postgresql import CHANNEL, PostgresStorage

log = logger("devpi_tx.storage")

#: The longest wait between two attempts while the database is unreachable.
MAX_BACKOFF = 30.0


def _serial_of(payload: bytes) -> int:
    """
    The serial a notification names; a payload that is not one counts as
    news (read the changelog).
    """
    try:
        return int(payload)
    except ValueError:
        return 1 << 62


@implementer(IReadDescriptor)
class CommitWatcher(Service):
    """
    The LISTEN connection of a L{PostgresStorage} on the injected
    C{reactor}, and the periodic check; a service, so that the server's
    tree starts it after opening the state and stops it before closing it.
    """

    def __init__(self, storage: PostgresStorage, reactor, interval: float = 1.0) -> None:
        self.setName("state-watcher")
        self._storage = storage
        self._reactor = reactor
        self._interval = interval
        self._conn: psycopg.Connection | None = None
        #: Our own descriptor of the listener's socket: libpq closes its
        #: own when it finds the connection lost, and the reactor must
        #: still be able to remove what it watches (the number would be
        #: reused by the next socket, which the reactor would then ignore).
        self._fd: int | None = None
        self._loop: LoopingCall | None = None
        #: Whether the last attempt failed (its error logged once, not every second).
        self._failing = False
        #: While failing: no attempt before this time (each one may wait
        #: for a connect timeout on the reactor), the wait doubling up to
        #: L{MAX_BACKOFF}.
        self._retry_at = 0.0
        self._backoff = 0.0

    # -- the service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.listen()
        self._loop = LoopingCall(self.check)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self._disconnect()

    # -- the listener --------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._conn is not None

    def listen(self) -> None:
        """
        Connect the listener (if it is not) and catch up: a commit made
        before LISTEN took effect would otherwise wait for the next check.
        """
        if self._conn is None:
            try:
                conn = self._storage.connect()
                conn.execute(f"LISTEN {CHANNEL}")
            except (StorageUnavailable, psycopg.Error) as e:
                self._failed("listening for other nodes' commits", e)
                return
            self._conn = conn
            self._fd = os.dup(conn.pgconn.socket)
            self._reactor.addReader(self)
        self._catch_up()

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._reactor.removeReader(self)
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
            try:
                conn.close()
            except Exception:
                pass

    def check(self) -> None:
        """
        The periodic check: listen again if the connection was lost, and
        catch up whether or not a notification came.  Never raises: the
        loop must outlive any error (a listener's, the driver's).
        """
        if self._failing and self._reactor.seconds() < self._retry_at:
            return
        try:
            if self._conn is None:
                self.listen()
            else:
                self._catch_up()
        except Exception as e:
            self._failed("checking for other nodes' commits", e)

    def _catch_up(self) -> None:
        try:
            applied = self._storage.catch_up()
        except Exception as e:
            self._failed("catching up with other nodes' commits", e)
            return
        if self._failing:
            log.info("state database {dsn} reachable again", dsn=self._storage.dsn)
            self._failing = False
            self._backoff = 0.0
        if applied:
            log.debug(
                "caught up {count} entries, serial {serial}", count=applied, serial=self._storage.serial
            )

    def _failed(self, doing: str, error: BaseException, back_off: bool = True) -> None:
        if not self._failing:
            log.warn("{doing}: {error}", doing=doing, error=first_line(error))
        self._failing = True
        if back_off:
            self._backoff = min(MAX_BACKOFF, max(1.0, self._backoff * 2))
            self._retry_at = self._reactor.seconds() + self._backoff

    # -- IReadDescriptor -------------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self._fd is None else self._fd

    def doRead(self) -> None:
        """
        Drain the notifications without blocking; if there were any, catch
        up.  A lost connection is closed here and opened again by the next
        check.
        """
        conn = self._conn
        if conn is None:
            return
        latest = -1
        try:
            pgconn = conn.pgconn
            pgconn.consume_input()
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection was closed")
            while (notify := pgconn.notifies()) is not None:
                latest = max(latest, _serial_of(notify.extra))
        except psycopg.Error as e:
            self._disconnect()
            # (The next check connects again at once: only attempts that
            # fail make the checks back off.)
            self._failed("listening for other nodes' commits", e, back_off=False)
            return
        # The payload only spares a query for this node's own commits,
        # which come back too; anything else is read from the changelog.
        if latest > self._storage.serial:
            self._catch_up()

    def connectionLost(self, reason) -> None:
        if self._conn is not None:
            self._disconnect()

    def logPrefix(self) -> str:
        return "devpi-tx-state-watcher"

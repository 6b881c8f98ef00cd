"""
The coordination of web nodes sharing a PostgreSQL state
(L{ICoordinator}; see L{devpi_tx.storage.coordination}).

Leases are rows of C{devpi_leases(name, holder, expires)}: taking one is
one statement that inserts the row, or takes it over when it has expired
(its holder died and stopped renewing it); the holder renews it every
third of its time to live while it holds it, and deletes it when done.
The database's clock decides expiry, so the nodes' clocks need not agree.

The leadership of a job is a session-level advisory lock, taken with
C{pg_try_advisory_lock} on a connection of its own: the lock lives as long
as that connection, so a node that dies (or loses its connection) frees
it, and another node's next try takes it.  Each check of a leadership held
first asks the connection whether it is alive.  The locks are of the two
key form, in a key space of their own (L{LOCK_SPACE}), so that they never
meet the single key advisory locks the storage may take.

Every call to psycopg, which blocks, runs in a worker thread
(C{run_in_thread}); the reactor thread only schedules the renewals.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from ..interfaces import ICoordinator
from ..logs import logger
from .coordination import Lease
from .errors import first_line
from .pgschema import conninfo

log = logger("devpi_tx.coordination")

#: The first key of the leaderships' advisory locks ("dvpi"); the second
#: is C{hashtext} of the job's name.
LOCK_SPACE = 0x64767069

SCHEMA = """
CREATE TABLE IF NOT EXISTS devpi_leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires timestamptz NOT NULL
)
"""

ACQUIRE = """
INSERT INTO devpi_leases (name, holder, expires)
VALUES (%(name)s, %(holder)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires
WHERE devpi_leases.expires < now()
RETURNING holder
"""

RENEW = """
UPDATE devpi_leases SET expires = now() + make_interval(secs => %(ttl)s)
WHERE name = %(name)s AND holder = %(holder)s
"""

#: How long a connection may take to be made, in seconds; the rest of how
#: the coordinator connects (TCP keepalives, statement timeouts) is the
#: storage's (L{pgschema.conninfo}): a connection whose peer went away is
#: found dead, its leaderships then lost.
CONNECT_TIMEOUT = 10

RELEASE = "DELETE FROM devpi_leases WHERE name = %(name)s AND holder = %(holder)s"


@implementer(ICoordinator)
class PostgresCoordinator:
    """
    Leases and leaderships among the nodes of one PostgreSQL database.

    @param dsn: the database's connection string (the storage's).
    @param reactor: the clock the renewals of leases run on.
    @param run_in_thread: runs a blocking call in a worker thread and
        returns a Deferred of its result (the server's, L{ServerContext}).
    @param holder: this node's identity (L{holder_id}).
    """

    shared = True

    def __init__(
        self,
        dsn: str,
        reactor: IReactorTime,
        run_in_thread: Callable[..., Deferred],
        *,
        holder: str,
        connect: Callable[..., psycopg.Connection] = psycopg.connect,
    ) -> None:
        self.holder = holder
        self._clock = reactor
        self._run = run_in_thread
        self._connect = connect
        self._conninfo = conninfo(dsn, CONNECT_TIMEOUT)
        #: Each connection is used by one worker thread at a time; a
        #: leadership check stuck on its connection must not hold up the
        #: leases, so each has its own lock.
        self._lock = threading.Lock()
        self._session_lock = threading.Lock()
        #: For the leases: short statements, autocommit.
        self._conn: psycopg.Connection | None = None
        #: For the leaderships: the advisory locks live as long as it does.
        self._session: psycopg.Connection | None = None
        self._leading: set[str] = set()
        #: The leases held, and their next renewal.
        self._held: dict[str, tuple[Lease, IDelayedCall]] = {}

    # -- connections (worker threads) -----------------------------------------

    def _lease_conn(self) -> psycopg.Connection:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect(self._conninfo, autocommit=True)
            return self._conn

    def _execute(self, sql: str, params: dict | None = None) -> psycopg.Cursor:
        """
        Run one statement on the leases' connection, opening it again once
        if it was lost (the server restarted, say).
        """
        try:
            return self._lease_conn().execute(sql, params)
        except psycopg.OperationalError:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
            return self._lease_conn().execute(sql, params)

    # -- ICoordinator ------------------------------------------------------------

    def setup(self) -> Deferred[None]:
        """
        Create the leases' table if it is missing.  (Versioning this schema
        belongs to the storage's migrations, its C{devpi_meta} table, where
        it goes once both are merged.)
        """
        return self._run(self._execute, SCHEMA).addCallback(lambda _: None)

    def acquire(self, name: str, ttl: float) -> Deferred[Lease | None]:
        def take() -> bool:
            row = self._execute(ACQUIRE, {"name": name, "holder": self.holder, "ttl": ttl}).fetchone()
            return row is not None

        def taken(granted: bool) -> Lease | None:
            if not granted:
                return None
            lease = Lease(name, self.holder, ttl)
            self._schedule_renewal(lease)
            return lease

        return self._run(take).addCallback(taken)

    def _schedule_renewal(self, lease: Lease) -> None:
        call = self._clock.callLater(lease.ttl / 3, self._renew, lease)
        self._held[lease.name] = (lease, call)

    def _renew(self, lease: Lease) -> Deferred[None]:
        params = {"name": lease.name, "holder": lease.holder, "ttl": lease.ttl}

        def renewed(rowcount: int) -> None:
            if self._held.get(lease.name, (None,))[0] is not lease:
                return  # released meanwhile (and maybe taken again: another chain renews that)
            if rowcount:
                self._schedule_renewal(lease)
            else:
                del self._held[lease.name]
                log.warn("lease {name}: lost (it expired and another node took it)", name=lease.name)

        def failed(failure) -> None:
            log.warn(
                "lease {name}: renewing failed, trying again: {why}",
                name=lease.name,
                why=first_line(failure.value),
            )
            if self._held.get(lease.name, (None,))[0] is lease:
                self._schedule_renewal(lease)

        d = self._run(lambda: self._execute(RENEW, params).rowcount)
        return d.addCallbacks(renewed, failed)

    def release(self, lease: Lease) -> Deferred[None]:
        held = self._held.get(lease.name)
        if held is not None and held[0] is lease:
            del self._held[lease.name]
            if held[1].active():
                held[1].cancel()
        params = {"name": lease.name, "holder": lease.holder}
        return self._run(self._execute, RELEASE, params).addCallback(lambda _: None)

    def held(self) -> list[str]:
        """
        The names of the leases this node holds (for tests and status).
        """
        return sorted(self._held)

    def lead(self, name: str) -> Deferred[bool]:
        return self._run(self._lead, name)

    def _lead(self, name: str) -> bool:
        with self._session_lock:
            session = self._live_session()
            if session is None:
                return False
            if name in self._leading:
                return True
            row = session.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, name)
            ).fetchone()
            if row[0]:
                self._leading.add(name)
            return bool(row[0])

    def _live_session(self) -> psycopg.Connection | None:
        """
        The leaderships' connection once it answered, opened again when it
        did not (the leaderships it held are then gone); L{None} when the
        database cannot be reached.
        """
        if self._session is not None:
            try:
                self._session.execute("SELECT 1")
                return self._session
            except psycopg.Error:
                if self._leading:
                    log.warn(
                        "the leaderships' connection was lost: no longer leading {jobs}",
                        jobs=", ".join(sorted(self._leading)),
                    )
                self._leading.clear()
                self._session.close()
                self._session = None
        try:
            self._session = self._connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            log.warn("cannot reach the database to lead jobs: {error}", error=first_line(exc))
            return None
        return self._session

    def resign(self, name: str) -> Deferred[None]:
        def unlock() -> None:
            with self._session_lock:
                if name not in self._leading:
                    return
                self._leading.discard(name)
                if self._session is not None and not self._session.closed:
                    self._session.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_SPACE, name))

        return self._run(unlock)

    def close(self) -> Deferred[None]:
        """
        Stop renewing, give every lease and leadership up, and close the
        connections.
        """
        held = [lease for lease, _ in self._held.values()]
        for _, call in self._held.values():
            if call.active():
                call.cancel()
        self._held.clear()

        def close() -> None:
            for lease in held:
                try:
                    self._execute(RELEASE, {"name": lease.name, "holder": lease.holder})
                except psycopg.Error:
                    pass  # it expires
            with self._lock, self._session_lock:
                self._leading.clear()
                for conn in (self._conn, self._session):
                    if conn is not None:
                        conn.close()
                self._conn = self._session = None

        return self._run(close)

"""
The state on PostgreSQL, shared by several server processes (nodes); its
tables are in L{pgschema}, its changelog text is SQLite's (L{kvtext}), its
connections are L{pgconn.Channel}s.

Serials stay gapless and ordered across nodes because every write
transaction begins by locking the counter row (C{SELECT ... FOR UPDATE}):
write transactions of all nodes run one after another, each taking the
serial after the one it found.  A node whose serial is behind the counter
catches up first, under the lock, from the changelog (its cache and its
listeners learn of the other nodes' commits as of their own), so a
transaction body always reads the latest state.

Outside transactions, reads come from an in-memory cache of encoded
values, as with SQLite; a node learns of other nodes' commits through
LISTEN/NOTIFY and a periodic check (L{pgwatch.CommitWatcher}).

A server writes with L{PostgresStorage.write}: the begin (waiting for the
lock, which another node may hold for a while) and the commit run in
worker threads on the write connection, one write of this node at a time
(a L{DeferredLock}), so the reactor goes on serving meanwhile; what they
learnt reaches the cache and the listeners on the reactor.  The
synchronous L{PostgresStorage.transaction} (command-line tools, start-up)
and L{PostgresStorage.import_entry} use the same connection on the calling
thread.  Reads that miss the cache wait on the calling (reactor) thread,
on a connection of their own.  An unreachable database raises
L{StorageUnavailable}; the next operation connects again.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import psycopg
from twisted.internet.defer import Deferred, DeferredLock, execute
from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer

from ..interfaces import IStorage
from ..logs import logger
from .errors import SerialMismatch
from .kvtext import OverlayTransaction, encode, entry_text, prefix_upper
from .listeners import notify
from .pgconn import Channel, OwnThread, run_statements, uncancellable
from .pgschema import check_schema, conninfo, safe_dsn
from .readcache import ReadCache

log = logger("devpi_tx.storage")

#: The channel each commit notifies (its payload is the serial).
CHANNEL = "devpi_tx_commit"
_LOCK_COUNTER = "SELECT serial FROM devpi_serial FOR UPDATE"
#: Changelog rows read at a time when catching up.
_CATCH_UP_BATCH = 500

#: What C{transaction()} yields.
PostgresTransaction = OverlayTransaction

#: Changelog rows as read: (serial, the JSON text of the changes).
Rows = list[tuple[int, str]]


@implementer(IStorage)
class PostgresStorage:
    """
    An L{IStorage} in a PostgreSQL database, which several nodes may share.
    """

    def __init__(
        self,
        dsn: str,
        *,
        create: bool = False,
        cache_size: int = 10000,
        connect_timeout: int = 5,
        lock_timeout: float = 10.0,
        pipeline: bool = True,
        run_in_thread: Callable[..., Deferred] | None = None,
        reactor: IReactorFromThreads | None = None,
    ) -> None:
        """
        @param dsn: a libpq connection string or URL; a password not in it
            comes from libpq's usual sources (PGPASSWORD, ~/.pgpass).
        @param create: create the schema if missing (C{devpi-tx init}); a
            server refuses to start without it rather than make tables in
            a database it was pointed at by mistake.
        @param lock_timeout: how long a write transaction waits for another
            node's to finish before it gives up (L{StorageUnavailable}).
        @param pipeline: send a begin's and a commit's statements together
            (one round trip each); off only to measure the difference.
        @param run_in_thread: C{run_in_thread(f, *args)}, a Deferred of
            C{f(*args)} run in a worker thread (C{deferToThread}): where
            L{write} waits for PostgreSQL.  Without one (command-line
            tools), L{write} waits on the calling thread.
        @param reactor: with no C{run_in_thread}, L{write} waits in a
            thread of the storage's own (L{OwnThread}): in the reactor's
            shared pool it would queue behind long jobs (an upload to
            object storage) while holding every node's write lock.
        """
        info = conninfo(dsn, connect_timeout)
        self.dsn = safe_dsn(dsn)
        self._pipeline = pipeline
        self._own_thread = OwnThread(reactor) if run_in_thread is None and reactor is not None else None
        self._run_in_thread = run_in_thread or (self._own_thread.run if self._own_thread else execute)
        #: Write transactions' connection, and reads' (see the module's docstring).
        self._writer = Channel(info, self.dsn, lock_timeout)
        self._reader = Channel(info, self.dsn, lock_timeout)
        #: One write transaction of this node at a time, on the writer.
        self._write_lock = DeferredLock()
        self._cache = ReadCache(cache_size)
        self._listeners: list = []
        self._in_transaction = False
        self.serial = -1
        try:
            self.serial = self._reader.using(lambda conn: self._open(conn, create), retry=False)
        except BaseException:
            self._reader.drop()
            raise
        self._reader.on_reconnect = self._resync
        log.info("state in {dsn} at serial {serial}", dsn=self.dsn, serial=self.serial)

    def _open(self, conn: psycopg.Connection, create: bool) -> int:
        check_schema(conn, self.dsn, create)
        return conn.execute("SELECT serial FROM devpi_serial").fetchone()[0]

    # -- connections -----------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        """
        A new connection (L{pgschema.connect}); the listener of
        L{pgwatch.CommitWatcher} takes one too.
        """
        return self._reader.connect()

    def _connection(self) -> psycopg.Connection:
        """
        The reads' connection (for tests and tools poking at the database).
        """
        return self._reader.connection()

    def _resync(self, conn: psycopg.Connection) -> None:
        """
        After the reads' connection was made again: catch up with what was
        committed meanwhile (a commit whose connection broke included, if
        it went through).
        """
        with self._reader.errors():
            found = conn.execute("SELECT serial FROM devpi_serial").fetchone()[0]
            if found > self.serial and not self._in_transaction:
                self._apply_rows(found, self._read_rows(conn, self.serial))
            elif found < self.serial:
                self._apply_rows(found, [])

    # -- the cache -------------------------------------------------------------

    def _forget_all(self) -> None:
        self._cache.clear()

    def _encoded(self, key: str) -> str | None:
        return self._cache.lookup(key, self._load)

    def _load(self, key: str) -> str | None:
        row = self._reader.using(
            lambda conn: conn.execute("SELECT value FROM devpi_kv WHERE key = %s", (key,)).fetchone()
        )
        return None if row is None else row[0]

    # -- IStorage ------------------------------------------------------------------

    def get(self, key: str) -> object:
        encoded = self._encoded(key)
        return None if encoded is None else json.loads(encoded)

    def keys(self, prefix: str) -> list[str]:
        rows = self._reader.using(
            lambda conn: conn.execute(
                "SELECT key FROM devpi_kv WHERE key >= %s AND key < %s ORDER BY key",
                (prefix, prefix_upper(prefix)),
            ).fetchall()
        )
        return [row[0] for row in rows]

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[PostgresTransaction]:
        """
        A write transaction holding the global write lock from its start
        (see the module's docstring), waiting for PostgreSQL on the calling
        thread; without changes it rolls back and takes no serial.
        C{durable} false changes nothing here: on a shared state every
        commit is durable (L{_commit}).
        """
        self._enter_sync()
        try:
            begun = self._begin(self.serial)
            try:
                # (Inside the guard: a catch-up that fails must not leave
                # the counter locked for every node.)
                self._apply_rows(*begun)
                tx = OverlayTransaction(self)
                yield tx
            except BaseException:
                self._writer.rollback()
                raise
            if tx.changes:
                serial = self.serial + 1
                self._commit(tx.changes, durable, serial, time.time())
                self._committed(serial, tx.changes)
            else:
                self._writer.rollback()
        finally:
            self._in_transaction = False

    @asynccontextmanager
    async def write(self, durable: bool = True) -> AsyncIterator[PostgresTransaction]:
        """
        L{transaction} without blocking the reactor (the module's
        docstring): leaving the block completes once the commit is
        durable.  Cancelling the awaiting coroutine (a request whose
        client went away) does not cancel the write: it completes, as a
        synchronous one would have.
        """
        if self._in_transaction:
            raise RuntimeError("a transaction is already open on this storage (nested transactions)")
        await uncancellable(self._write_lock.acquire())
        try:
            begun = await self._in_thread(self._begin, self.serial)
            try:
                self._apply_rows(*begun)
                tx = OverlayTransaction(self)
                yield tx
            except BaseException:
                await self._in_thread(self._writer.rollback)
                raise
            if tx.changes:
                serial = self.serial + 1
                await self._in_thread(self._commit, tx.changes, durable, serial, time.time())
                self._committed(serial, tx.changes)
            else:
                await self._in_thread(self._writer.rollback)
        finally:
            self._write_lock.release()

    async def _in_thread(self, work: Callable, *args: object):
        """
        C{work(*args)} on the writer, in a worker thread; not cancelled
        with the awaiting request (L{uncancellable}).
        """
        return await uncancellable(self._run_in_thread(work, *args))

    def _enter_sync(self) -> None:
        """
        Start a synchronous write on the writer: not while another write
        of this node holds it (in a worker thread, perhaps).
        """
        if self._in_transaction:
            raise RuntimeError("a transaction is already open on this storage (nested transactions)")
        if self._write_lock.locked:
            raise RuntimeError("an asynchronous write is in progress on this storage")
        self._in_transaction = True

    def _begin(self, since: int) -> tuple[int, Rows]:
        """
        Begin, lock the counter, and read what other nodes committed after
        serial C{since}; in any thread, on the writer.

        @return: the counter's serial and the changelog rows after C{since}.
        """

        def begin(conn: psycopg.Connection) -> tuple[int, Rows]:
            try:
                cursor = run_statements(conn, [("BEGIN", None), (_LOCK_COUNTER, None)], self._pipeline)
                found = cursor.fetchone()[0]
                return found, self._read_rows(conn, since) if found > since else []
            except BaseException:
                self._writer.rollback()
                raise

        return self._writer.using(begin)

    def _read_rows(self, conn: psycopg.Connection, since: int) -> Rows:
        rows: Rows = []
        while True:
            batch = conn.execute(
                "SELECT serial, changes FROM devpi_changelog WHERE serial > %s ORDER BY serial LIMIT %s",
                (since, _CATCH_UP_BATCH),
            ).fetchall()
            rows += batch
            if len(batch) < _CATCH_UP_BATCH:
                return rows
            since = batch[-1][0]

    def _apply_rows(self, found: int, rows: Rows) -> int:
        """
        What other nodes committed, up to serial C{found}, to the cache and
        the listeners in serial order, on the caller's (reactor) thread.
        Rows this node already applied (a catch-up of the watcher's while
        a write's begin waited) are skipped.

        @return: how many entries were applied.
        """
        applied = 0
        for serial, text in rows:
            if serial <= self.serial:
                continue
            if serial != self.serial + 1:
                log.error(
                    "changelog of {dsn} jumps from {serial} to {found}; dropping the cache",
                    dsn=self.dsn,
                    serial=self.serial,
                    found=serial,
                )
                self._forget_all()
            changes = {k: None if v is None else encode(v) for k, v in json.loads(text).items()}
            self._cache.apply(changes)
            self.serial = serial
            self._notify(serial, changes)
            applied += 1
        if found < self.serial:
            log.warn(
                "state in {dsn} is at serial {found}, behind this node's {serial}: restored? "
                "dropping the cache",
                dsn=self.dsn,
                found=found,
                serial=self.serial,
            )
            self._forget_all()
            self.serial = found
        return applied

    def _commit(self, changes: dict[str, str | None], durable: bool, serial: int, timestamp: float) -> None:
        """
        Write C{changes} as entry C{serial}, move the counter, notify the
        other nodes and commit: one round trip, in any thread, on the
        writer.  The caller then tells the cache and the listeners
        (L{_committed}).
        """
        # Durable whatever C{durable} says: other nodes (and replicas) may
        # see a commit as soon as it is made, and one a crash of the
        # database then lost would have its serial given to a different
        # entry, which they would never learn of.  (SQLite's non-durable
        # commits are one process's; here the wait is a worker thread's.)
        del durable
        statements: list[tuple[str, tuple | None]] = []
        upserts = [(key, encoded) for key, encoded in changes.items() if encoded is not None]
        deletes = [key for key, encoded in changes.items() if encoded is None]
        if upserts:
            statements.append(
                (
                    "INSERT INTO devpi_kv (key, value, serial) "
                    "SELECT k, v, %s FROM unnest(%s::text[], %s::text[]) AS t(k, v) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, serial = excluded.serial",
                    (serial, [k for k, _ in upserts], [v for _, v in upserts]),
                )
            )
        if deletes:
            statements.append(("DELETE FROM devpi_kv WHERE key = ANY(%s::text[])", (deletes,)))
        statements += [
            (
                "INSERT INTO devpi_changelog (serial, timestamp, changes) VALUES (%s, %s, %s)",
                (serial, timestamp, entry_text(changes)),
            ),
            ("UPDATE devpi_serial SET serial = %s", (serial,)),
            ("SELECT pg_notify(%s, %s)", (CHANNEL, str(serial))),
            ("COMMIT", None),
        ]
        try:
            with self._writer.errors():
                run_statements(self._writer.in_transaction(), statements, self._pipeline)
        except BaseException:
            self._writer.rollback()
            raise

    def _committed(self, serial: int, changes: dict[str, str | None]) -> None:
        """
        This node's commit of C{serial}, to the cache and the listeners,
        on the caller's (reactor) thread: unless a catch-up read it back
        from the changelog first.
        """
        if serial <= self.serial:
            return
        self._cache.apply(changes)
        self.serial = serial
        self._notify(serial, changes)

    def catch_up(self) -> int:
        """
        Learn of what other nodes committed since this node's serial: their
        entries go to the cache and to the listeners, in serial order.  A
        no-op inside a synchronous transaction (its begin caught up under
        the lock).  On the reads' connection, on the calling thread.

        @return: how many entries were applied.
        @raise StorageUnavailable: the database cannot be reached.
        """
        if self._in_transaction:
            return 0
        rows = self._reader.using(lambda conn: self._read_rows(conn, self.serial))
        return self._apply_rows(rows[-1][0] if rows else self.serial, rows)

    def _notify(self, serial: int, changes: dict[str, str | None]) -> None:
        notify(self._listeners, serial, frozenset(changes))

    def subscribe(self, listener) -> None:
        self._listeners.append(listener)

    def changelog_entry(self, serial: int) -> dict | None:
        """
        The entry of C{serial}, up to this node's serial (an entry of
        another node's that this node has not caught up with is not there
        yet, as in the rest of its view).
        """
        if serial > self.serial:
            return None
        row = self._reader.using(
            lambda conn: conn.execute(
                "SELECT timestamp, changes FROM devpi_changelog WHERE serial = %s", (serial,)
            ).fetchone()
        )
        if row is None:
            return None
        return {"serial": serial, "timestamp": row[0], "changes": json.loads(row[1])}

    def changelog_frames(self, start: int, max_bytes: int) -> list[tuple[int, float, str]]:
        """
        The entries from serial C{start} up to this node's serial, as
        stored; see L{IStorage.changelog_frames}.  Read a few rows at a
        time, so a long log is never read whole.
        """
        upto = self.serial

        def read(conn: psycopg.Connection) -> list[tuple[int, float, str]]:
            frames: list[tuple[int, float, str]] = []
            size, first, batch = 0, start, 16
            while first <= upto:
                rows = conn.execute(
                    "SELECT serial, timestamp, changes FROM devpi_changelog "
                    "WHERE serial >= %s AND serial <= %s ORDER BY serial LIMIT %s",
                    (first, upto, batch),
                ).fetchall()
                for serial, timestamp, text in rows:
                    frames.append((serial, timestamp, text))
                    size += len(text)
                    if size >= max_bytes:
                        return frames
                if len(rows) < batch:
                    break
                first = rows[-1][0] + 1
                batch = min(batch * 4, 1024)
            return frames

        return self._reader.using(read)

    def last_commit_timestamp(self) -> float | None:
        row = self._reader.using(
            lambda conn: conn.execute(
                "SELECT timestamp FROM devpi_changelog WHERE serial <= %s ORDER BY serial DESC LIMIT 1",
                (self.serial,),
            ).fetchone()
        )
        return None if row is None else row[0]

    def import_entry(self, serial: int, timestamp: float, changes: dict, durable: bool = True) -> None:
        """
        Commit a primary's entry as the primary committed it (see
        L{IStorage.import_entry}), under the write lock like any commit.
        Synchronous, on the calling thread: a replica does not share its
        state with other nodes, so its lock is never held by another.

        @raise SerialMismatch: C{serial} does not follow the last one (in
            this node's view, or in the database's once caught up).
        """
        if serial != self.serial + 1:
            raise SerialMismatch(f"entry {serial} does not follow serial {self.serial}")
        encoded = {key: None if value is None else encode(value) for key, value in changes.items()}
        self._enter_sync()
        try:
            begun = self._begin(self.serial)
            try:
                self._apply_rows(*begun)
                if serial != self.serial + 1:
                    raise SerialMismatch(
                        f"entry {serial} does not follow serial {self.serial} in the database"
                    )
            except BaseException:
                self._writer.rollback()
                raise
            self._commit(encoded, durable, serial, timestamp)
            self._committed(serial, encoded)
        finally:
            self._in_transaction = False

    def close(self) -> Deferred[None] | None:
        """
        Close the connections (the watcher of other nodes' commits is a
        service of its own, stopped before); using them after raises.  A
        write in progress (in a worker thread) finishes first: the
        returned Deferred fires once the connections are closed (L{None}
        when nothing was writing).
        """
        if not self._write_lock.locked:
            self._writer.close()
            self._reader.close()
            if self._own_thread is not None:
                self._own_thread.stop()
            return None

        def close(_: object) -> None:
            try:
                self._writer.close()
                self._reader.close()
            finally:
                self._write_lock.release()
                if self._own_thread is not None:
                    self._own_thread.stop()

        return self._write_lock.acquire().addCallback(close)

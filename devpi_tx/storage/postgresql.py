"""
The state on PostgreSQL, shared by several server processes (nodes); its
tables are in L{pgschema}, its changelog text is SQLite's (L{kvtext}).

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

The L{IStorage} contract is synchronous: a begin, a commit (one round trip
each, pipelined) and a cache miss wait for PostgreSQL on the calling
(reactor) thread.  An unreachable database raises L{StorageUnavailable}
within the connect timeout; the next operation connects again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from zope.interface import implementer

from ..interfaces import IStorage
from ..logs import logger
from .errors import SerialMismatch, StorageUnavailable
from .kvtext import OverlayTransaction, encode, entry_text, prefix_upper
from .pgschema import check_schema, connect, conninfo, first_line, safe_dsn
from .readcache import ReadCache

log = logger("devpi_tx.storage")

#: The channel each commit notifies (its payload is the serial).
CHANNEL = "devpi_tx_commit"
_LOCK_COUNTER = "SELECT serial FROM devpi_serial FOR UPDATE"
#: Changelog rows read at a time when catching up.
_CATCH_UP_BATCH = 500


#: What C{transaction()} yields.
PostgresTransaction = OverlayTransaction


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
        """
        self._conninfo = conninfo(dsn, connect_timeout)
        self.dsn = safe_dsn(dsn)
        self._lock_timeout = lock_timeout
        self._pipeline = pipeline
        self._conn: psycopg.Connection | None = None
        self._cache = ReadCache(cache_size)
        self._listeners: list = []
        self._in_transaction = False
        self._opened = self._closed = False
        #: Whether the connection is new since the last operation.
        self._fresh = False
        self.serial = -1
        conn = self._connection()
        try:
            with self._errors():
                check_schema(conn, self.dsn, create)
                self.serial = conn.execute("SELECT serial FROM devpi_serial").fetchone()[0]
        except BaseException:
            self._drop()
            raise
        self._opened = True
        self._fresh = False
        log.info("state in {dsn} at serial {serial}", dsn=self.dsn, serial=self.serial)

    # -- connections -----------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        """
        A new connection (L{pgschema.connect}); the listener of
        L{pgwatch.CommitWatcher} takes one too.
        """
        return connect(self._conninfo, self.dsn, self._lock_timeout)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            if self._closed:
                raise RuntimeError(f"the state in {self.dsn} was closed")
            self._conn = self.connect()
            self._fresh = True
            if self._opened:
                self._resync()
        return self._conn

    def _using(self, work, *, retry: bool = True):
        """
        C{work(connection)}, its errors as L{_errors} says.  A connection
        found dead at its first use since the last operation (the database
        restarted in between) is replaced once, with C{retry}: for what is
        safe to run again, not for what follows other statements of an open
        transaction.
        """
        with self._errors():
            conn = self._connection()
            fresh, self._fresh = self._fresh, False
            try:
                return work(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                lost = conn.broken or conn.closed
                if fresh or not retry or not lost or isinstance(e, psycopg.errors.LockNotAvailable):
                    raise
                log.info("connection to {dsn} lost; connecting again", dsn=self.dsn)
                self._drop()
                conn = self._connection()
                self._fresh = False
                return work(conn)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """
        Raise L{StorageUnavailable} for what a lost or unreachable database
        raises, and drop the connection (the next use opens another).
        """
        try:
            yield
        except psycopg.errors.LockNotAvailable as e:
            raise StorageUnavailable(
                f"the state database {self.dsn} is busy: another node held its write lock for over "
                f"{self._lock_timeout:g} s"
            ) from e
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self._drop()
            raise StorageUnavailable(f"the state database {self.dsn} is unavailable: {first_line(e)}") from e

    def _resync(self) -> None:
        """
        After connecting again: catch up with what was committed meanwhile
        (a commit whose connection broke included, if it went through).
        """
        conn = self._conn
        assert conn is not None
        with self._errors():
            found = conn.execute("SELECT serial FROM devpi_serial").fetchone()[0]
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
            elif found > self.serial and not self._in_transaction:
                self._catch_up(conn)

    def _run(self, conn: psycopg.Connection, statements: list[tuple[str, tuple | None]]) -> psycopg.Cursor:
        """
        Execute C{statements} in order, in one round trip with pipelining;
        return the last one's cursor.
        """
        if self._pipeline:
            with conn.pipeline():
                cursors = [conn.execute(query, params) for query, params in statements]
        else:
            cursors = [conn.execute(query, params) for query, params in statements]
        return cursors[-1]

    # -- the cache -------------------------------------------------------------

    def _forget_all(self) -> None:
        self._cache.clear()

    def _applied(self, changes: dict[str, str | None]) -> None:
        self._cache.apply(changes)

    def _encoded(self, key: str) -> str | None:
        return self._cache.lookup(key, self._load)

    def _load(self, key: str) -> str | None:
        row = self._using(
            lambda conn: conn.execute("SELECT value FROM devpi_kv WHERE key = %s", (key,)).fetchone(),
            retry=not self._in_transaction,
        )
        return None if row is None else row[0]

    # -- IStorage ------------------------------------------------------------------

    def get(self, key: str) -> object:
        encoded = self._encoded(key)
        return None if encoded is None else json.loads(encoded)

    def keys(self, prefix: str) -> list[str]:
        rows = self._using(
            lambda conn: conn.execute(
                "SELECT key FROM devpi_kv WHERE key >= %s AND key < %s ORDER BY key",
                (prefix, prefix_upper(prefix)),
            ).fetchall(),
            retry=not self._in_transaction,
        )
        return [row[0] for row in rows]

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[PostgresTransaction]:
        """
        A write transaction holding the global write lock from its start
        (see the module's docstring); without changes it rolls back and
        takes no serial.  With C{durable} false the commit does not wait for
        PostgreSQL's WAL flush (C{synchronous_commit} off): a crash of the
        database may lose it, never leave it half written.
        """
        if self._in_transaction:
            raise RuntimeError("a transaction is already open on this storage (nested transactions)")
        self._in_transaction = True
        try:
            conn = self._begin()
            tx = OverlayTransaction(self)
            try:
                yield tx
            except BaseException:
                self._rollback()
                raise
            if tx.changes:
                self._commit(conn, tx.changes, durable, self.serial + 1, time.time())
            else:
                self._rollback()
        finally:
            self._in_transaction = False

    def _begin(self) -> psycopg.Connection:
        """
        Begin, lock the counter, and catch up if another node committed.
        """

        def begin(conn: psycopg.Connection) -> psycopg.Connection:
            try:
                cursor = self._run(conn, [("BEGIN", None), (_LOCK_COUNTER, None)])
                found = cursor.fetchone()[0]
                if found != self.serial:
                    self._catch_up(conn)
            except BaseException:
                self._rollback()
                raise
            return conn

        return self._using(begin)

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            self._drop()

    def _commit(
        self,
        conn: psycopg.Connection,
        changes: dict[str, str | None],
        durable: bool,
        serial: int,
        timestamp: float,
    ) -> None:
        """
        Write C{changes} as entry C{serial}, move the counter, notify the
        other nodes and commit: one round trip.  Then the cache and the
        listeners learn of it.
        """
        statements: list[tuple[str, tuple | None]] = []
        if not durable:
            statements.append(("SET LOCAL synchronous_commit TO OFF", None))
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
            with self._errors():
                self._run(conn, statements)
        except BaseException:
            self._rollback()
            raise
        self._applied(changes)
        self.serial = serial
        self._notify(serial, changes)

    def catch_up(self) -> int:
        """
        Learn of what other nodes committed since this node's serial: their
        entries go to the cache and to the listeners, in serial order.  A
        no-op inside a transaction (its begin caught up under the lock).

        @return: how many entries were applied.
        @raise StorageUnavailable: the database cannot be reached.
        """
        if self._in_transaction:
            return 0
        return self._using(self._catch_up)

    def _catch_up(self, conn: psycopg.Connection) -> int:
        applied = 0
        while True:
            rows = conn.execute(
                "SELECT serial, changes FROM devpi_changelog WHERE serial > %s ORDER BY serial LIMIT %s",
                (self.serial, _CATCH_UP_BATCH),
            ).fetchall()
            for serial, text in rows:
                if serial != self.serial + 1:
                    log.error(
                        "changelog of {dsn} jumps from {serial} to {found}; dropping the cache",
                        dsn=self.dsn,
                        serial=self.serial,
                        found=serial,
                    )
                    self._forget_all()
                changes = {k: None if v is None else encode(v) for k, v in json.loads(text).items()}
                self._applied(changes)
                self.serial = serial
                self._notify(serial, changes)
                applied += 1
            if len(rows) < _CATCH_UP_BATCH:
                return applied

    def _notify(self, serial: int, changes: dict[str, str | None]) -> None:
        for listener in list(self._listeners):
            listener(serial, frozenset(changes))

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
        row = self._using(
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

        return self._using(read)

    def last_commit_timestamp(self) -> float | None:
        row = self._using(
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

        @raise SerialMismatch: C{serial} does not follow the last one (in
            this node's view, or in the database's once caught up).
        """
        if serial != self.serial + 1:
            raise SerialMismatch(f"entry {serial} does not follow serial {self.serial}")
        if self._in_transaction:
            raise RuntimeError("a transaction is already open on this storage")
        encoded = {key: None if value is None else encode(value) for key, value in changes.items()}
        self._in_transaction = True
        try:
            conn = self._begin()
            if serial != self.serial + 1:
                self._rollback()
                raise SerialMismatch(f"entry {serial} does not follow serial {self.serial} in the database")
            self._commit(conn, encoded, durable, serial, timestamp)
        finally:
            self._in_transaction = False

    def close(self) -> None:
        """
        Close the connection (the watcher of other nodes' commits is a
        service of its own, stopped before); using it after raises.
        """
        self._closed = True
        self._drop()

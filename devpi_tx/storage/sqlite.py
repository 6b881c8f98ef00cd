"""
The default state: one SQLite database in WAL mode.

Table C{kv} holds the current value of every key, table C{changelog} one
row per committed write transaction (its serial, time and the changed keys
with their new values).  Both are written in the same SQLite transaction,
so the current state and the changelog can never disagree, and a process
killed mid-transaction leaves the state of the last commit.

There is one writer: the server's reactor thread.  Reads are served from an
in-memory cache of encoded values that the writer keeps up to date; when
another process (C{devpi-tx passwd} on a stopped server, say) has committed
in between, the cache is dropped at the start of the next transaction.

Given a clock, non-durable transactions (mirrored pages: what can be
fetched again) are batched: each gets its serial, is visible to readers
and reported to listeners at once, and is written with the others that
follow within C{batch_delay} in one SQLite transaction.  Fifty cold pages
fetched at once used to pay fifty SQLite commits in the middle of
answering their installers; now they pay one, after the burst (an
installer's burst of page requests lasts a few hundred ms; a longer one
is written every C{batch_delay}, or every C{batch_size} transactions).
A durable commit writes whatever is pending before itself, in the same
SQLite transaction, so nothing durable can depend on a write a crash
could lose.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from ..interfaces import IStorage
from ..logs import logger
from .errors import SchemaError, SerialMismatch
from .kvtext import MISSING as _MISSING
from .kvtext import OverlayTransaction, prefix_upper
from .kvtext import encode as _encode
from .kvtext import entry_text as _entry_text
from .kvtext import overlaid as _overlaid
from .listeners import notify
from .readcache import ReadCache

log = logger("devpi_tx.storage")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    serial INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS changelog (
    serial INTEGER PRIMARY KEY,
    timestamp REAL NOT NULL,
    changes TEXT NOT NULL
);
"""


#: What C{transaction()} yields.
SQLiteTransaction = OverlayTransaction


@implementer(IStorage)
class SQLiteStorage:
    """
    An L{IStorage} in one SQLite file.
    """

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        cache_size: int = 10000,
        clock: IReactorTime | None = None,
        batch_delay: float = 0.5,
        batch_size: int = 1000,
    ) -> None:
        """
        @param clock: schedules the writing of batched non-durable
            transactions; without one, each is written when it commits.
        @param batch_delay: how long a non-durable transaction may wait in
            memory for others to join it.
        @param batch_size: how many may wait; one more and they are
            written at the next turn of the reactor.
        """
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._synchronous = synchronous
        self._db.execute("PRAGMA busy_timeout=10000")
        self._migrate()
        self._cache = ReadCache(cache_size)
        self._listeners: list = []
        self.serial = self._db_serial()
        #: The last serial written to the database.
        self._written = self.serial
        self._clock = clock
        self._batch_delay = batch_delay
        self._batch_size = batch_size
        #: Committed non-durable transactions not yet written, in serial
        #: order: (serial, timestamp, changes); and their latest values.
        self._pending: list[tuple[int, float, dict[str, str | None]]] = []
        self._pending_values: dict[str, str | None] = {}
        self._flush_call: IDelayedCall | None = None

    def _migrate(self) -> None:
        # Idempotent DDL; executescript runs outside any transaction.
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta (name, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise SchemaError(
                    f"{self.path} has schema version {row[0]}, this devpi-tx "
                    f"knows only up to {SCHEMA_VERSION}"
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _db_serial(self) -> int:
        row = self._db.execute("SELECT MAX(serial) FROM changelog").fetchone()
        return -1 if row[0] is None else row[0]

    def _forget_all(self) -> None:
        self._cache.clear()

    def _encoded(self, key: str) -> str | None:
        if self._pending_values:
            encoded = self._pending_values.get(key, _MISSING)
            if encoded is not _MISSING:
                return encoded  # type: ignore[return-value]
        return self._cache.lookup(key, self._load)

    def _load(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def get(self, key: str) -> object:
        encoded = self._encoded(key)
        return None if encoded is None else json.loads(encoded)

    def keys(self, prefix: str) -> list[str]:
        # A range scan on the primary key.
        upper = prefix_upper(prefix)
        rows = self._db.execute(
            "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, upper),
        )
        return _overlaid([row[0] for row in rows], self._pending_values, prefix)

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[SQLiteTransaction]:
        tx = OverlayTransaction(self)
        yield tx
        if not tx.changes:
            return
        if not durable and self._clock is not None:
            self._defer(tx.changes)
        else:
            self._commit(tx.changes, durable)

    @asynccontextmanager
    async def write(self, durable: bool = True) -> AsyncIterator[SQLiteTransaction]:
        """
        L{transaction}, to be awaited: the same commit on the same thread
        (SQLite's commit is local and short, and non-durable ones are
        batched already), so that the server's request paths are written
        once for both providers.
        """
        with self.transaction(durable) as tx:
            yield tx

    def _defer(self, changes: dict[str, str | None]) -> None:
        """
        Commit a non-durable transaction in memory; it is written with the
        next batch (or the next durable commit).
        """
        self.serial += 1
        self._pending.append((self.serial, time.time(), changes))
        self._pending_values.update(changes)
        if len(self._pending) >= self._batch_size:
            if self._flush_call is not None:
                self._flush_call.cancel()
            self._flush_call = self._clock.callLater(0, self._flush_batch)
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(self._batch_delay, self._flush_batch)
        self._notify(self.serial, changes)

    def _flush_batch(self) -> None:
        self._flush_call = None
        try:
            self.flush()
        except Exception:
            log.failure("writing {count} batched transactions", count=len(self._pending))
            if self._pending and self._clock is not None:
                self._flush_call = self._clock.callLater(self._batch_delay, self._flush_batch)

    def flush(self) -> None:
        """
        Write the pending non-durable transactions now.
        """
        if self._pending:
            self._commit({}, durable=False)

    @contextmanager
    def _atomic(self, durable: bool) -> Iterator[None]:
        """
        One SQLite transaction: committed when the block ends, rolled back
        (and the read cache, which may hold what it wrote, dropped) when
        it raises.  Not C{durable}: in WAL mode, C{synchronous=NORMAL}
        skips the fsync of the log at this commit; the next FULL commit
        syncs the log, this commit included.
        """
        db = self._db
        relaxed = not durable and self._synchronous == "FULL"
        if relaxed:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._forget_all()
                raise
        finally:
            if relaxed:
                db.execute("PRAGMA synchronous=FULL")

    def _commit(self, changes: dict[str, str | None], durable: bool = True) -> None:
        """
        Write the pending transactions and then C{changes} (if any, as a
        new transaction) in one SQLite transaction.
        """
        with self._atomic(durable):
            entries = list(self._pending)
            on_disk = self._db_serial()
            if on_disk != self._written:
                # Someone else wrote: our cache may be stale, and the
                # serials given to pending transactions are taken.
                self._forget_all()
                entries = [(on_disk + 1 + i, ts, pending) for i, (_, ts, pending) in enumerate(entries)]
            serial = entries[-1][0] if entries else on_disk
            if changes:
                serial += 1
                entries.append((serial, time.time(), changes))
            for entry_serial, timestamp, entry_changes in entries:
                self._write_entry(entry_serial, timestamp, entry_changes)
        self._written_up_to(entries, serial)
        if changes:
            self._notify(serial, changes)

    def _written_up_to(self, entries: list, serial: int) -> None:
        """
        After C{entries} (every pending one among them) were written, up
        to C{serial}: their values go to the read cache, nothing is pending.
        """
        for _, _, entry_changes in entries:
            self._cache.apply(entry_changes)
        self._pending.clear()
        self._pending_values.clear()
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        self._written = self.serial = serial

    def _write_entry(self, serial: int, timestamp: float, changes: dict[str, str | None]) -> None:
        db = self._db
        for key, encoded in changes.items():
            if encoded is None:
                db.execute("DELETE FROM kv WHERE key=?", (key,))
            else:
                db.execute(
                    "INSERT INTO kv (key, value, serial) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
                    "serial=excluded.serial",
                    (key, encoded, serial),
                )
        db.execute(
            "INSERT INTO changelog (serial, timestamp, changes) VALUES (?, ?, ?)",
            (serial, timestamp, _entry_text(changes)),
        )

    def _notify(self, serial: int, changes: dict[str, str | None]) -> None:
        notify(self._listeners, serial, frozenset(changes))

    def subscribe(self, listener) -> None:
        self._listeners.append(listener)

    def changelog_entry(self, serial: int) -> dict | None:
        self.flush()
        row = self._db.execute(
            "SELECT timestamp, changes FROM changelog WHERE serial=?", (serial,)
        ).fetchone()
        if row is None:
            return None
        return {"serial": serial, "timestamp": row[0], "changes": json.loads(row[1])}

    def changelog_frames(self, start: int, max_bytes: int) -> list[tuple[int, float, str]]:
        """
        The entries from serial C{start} on, as stored; see
        L{IStorage.changelog_frames}.

        Rows are read one at a time from a cursor that is closed once the
        batch is full, so a long log is never read whole.  Batched
        non-durable commits not yet written are served from memory, with
        the text and timestamp they will be written with, rather than
        flushed first: a replica following the log asks after every
        commit, and a flush per request would write each mirrored page in
        a SQLite commit of its own again (and make a read write).
        """
        frames: list[tuple[int, float, str]] = []
        size = 0
        if start <= self._written:
            cursor = self._db.execute(
                "SELECT serial, timestamp, changes FROM changelog WHERE serial >= ? AND serial <= ? "
                "ORDER BY serial",
                (start, self._written),
            )
            try:
                for serial, timestamp, text in cursor:
                    frames.append((serial, timestamp, text))
                    size += len(text)
                    if size >= max_bytes:
                        return frames
            finally:
                cursor.close()
        for serial, timestamp, changes in self._pending:
            if serial >= start:
                text = _entry_text(changes)
                frames.append((serial, timestamp, text))
                size += len(text)
                if size >= max_bytes:
                    break
        return frames

    def last_commit_timestamp(self) -> float | None:
        if self._pending:
            return self._pending[-1][1]
        row = self._db.execute("SELECT timestamp FROM changelog ORDER BY serial DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def import_entry(self, serial: int, timestamp: float, changes: dict, durable: bool = True) -> None:
        """
        Commit a primary's entry as the primary committed it (see
        L{IStorage.import_entry}).  The values are encoded as a local
        commit encodes them, so the changelog row is the primary's byte for
        byte.  Anything pending (there should be nothing: a replica does
        not commit on its own) is written first, in the same SQLite
        transaction, and the serial is checked against what is on disk, so
        that an entry can neither skip a serial nor take one twice.

        @raise SerialMismatch: C{serial} does not follow the last one.
        """
        if serial != self.serial + 1:
            raise SerialMismatch(f"entry {serial} does not follow serial {self.serial}")
        encoded = {key: None if value is None else _encode(value) for key, value in changes.items()}
        entries = list(self._pending)
        with self._atomic(durable):
            on_disk = self._db_serial()
            if on_disk + len(entries) + 1 != serial:
                # Another process committed: refuse rather than renumber,
                # and know the serial on disk from now on.
                if not entries:
                    self._written = self.serial = on_disk
                raise SerialMismatch(
                    f"entry {serial} does not follow serial {on_disk + len(entries)} on disk"
                )
            for entry_serial, entry_timestamp, entry_changes in entries:
                self._write_entry(entry_serial, entry_timestamp, entry_changes)
            self._write_entry(serial, timestamp, encoded)
        self._written_up_to([*entries, (serial, timestamp, encoded)], serial)
        self._notify(serial, encoded)

    def close(self) -> None:
        """
        Write what is pending and close the database.
        """
        try:
            self.flush()
        finally:
            self._db.close()


def open_storage(serverdir: str, clock: IReactorTime | None = None) -> SQLiteStorage:
    """
    Open (creating if needed) the state database of a server directory;
    with a C{clock}, non-durable transactions are written in batches.
    """
    return SQLiteStorage(os.path.join(serverdir, ".sqlite"), clock=clock)

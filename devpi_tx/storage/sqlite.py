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
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from zope.interface import implementer

from ..interfaces import IStorage, ITransaction

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

_MISSING = object()


class SchemaError(Exception):
    """
    The database was written by an incompatible version of devpi-tx.
    """


def _encode(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@implementer(ITransaction)
class SQLiteTransaction:
    """
    The pending writes of one transaction; see L{SQLiteStorage.transaction}.
    """

    def __init__(self, storage: SQLiteStorage) -> None:
        self._storage = storage
        self.changes: dict[str, str | None] = {}

    def get(self, key: str) -> object:
        encoded = self.changes.get(key, _MISSING)
        if encoded is _MISSING:
            encoded = self._storage._encoded(key)
        return None if encoded is None else json.loads(encoded)

    def set(self, key: str, value: object) -> None:
        self.changes[key] = _encode(value)

    def delete(self, key: str) -> None:
        self.changes[key] = None

    def keys(self, prefix: str) -> list[str]:
        found = set(self._storage.keys(prefix))
        for key, encoded in self.changes.items():
            if key.startswith(prefix):
                if encoded is None:
                    found.discard(key)
                else:
                    found.add(key)
        return sorted(found)


@implementer(IStorage)
class SQLiteStorage:
    """
    An L{IStorage} in one SQLite file.
    """

    def __init__(self, path: str, *, synchronous: str = "FULL", cache_size: int = 10000) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._synchronous = synchronous
        self._db.execute("PRAGMA busy_timeout=10000")
        self._migrate()
        # Encoded values of recently used keys, least recently used first;
        # bounded like devpi's --keyfs-cache-size.
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size
        self._listeners: list = []
        self.serial = self._db_serial()

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

    def _remember(self, key: str, encoded: str) -> None:
        self._cache[key] = encoded
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _encoded(self, key: str) -> str | None:
        try:
            encoded = self._cache[key]
            self._cache.move_to_end(key)
            return encoded
        except KeyError:
            row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
            if row is None:
                # Absent keys are not cached, so that lookups of made-up
                # names cannot grow the cache.
                return None
            self._remember(key, row[0])
            return row[0]

    def get(self, key: str) -> object:
        encoded = self._encoded(key)
        return None if encoded is None else json.loads(encoded)

    def keys(self, prefix: str) -> list[str]:
        # A range scan on the primary key; no LIKE, so no escaping issues.
        upper = prefix + "\U0010ffff"
        rows = self._db.execute(
            "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, upper),
        )
        return [row[0] for row in rows]

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[SQLiteTransaction]:
        tx = SQLiteTransaction(self)
        yield tx
        if tx.changes:
            if durable or self._synchronous != "FULL":
                self._commit(tx.changes)
                return
            # In WAL mode, NORMAL skips the fsync of the log at this commit;
            # the next FULL commit syncs the log, this commit included.
            self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._commit(tx.changes)
            finally:
                self._db.execute("PRAGMA synchronous=FULL")

    def _commit(self, changes: dict[str, str | None]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            serial = self._db_serial()
            if serial != self.serial:
                # Someone else wrote; our cache may be stale.
                self._cache.clear()
            serial += 1
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
            entry = (
                "{"
                + ",".join(
                    f"{json.dumps(key)}:{'null' if enc is None else enc}"
                    for key, enc in sorted(changes.items())
                )
                + "}"
            )
            db.execute(
                "INSERT INTO changelog (serial, timestamp, changes) VALUES (?, ?, ?)",
                (serial, time.time(), entry),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._cache.clear()
            raise
        for key, encoded in changes.items():
            if encoded is None:
                self._cache.pop(key, None)
            else:
                self._remember(key, encoded)
        self.serial = serial
        for listener in list(self._listeners):
            listener(serial, frozenset(changes))

    def subscribe(self, listener) -> None:
        self._listeners.append(listener)

    def changelog_entry(self, serial: int) -> dict | None:
        row = self._db.execute(
            "SELECT timestamp, changes FROM changelog WHERE serial=?", (serial,)
        ).fetchone()
        if row is None:
            return None
        return {"serial": serial, "timestamp": row[0], "changes": json.loads(row[1])}

    def last_commit_timestamp(self) -> float | None:
        row = self._db.execute("SELECT timestamp FROM changelog ORDER BY serial DESC LIMIT 1").fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self._db.close()


def open_storage(serverdir: str) -> SQLiteStorage:
    """
    Open (creating if needed) the state database of a server directory.
    """
    return SQLiteStorage(os.path.join(serverdir, ".sqlite"))

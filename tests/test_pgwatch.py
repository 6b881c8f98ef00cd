"""
The commit watcher keeps going through errors and waits longer between
attempts while the database cannot be reached (each attempt may wait for
a connect timeout on the reactor).
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from devpi_tx.storage.errors import StorageUnavailable
from devpi_tx.storage.pgwatch import MAX_BACKOFF, CommitWatcher
from devpi_tx.storage.postgresql import PostgresStorage


class Unreachable:
    """
    A storage whose database cannot be reached: every attempt counted.
    """

    dsn = "postgresql://devpi@127.0.0.1:9/devpi"
    serial = 0

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self):
        self.attempts += 1
        raise StorageUnavailable("the state database is unavailable: connection refused")

    def catch_up(self) -> int:
        self.attempts += 1
        raise StorageUnavailable("the state database is unavailable: connection refused")


def test_attempts_back_off_while_the_database_is_unreachable():
    clock = MemoryReactorClock()
    storage = Unreachable()
    watcher = CommitWatcher(storage, clock, interval=1.0)
    watcher.startService()
    for _ in range(120):
        clock.advance(1)
    # 1 + waits of 1, 2, 4, 8, 16, 30, 30, 30: not one a second.
    assert 6 <= storage.attempts <= 10
    before = storage.attempts
    for _ in range(int(MAX_BACKOFF)):
        clock.advance(1)
    assert storage.attempts == before + 1  # never longer than MAX_BACKOFF apart
    watcher.stopService()


@pytest.mark.scaleout
def test_an_error_in_a_listener_does_not_stop_the_checks(pg_dsn):
    a, b = PostgresStorage(pg_dsn, create=True), PostgresStorage(pg_dsn)
    clock = MemoryReactorClock()
    failures = []

    def listener(serial, keys):
        if not failures:
            failures.append(serial)
            raise RuntimeError("a listener's bug")

    b.subscribe(listener)
    watcher = CommitWatcher(b, clock, interval=1.0)
    watcher.startService()
    try:
        for n in range(2):
            with a.transaction() as tx:
                tx.set(f"k/{n}", n)
            clock.advance(1)
        assert failures == [0]
        assert b.serial == a.serial == 1
        assert b.get("k/1") == 1
    finally:
        watcher.stopService()
        a.close()
        b.close()


@pytest.mark.scaleout
def test_a_database_that_stops_answering_fails_statements_within_seconds(pg_dsn):
    # (A frozen backend keeps the TCP connection up: only a statement
    # timeout ends the wait.)
    storage = PostgresStorage(pg_dsn, create=True)
    try:
        conn = storage._connection()
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "15s"
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()[0] == "1min"
    finally:
        storage.close()


@pytest.mark.scaleout
def test_a_read_only_database_is_unavailable_and_the_connection_is_made_again(pg_dsn):
    # (A primary demoted to a standby after a failover answers writes so.)
    import psycopg

    storage = PostgresStorage(pg_dsn, create=True)
    name = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        storage._writer.drop()  # (new sessions take the database's setting)
        with pytest.raises(StorageUnavailable, match="read-only"):
            with storage.transaction() as tx:
                tx.set("k", 1)
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SET default_transaction_read_only = off")
            admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        with storage.transaction() as tx:  # a new connection: writable again
            tx.set("k", 1)
        assert storage.get("k") == 1
    finally:
        storage.close()

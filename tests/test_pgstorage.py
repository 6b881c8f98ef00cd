"""
What only the state on PostgreSQL does: several nodes on one database,
learning of each other's commits, the database going away and coming
back, its schema.  (The contract both providers keep is tested in
test_storage.py, on each.)
"""

from __future__ import annotations

import json
import select
import threading
import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from devpi_tx.interfaces import IStorage, ITransaction
from devpi_tx.storage.errors import SchemaError, StorageUnavailable
from devpi_tx.storage.kvtext import encode
from devpi_tx.storage.pgschema import safe_dsn
from devpi_tx.storage.pgwatch import CommitWatcher
from devpi_tx.storage.postgresql import PostgresStorage
from devpi_tx.storage.sqlite import SQLiteStorage

pytestmark = pytest.mark.scaleout


@pytest.fixture
def nodes(pg_dsn):
    """
    C{nodes(n)}: n storages on the test's database, as n server processes
    would have; closed after the test.
    """
    opened = []

    def nodes(n: int = 2, **kw):
        made = [PostgresStorage(pg_dsn, create=True, **kw) for _ in range(n)]
        opened.extend(made)
        return made

    yield nodes
    for s in opened:
        s.close()


def _watch(storage):
    reactor = MemoryReactorClock()
    watcher = CommitWatcher(storage, reactor, interval=1.0)
    watcher.startService()
    return watcher, reactor


def _readable(watcher, timeout: float = 5.0) -> bool:
    """
    Wait (without sleeping) until the listener's socket has something.
    """
    return bool(select.select([watcher.fileno()], [], [], timeout)[0])


def test_provides_interfaces(nodes):
    (s,) = nodes(1)
    assert verifyObject(IStorage, s)
    with s.transaction() as tx:
        assert verifyObject(ITransaction, tx)
    watcher, _ = _watch(s)
    try:
        assert verifyObject(IReadDescriptor, watcher)
    finally:
        watcher.stopService()


def test_changelog_text_is_sqlites_byte_for_byte(nodes, tmp_path):
    (pg,) = nodes(1)
    lite = SQLiteStorage(str(tmp_path / "state.sqlite"))
    for s in (pg, lite):
        with s.transaction() as tx:
            tx.set("k/é", {"b": [1, None, 2.5], "a": "ü\u2028"})
            tx.set("a", "x")
        with s.transaction() as tx:
            tx.delete("a")
    texts = [[(serial, text) for serial, _, text in s.changelog_frames(0, 10**9)] for s in (pg, lite)]
    assert texts[0] == texts[1]
    lite.close()


def test_two_nodes_commit_interleaved_serials_gapless_no_write_lost(nodes):
    """
    Eight nodes (a storage each, in a thread each) append to one list key
    at once: every append survives, and the changelog has every serial
    once, in order, each entry the list as its writer left it.
    """
    count, per_node = 8, 15
    storages = nodes(count)
    errors = []
    start = threading.Barrier(count)

    def append(n: int, s: PostgresStorage) -> None:
        try:
            start.wait()
            for i in range(per_node):
                with s.transaction() as tx:
                    tx.set("shared", (tx.get("shared") or []) + [f"{n}-{i}"])
                    tx.set(f"node/{n}", i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=append, args=(n, s)) for n, s in enumerate(storages)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    final = storages[0]
    final.catch_up()
    total = count * per_node
    assert final.serial == total - 1
    assert sorted(final.get("shared")) == sorted(f"{n}-{i}" for n in range(count) for i in range(per_node))
    frames = final.changelog_frames(0, 10**9)
    assert [serial for serial, _, _ in frames] == list(range(total))
    lengths = [len(json.loads(text)["shared"]) for _, _, text in frames]
    assert lengths == list(range(1, total + 1))
    for s in storages:
        s.catch_up()
        assert s.serial == total - 1 and s.get("shared") == final.get("shared")


def test_a_write_transaction_starts_from_the_other_nodes_commits(nodes):
    a, b = nodes(2)
    seen = []
    b.subscribe(lambda serial, keys: seen.append((serial, keys)))
    with b.transaction() as tx:
        tx.set("k", 1)
    assert b.get("k") == 1  # cached
    with a.transaction() as tx:
        tx.set("k", tx.get("k") + 1)
    assert a.serial == 1
    with b.transaction() as tx:
        # Caught up under the lock: b's cache and listeners heard of a's commit.
        assert tx.get("k") == 2
        tx.set("k", tx.get("k") + 1)
    assert (b.serial, b.get("k")) == (2, 3)
    assert seen == [(0, frozenset({"k"})), (1, frozenset({"k"})), (2, frozenset({"k"}))]


def test_node_learns_of_another_nodes_commit_through_listen(nodes):
    a, b = nodes(2)
    with a.transaction() as tx:
        tx.set("user/alice", {"v": 1})
    b.catch_up()
    assert b.get("user/alice") == {"v": 1}
    watcher, reactor = _watch(b)
    try:
        assert watcher in reactor.getReaders()
        seen = []
        b.subscribe(lambda serial, keys: seen.append((serial, keys)))
        with a.transaction() as tx:
            tx.set("user/alice", {"v": 2})
            tx.delete("gone")
        assert b.get("user/alice") == {"v": 1}  # not yet
        assert _readable(watcher)
        watcher.doRead()
        assert seen == [(1, frozenset({"user/alice", "gone"}))]
        assert (b.serial, b.get("user/alice")) == (1, {"v": 2})
        watcher.doRead()  # nothing more: nothing happens
        assert len(seen) == 1
    finally:
        watcher.stopService()
    assert watcher not in reactor.getReaders()


def test_periodic_check_catches_up_without_a_notification(nodes):
    a, b = nodes(2)
    watcher, reactor = _watch(b)
    try:
        with a.transaction() as tx:
            tx.set("k", "v")
        # The notification is never read: the check finds the commit.
        reactor.advance(1.0)
        assert (b.serial, b.get("k")) == (0, "v")
    finally:
        watcher.stopService()


def test_listener_connection_lost_is_opened_again(nodes):
    a, b = nodes(2)
    watcher, reactor = _watch(b)
    try:
        pid = watcher._conn.info.backend_pid
        a._connection().execute("SELECT pg_terminate_backend(%s)", (pid,))
        # As the reactor would: read while the socket is readable (the
        # server's last message, then the end of the connection).
        for _ in range(10):
            if not (watcher.listening and _readable(watcher, 2)):
                break
            watcher.doRead()
        assert not watcher.listening and watcher not in reactor.getReaders()
        with a.transaction() as tx:
            tx.set("k", 1)
        reactor.advance(1.0)  # listens again, and catches up
        assert watcher.listening and watcher in reactor.getReaders()
        assert b.get("k") == 1
        with a.transaction() as tx:
            tx.set("k", 2)
        assert _readable(watcher)
        watcher.doRead()
        assert b.get("k") == 2
    finally:
        watcher.stopService()


def test_database_down_is_storage_unavailable_then_recovers(nodes, pg_cluster):
    s, other = nodes(2)
    with s.transaction() as tx:
        tx.set("cached", 1)
    watcher, reactor = _watch(s)
    pg_cluster.stop()
    try:
        assert s.get("cached") == 1  # from the cache
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="unavailable"):
            s.get("not-cached")
        with pytest.raises(StorageUnavailable) as raised:
            with s.transaction() as tx:
                tx.set("x", 1)
        assert time.monotonic() - started < 5
        assert "\n" not in str(raised.value)
        with pytest.raises(StorageUnavailable):
            s.keys("")
        if _readable(watcher, 0.5):
            watcher.doRead()
        reactor.advance(1.0)  # the check fails quietly
        assert s.serial == 0
    finally:
        pg_cluster.start()
    # Another node committed while this one was cut off (its own
    # connection is new: the old one died with the server).
    with other.transaction() as tx:
        tx.set("by-other", 1)
    with s.transaction() as tx:
        assert tx.get("by-other") == 1
        tx.set("x", 1)
    assert (s.serial, s.get("x"), s.get("not-cached")) == (2, 1, None)
    reactor.advance(1.0)
    assert watcher.listening
    watcher.stopService()


def test_a_failing_transaction_leaves_the_cache_as_the_database(nodes):
    (s,) = nodes(1)
    with s.transaction() as tx:
        tx.set("k", "v1")
    with pytest.raises(RuntimeError):
        with s.transaction() as tx:
            tx.set("k", "v2")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="nested"):
        with s.transaction():
            with s.transaction():
                pass
    with s.transaction() as tx:
        tx.set("other", 1)  # the connection is usable: no transaction left open
    assert (s.serial, s.get("k")) == (1, "v1")


def test_non_durable_commit_is_a_durable_commit(nodes, monkeypatch):
    # (Other nodes see a commit at once: one lost by a crash would have its
    # serial reused.)
    (s,) = nodes(1)
    sent = []
    execute = psycopg.Connection.execute

    def recording(self, query, *args, **kwargs):
        sent.append(str(query))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", recording)
    with s.transaction(durable=False) as tx:
        tx.set("mirror/x", {"links": []})
    assert s.serial == 0 and s.changelog_entry(0)["changes"] == {"mirror/x": {"links": []}}
    assert not [query for query in sent if "synchronous_commit" in query]
    assert s._writer.connection().execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_without_pipeline_the_same(pg_dsn):
    s = PostgresStorage(pg_dsn, create=True, pipeline=False)
    with s.transaction() as tx:
        tx.set("a", 1)
        tx.set("b", 2)
    with s.transaction() as tx:
        tx.delete("a")
    assert (s.serial, s.keys(""), s.changelog_entry(1)["changes"]) == (1, ["b"], {"a": None})
    s.close()


def test_keys_are_in_code_point_order(nodes):
    (s,) = nodes(1)
    with s.transaction() as tx:
        for key in ["p/B", "p/a", "p/_", "p/é", "p/Z", "q"]:
            tx.set(key, 1)
    assert s.keys("p/") == sorted(["p/B", "p/a", "p/_", "p/é", "p/Z"])


def test_server_refuses_a_database_without_the_schema(pg_dsn):
    with pytest.raises(SchemaError, match="devpi-tx init --storage"):
        PostgresStorage(pg_dsn)
    PostgresStorage(pg_dsn, create=True).close()
    PostgresStorage(pg_dsn).close()


def test_refuses_newer_schema(pg_dsn):
    PostgresStorage(pg_dsn, create=True).close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE devpi_meta SET value='999' WHERE name='schema_version'")
    with pytest.raises(SchemaError, match="999"):
        PostgresStorage(pg_dsn)


def test_password_is_never_logged_nor_in_messages(pg_dsn, pg_cluster):
    secret = "s3cr3t-pw-9f2"
    dsn = pg_dsn.replace("devpi@", f"devpi:{secret}@")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        s = PostgresStorage(dsn, create=True)
        with s.transaction() as tx:
            tx.set("k", 1)
        s.close()
        down = f"postgresql://devpi:{secret}@127.0.0.1:1/nothing"
        with pytest.raises(StorageUnavailable) as raised:
            PostgresStorage(down, connect_timeout=2)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert events and any("state in" in formatEvent(e) for e in events)
    assert not any(secret in formatEvent(e) for e in events)
    assert secret not in str(raised.value) and secret not in s.dsn
    assert safe_dsn(dsn) == pg_dsn


def test_catch_up_reads_long_gaps_in_batches(nodes, monkeypatch):
    from devpi_tx.storage import postgresql

    monkeypatch.setattr(postgresql, "_CATCH_UP_BATCH", 3)
    a, b = nodes(2)
    for n in range(10):
        with a.transaction() as tx:
            tx.set(f"k/{n}", n)
    seen = []
    b.subscribe(lambda serial, keys: seen.append(serial))
    assert b.catch_up() == 10
    assert seen == list(range(10)) and b.get("k/9") == 9
    assert b._cache.values["k/3"] == encode(3)


def test_own_commits_notified_back_cost_no_catch_up(nodes, monkeypatch):
    (s,) = nodes(1)
    watcher, _ = _watch(s)
    try:
        with s.transaction() as tx:
            tx.set("k", 1)
        calls = []
        monkeypatch.setattr(s, "catch_up", lambda: calls.append(1) or 0)
        assert _readable(watcher)
        watcher.doRead()
        assert calls == []
        s._connection().execute("SELECT pg_notify('devpi_tx_commit', 'garbled')")
        assert _readable(watcher)
        watcher.doRead()
        assert calls == [1]
    finally:
        watcher.stopService()


def test_a_write_waiting_too_long_for_another_nodes_is_storage_unavailable(nodes):
    a, b = nodes(2, lock_timeout=0.2)
    with a.transaction() as tx:
        tx.set("k", "a")
        with pytest.raises(StorageUnavailable, match="busy: another node held its write lock for over 0.2 s"):
            with b.transaction() as other:
                other.set("k", "b")
    with b.transaction() as tx:  # b's connection is fine; a committed meanwhile
        assert tx.get("k") == "a"
        tx.set("k", "b")
    assert (b.serial, b.get("k")) == (1, "b")


def test_a_closed_storage_stays_closed(nodes):
    (s,) = nodes(1)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.get("k")


@pytest_twisted.ensureDeferred
async def test_on_the_real_reactor_a_commit_reaches_the_other_node_at_once(nodes):
    """
    The watcher's socket on Twisted's reactor: node B hears of node A's
    commit through LISTEN, well before the periodic check (set to an hour).
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    a, b = nodes(2)
    heard: Deferred = Deferred()
    b.subscribe(lambda serial, keys: heard.called or heard.callback((serial, keys)))
    watcher = CommitWatcher(b, reactor, interval=3600)
    watcher.startService()
    timeout = reactor.callLater(10, heard.cancel)
    try:
        started = time.monotonic()
        with a.transaction() as tx:
            tx.set("user/bob", {"v": 1})
        assert await heard == (0, frozenset({"user/bob"}))
        assert time.monotonic() - started < 5
        assert b.get("user/bob") == {"v": 1}
    finally:
        if timeout.active():
            timeout.cancel()
        watcher.stopService()


@pytest_twisted.ensureDeferred
async def test_on_the_real_reactor_a_lost_listener_leaves_the_reactor_sound(nodes):
    """
    libpq closes the socket of a connection it finds lost; the reactor
    must still be able to stop watching it (before, its descriptor stayed
    in the reactor's tables, and the next socket given that number, a
    client's, say, was never watched).
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    a, b = nodes(2)
    watcher = CommitWatcher(b, reactor, interval=3600)
    watcher.startService()
    try:
        a._connection().execute("SELECT pg_terminate_backend(%s)", (watcher._conn.info.backend_pid,))
        for _ in range(500):
            if not watcher.listening:
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert not watcher.listening
        assert watcher not in reactor.getReaders()  # raised KeyError when the tables were unsound
        watcher.check()
        assert watcher.listening and watcher in reactor.getReaders()
    finally:
        watcher.stopService()

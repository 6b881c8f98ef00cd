"""
PostgreSQL's asynchronous write transaction (C{storage.write()}) on
Twisted's real reactor: the wait for another node's write lock and the
commit run in worker threads, so the reactor goes on serving; one node's
writes run one after another; the cache and the listeners learn of
commits on the reactor thread.  (test_pgstorage.py has the rest of the
PostgreSQL provider; test_storage.py the contract on both providers.)
"""

from __future__ import annotations

import threading

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from devpi_tx.interfaces import IStorage, ITransaction
from devpi_tx.storage.errors import StorageUnavailable
from devpi_tx.storage.postgresql import PostgresStorage

pytestmark = pytest.mark.scaleout


@pytest.fixture
def nodes(pg_dsn):
    """
    C{nodes(n)}: n storages on the test's database whose C{write()} runs
    in Twisted's thread pool, as a server's; closed after the test.
    """
    opened = []

    def nodes(n: int = 2, **kw):
        made = [PostgresStorage(pg_dsn, create=True, run_in_thread=deferToThread, **kw) for _ in range(n)]
        opened.extend(made)
        return made

    yield nodes
    for s in opened:
        s.close()


def _on_reactor_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _hold_lock(
    storage: PostgresStorage, key: str, value: object
) -> tuple[threading.Event, threading.Event, Deferred]:
    """
    A synchronous transaction of C{storage} (another node) in a worker
    thread, holding the write lock until the returned C{release} is set.

    @return: C{(locked, release, done)}: set once the lock is held; set it
        to commit; fires after the commit.
    """
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with storage.transaction() as tx:
            tx.set(key, value)
            locked.set()
            release.wait(10)

    return locked, release, deferToThread(hold)


@pytest_twisted.ensureDeferred
async def test_provides_interfaces(nodes):
    (a,) = nodes(1)
    assert verifyObject(IStorage, a)
    async with a.write() as tx:
        assert verifyObject(ITransaction, tx)


@pytest_twisted.ensureDeferred
async def test_waiting_for_another_nodes_lock_does_not_block_the_reactor(nodes):
    a, b = nodes(2)
    heard: list[tuple[int, frozenset, bool]] = []
    a.subscribe(lambda serial, keys: heard.append((serial, keys, _on_reactor_thread())))
    locked, release, b_done = _hold_lock(b, "k", "from b")
    await deferToThread(locked.wait, 10)
    events: list[str] = []

    async def write_on_a() -> None:
        async with a.write() as tx:
            assert _on_reactor_thread()  # the body runs on the reactor
            events.append(f"body saw {tx.get('k')!r}")
            tx.set("k", "from a")
        events.append("a committed")

    a_done = ensureDeferred(write_on_a())
    reactor.callLater(0, events.append, "marker")
    await deferLater(reactor, 0.2, lambda: None)
    # The reactor ran the marker (and this test's timer) while A waited.
    assert events == ["marker"] and not a_done.called
    release.set()
    await b_done
    await a_done
    assert events == ["marker", "body saw 'from b'", "a committed"]
    assert (a.serial, a.get("k")) == (1, "from a")
    # B's commit reached A by the catch-up under the lock, then A's own;
    # each on the reactor thread.
    assert heard == [(0, frozenset({"k"}), True), (1, frozenset({"k"}), True)]


@pytest_twisted.ensureDeferred
async def test_one_nodes_writes_run_one_after_another(nodes):
    a, b = nodes(2)
    heard: list[int] = []
    a.subscribe(lambda serial, keys: heard.append(serial))

    async def increment() -> None:
        async with a.write() as tx:
            tx.set("n", (tx.get("n") or 0) + 1)

    results = await DeferredList([ensureDeferred(increment()) for _ in range(20)], consumeErrors=True)
    assert all(ok for ok, _ in results)
    assert (a.serial, a.get("n")) == (19, 20)  # no lost update
    assert heard == list(range(20))  # gapless, in order
    assert [b.changelog_entry(serial) for serial in (0, 19)] == [None, None]  # b has not caught up
    b.catch_up()
    assert [b.changelog_entry(s)["changes"] for s in range(20)] == [{"n": n} for n in range(1, 21)]
    assert not a._write_lock.locked


@pytest_twisted.ensureDeferred
async def test_an_exception_in_the_body_rolls_back_and_releases_the_lock(nodes):
    (a,) = nodes(1)
    async with a.write() as tx:
        tx.set("k", 1)
    with pytest.raises(RuntimeError, match="boom"):
        async with a.write() as tx:
            tx.set("k", 2)
            raise RuntimeError("boom")
    assert not a._write_lock.locked
    assert (a.serial, a.get("k")) == (0, 1)
    async with a.write() as tx:  # the connection is usable: no transaction left open
        tx.set("k", 3)
    assert (a.serial, a.get("k")) == (1, 3)
    async with a.write() as tx:
        tx.get("k")  # without changes: no serial
    assert a.serial == 1


@pytest_twisted.ensureDeferred
async def test_a_synchronous_transaction_is_refused_during_a_write(nodes):
    (a,) = nodes(1)
    async with a.write() as tx:
        tx.set("k", 1)
        with pytest.raises(RuntimeError, match="asynchronous write is in progress"):
            with a.transaction():
                pass
    with a.transaction() as tx:
        tx.set("k", 2)
    assert (a.serial, a.get("k")) == (1, 2)


@pytest_twisted.ensureDeferred
async def test_a_watcher_catch_up_during_a_write_is_not_applied_twice(nodes):
    """
    A catch-up on the reads' connection (the watcher's) while a write's
    begin waits in a thread applies B's entry first; the begin's copy of it
    is then skipped.
    """
    a, b = nodes(2)
    heard: list[tuple[int, bool]] = []
    a.subscribe(lambda serial, keys: heard.append((serial, _on_reactor_thread())))
    locked, release, b_done = _hold_lock(b, "k", "from b")
    await deferToThread(locked.wait, 10)

    async def write_on_a() -> None:
        async with a.write() as tx:
            tx.set("k", tx.get("k") + " then a")

    a_done = ensureDeferred(write_on_a())
    release.set()
    await b_done
    assert a.catch_up() in (0, 1)  # 0 if A's begin came back first
    await a_done
    assert heard == [(0, True), (1, True)]
    assert (a.serial, a.get("k")) == (1, "from b then a")


@pytest_twisted.ensureDeferred
async def test_the_database_down_is_storage_unavailable(nodes, pg_cluster):
    (a,) = nodes(1)
    async with a.write() as tx:
        tx.set("k", 1)
    pg_cluster.stop()
    try:
        with pytest.raises(StorageUnavailable, match="unavailable"):
            async with a.write() as tx:
                tx.set("k", 2)
        assert not a._write_lock.locked
    finally:
        pg_cluster.start()
    async with a.write() as tx:
        tx.set("k", 3)
    assert (a.serial, a.get("k")) == (1, 3)


@pytest_twisted.ensureDeferred
async def test_a_write_waiting_too_long_is_storage_unavailable(nodes):
    a, b = nodes(2, lock_timeout=0.2)
    locked, release, b_done = _hold_lock(b, "k", "from b")
    await deferToThread(locked.wait, 10)
    try:
        with pytest.raises(StorageUnavailable, match="busy"):
            async with a.write() as tx:
                tx.set("k", "from a")
    finally:
        release.set()
        await b_done
    async with a.write() as tx:
        assert tx.get("k") == "from b"
        tx.set("k", "from a")
    assert (a.serial, a.get("k")) == (1, "from a")


@pytest_twisted.ensureDeferred
async def test_a_cancelled_request_does_not_cancel_its_write(nodes):
    """
    Klein cancels a request's Deferred when its client goes away: the
    write it started still completes (as a synchronous one did), and the
    next write waits for it rather than take the connection from its
    thread.
    """
    a, b = nodes(2)
    locked, release, b_done = _hold_lock(b, "k", "from b")
    await deferToThread(locked.wait, 10)
    events: list[str] = []

    async def write_on_a(value: str) -> None:
        async with a.write() as tx:
            tx.set("k", f"{tx.get('k')}, {value}")
        events.append(value)

    first = ensureDeferred(write_on_a("first"))
    second = ensureDeferred(write_on_a("second"))
    first.cancel()
    second.cancel()
    release.set()
    await b_done
    await first
    await second
    assert events == ["first", "second"]
    assert (a.serial, a.get("k")) == (2, "from b, first, second")
    assert not a._write_lock.locked


@pytest_twisted.ensureDeferred
async def test_a_write_whose_connection_was_lost_commits_nothing(nodes):
    """
    The commit runs on the connection of the begin, under its lock, or not
    at all: never on a new connection, where each statement would commit
    on its own.
    """
    a, b = nodes(2)
    with pytest.raises(StorageUnavailable, match="connection was lost"):
        async with a.write() as tx:
            tx.set("k", 1)
            b._connection().execute("SELECT pg_terminate_backend(%s)", (a._writer.conn.info.backend_pid,))
            a._writer.conn.close()
    assert (a.serial, b.catch_up(), b.keys("")) == (-1, 0, [])
    async with a.write() as tx:
        tx.set("k", 2)
    assert (a.serial, a.get("k")) == (0, 2)


@pytest.mark.scaleout
@pytest_twisted.ensureDeferred
async def test_a_mirror_page_is_fresh_only_once_committed(pg_dsn):
    """
    A request for a project whose first fetch is waiting for the state's
    write lock joins that fetch: it neither finds the project fresh nor
    reads a page that is not committed yet.
    """
    import types

    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    from devpi_tx.mirror.pages import MirrorPages
    from devpi_tx.model.stages import Stage

    class Upstream:
        async def project_page(self, url, project, etag=None):
            return types.SimpleNamespace(links=[], versions=["1.0"], etag="e", serial=1)

    a = PostgresStorage(pg_dsn, create=True, run_in_thread=deferToThread)
    b = PostgresStorage(pg_dsn, run_in_thread=deferToThread)
    pages = MirrorPages(a, Upstream(), default_expiry=1800)
    stage = Stage("root/pypi", {"mirror_url": "http://upstream.example/simple/"}, is_mirror=True)
    locked, release, held = _hold_lock(b, "k", "b")
    try:
        await deferToThread(locked.wait, 10)
        first = ensureDeferred(pages.ensure(stage, "hello"))
        await deferLater(reactor, 0.2, lambda: None)
        second = ensureDeferred(pages.ensure(stage, "hello"))
        assert not first.called and not second.called  # both wait for the commit
        assert not pages.is_fresh(stage, "hello")
    finally:
        release.set()
        await held
    await first
    await second
    assert pages.cached("root/pypi", "hello")["versions"] == ["1.0"]
    a.close()
    b.close()


@pytest.mark.scaleout
@pytest_twisted.ensureDeferred
async def test_closing_waits_for_a_write_in_progress(pg_dsn):
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread

    a = PostgresStorage(pg_dsn, create=True, run_in_thread=deferToThread)
    b = PostgresStorage(pg_dsn, run_in_thread=deferToThread)
    locked, release, held = _hold_lock(b, "k", "b")
    await deferToThread(locked.wait, 10)

    async def write() -> None:
        async with a.write() as tx:
            tx.set("k", "a")

    writing = ensureDeferred(write())
    await deferLater(reactor, 0.2, lambda: None)
    closing = a.close()  # what the server's "state" service does when it stops
    assert closing is not None and not closing.called
    release.set()
    await held
    await writing  # the write completed, its connection not closed under it
    await closing
    assert a.serial == 1
    b.close()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT value FROM devpi_kv WHERE key = 'k'").fetchone()[0] == '"a"'


@pytest.mark.scaleout
@pytest_twisted.ensureDeferred
async def test_a_failed_catch_up_leaves_the_lock_free_for_other_nodes(pg_dsn, monkeypatch):
    from twisted.internet.threads import deferToThread

    a = PostgresStorage(pg_dsn, create=True, run_in_thread=deferToThread)
    b = PostgresStorage(pg_dsn, run_in_thread=deferToThread, lock_timeout=2)
    with b.transaction() as tx:
        tx.set("from/b", 1)  # a has that to catch up with

    def broken(*args):
        raise ValueError("a changelog row that does not decode")

    monkeypatch.setattr(a, "_apply_rows", broken)
    with pytest.raises(ValueError):
        async with a.write() as tx:
            tx.set("k", 1)
    # The counter is not left locked by a's connection: b writes at once.
    with b.transaction() as tx:
        tx.set("from/b", 2)
    assert b.serial == 1
    a.close()
    b.close()


@pytest.mark.scaleout
@pytest_twisted.ensureDeferred
async def test_a_servers_writes_wait_in_a_thread_of_their_own(pg_dsn, monkeypatch):
    # Not in the reactor's shared pool, where long jobs (uploads to object
    # storage) would hold them up while they hold every node's lock.
    from twisted.internet import reactor

    storage = PostgresStorage(pg_dsn, create=True, reactor=reactor)
    threads = []
    commit = storage._commit

    def recording(*args):
        threads.append(threading.current_thread().name)
        return commit(*args)

    monkeypatch.setattr(storage, "_commit", recording)
    for n in range(2):
        async with storage.write() as tx:
            tx.set("k", n)
    assert len(threads) == 2 and all("devpi-tx-state-writer" in name for name in threads)
    assert storage.get("k") == 1
    storage.close()
    assert storage._own_thread._pool is None  # stopped with the storage

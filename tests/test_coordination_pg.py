"""
L{PostgresCoordinator} on a real PostgreSQL database (tests/scaleout.py):
two coordinators stand for two nodes.  The blocking calls run inline (a
synchronous C{run_in_thread}) and the renewals on a L{task.Clock}, so
nothing here waits on the reactor.
"""

from __future__ import annotations

import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from devpi_tx.interfaces import ICoordinator
from devpi_tx.storage.coordination import FetchLeases, LeaderOnly, Lease
from devpi_tx.storage.pgcoordination import PostgresCoordinator

from .test_coordination import FakeJob, FakeStorage, result_of

pytestmark = pytest.mark.scaleout


def inline(f, *args, **kwargs):
    return maybeDeferred(f, *args, **kwargs)


@pytest.fixture
def nodes(pg_dsn):
    clock = Clock()
    made = [PostgresCoordinator(pg_dsn, clock, inline, holder=f"node-{name}:1") for name in ("a", "b")]
    result_of(made[0].setup())
    result_of(made[1].setup())  # idempotent
    yield clock, made[0], made[1]
    for coordinator in made:
        result_of(coordinator.close())


def rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT name, holder FROM devpi_leases ORDER BY name").fetchall()


def terminate(dsn: str, coordinator: PostgresCoordinator) -> None:
    """
    End the leaderships' connection of C{coordinator} from the server's
    side (as when its node dies), and wait until its backend is gone, its
    locks with it (a tiny poll: PostgreSQL ends it asynchronously).
    """
    pid = coordinator._session.info.backend_pid
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(500):
            if not conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} did not end")


def test_provides_the_interface(nodes):
    _, a, _ = nodes
    assert verifyObject(ICoordinator, a)
    assert a.shared is True


def test_a_lease_held_is_refused_to_another_node_until_released(nodes, pg_dsn):
    _, a, b = nodes
    lease = result_of(a.acquire("page:root/pypi/hello", 30))
    assert lease == Lease("page:root/pypi/hello", "node-a:1", 30)
    assert result_of(b.acquire("page:root/pypi/hello", 30)) is None
    assert result_of(b.acquire("page:root/pypi/other", 30)) is not None
    assert rows(pg_dsn) == [("page:root/pypi/hello", "node-a:1"), ("page:root/pypi/other", "node-b:1")]
    result_of(a.release(lease))
    assert a.held() == []
    assert result_of(b.acquire("page:root/pypi/hello", 30)).holder == "node-b:1"


def test_an_expired_lease_of_a_dead_node_is_taken_over(nodes, pg_dsn):
    _, a, b = nodes
    result_of(a.acquire("file:x", 30))
    # Node a died: nobody renews its lease, which runs out.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE devpi_leases SET expires = now() - interval '1 second'")
    lease = result_of(b.acquire("file:x", 30))
    assert lease is not None
    assert rows(pg_dsn) == [("file:x", "node-b:1")]
    # a's late release does not take b's lease away.
    result_of(a.release(Lease("file:x", "node-a:1", 30)))
    assert rows(pg_dsn) == [("file:x", "node-b:1")]


def test_a_held_lease_is_renewed_and_its_loss_noticed(nodes, pg_dsn):
    clock, a, b = nodes
    result_of(a.acquire("file:x", 30))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE devpi_leases SET expires = now() + interval '1 second'")
        clock.advance(10)  # a renews: 30 s again
        left = conn.execute("SELECT expires - now() FROM devpi_leases").fetchone()[0]
        assert left.total_seconds() > 20
        assert a.held() == ["file:x"]
        conn.execute("UPDATE devpi_leases SET expires = now() - interval '1 second'")
    assert result_of(b.acquire("file:x", 30)) is not None
    clock.advance(10)
    assert a.held() == []


def test_one_node_leads_and_the_other_takes_over_when_its_connection_dies(nodes, pg_dsn):
    clock, a, b = nodes
    assert result_of(a.lead("mirror-cache")) is True
    assert result_of(a.lead("mirror-cache")) is True  # still
    assert result_of(b.lead("mirror-cache")) is False
    assert result_of(b.lead("other-job")) is True
    # Node a's connection dies (the node crashed, or the network went).
    terminate(pg_dsn, a)
    assert result_of(b.lead("mirror-cache")) is True
    # a notices at its next check, and follows.
    assert result_of(a.lead("mirror-cache")) is False


def test_leader_only_services_on_two_nodes(nodes, pg_dsn):
    _, a, b = nodes
    # Each node's checks on a clock of its own.
    clock_a, clock_b = Clock(), Clock()
    job_a, job_b = FakeJob(), FakeJob()
    service_a = LeaderOnly(a, "mirror-cache", job_a, clock_a, retry=10)
    service_b = LeaderOnly(b, "mirror-cache", job_b, clock_b, retry=10)
    service_a.startService()
    service_b.startService()
    assert (bool(job_a.running), bool(job_b.running)) == (True, False)
    clock_b.advance(10)
    assert (bool(job_a.running), bool(job_b.running)) == (True, False)
    # Node a's connection dies: its lock with it.
    terminate(pg_dsn, a)
    clock_b.advance(10)
    assert job_b.running
    # a's next check finds its claim gone and stops its job.
    clock_a.advance(20)
    assert not job_a.running
    # b stops (resigning): a leads at its next check.
    result_of(service_b.stopService())
    assert not job_b.running
    clock_a.advance(10)
    assert job_a.running
    result_of(service_a.stopService())
    assert not job_a.running


def test_two_nodes_fetch_once_the_second_taking_the_firsts_commit(nodes):
    clock, a, b = nodes
    storage = FakeStorage()  # the state both nodes share
    leases_a = FetchLeases(a, storage, clock, poll=0.5, bound=10)
    leases_b = FetchLeases(b, storage, clock, poll=0.5, bound=10)
    upstream: list[str] = []
    fetching = Deferred()

    async def fetch_a():
        upstream.append("a")
        await fetching
        storage.commit("mirror/root/pypi/hello", "a's page")
        return "a's page"

    async def fetch_b():
        upstream.append("b")
        return "b's page"

    name = key = "mirror/root/pypi/hello"
    first = ensureDeferred(leases_a.run(name, key, lambda: storage.values.get(key), fetch_a))
    second = ensureDeferred(leases_b.run(name, key, lambda: storage.values.get(key), fetch_b))
    clock.advance(0.5)  # b tries again: still a's
    assert not second.called
    fetching.callback(None)
    assert result_of(first) == "a's page"
    clock.advance(0)
    assert result_of(second) == "a's page"
    assert upstream == ["a"]
    assert a.held() == [] and b.held() == []


@pytest_twisted.ensureDeferred
async def test_in_worker_threads_on_the_reactor(pg_dsn):
    from twisted.internet import reactor

    a = PostgresCoordinator(pg_dsn, reactor, deferToThread, holder="node-a:1")
    b = PostgresCoordinator(pg_dsn, reactor, deferToThread, holder="node-b:1")
    try:
        await a.setup()
        lease = await a.acquire("file:x", 30)
        assert lease is not None
        assert await b.acquire("file:x", 30) is None
        assert await a.lead("job") is True
        assert await b.lead("job") is False
        await a.release(lease)
        await a.resign("job")
        assert await b.lead("job") is True
    finally:
        await a.close()
        await b.close()

"""
The coordination of nodes sharing a state, without a database: the single
node's L{LocalCoordinator}, L{LeaderOnly} and L{FetchLeases} over a fake
coordinator whose answers the test gives, on a L{task.Clock}.
"""

from __future__ import annotations

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from devpi_tx.interfaces import ICoordinator
from devpi_tx.storage.coordination import (
    ACQUIRE_TIMEOUT,
    CoordinatorService,
    FetchLeases,
    LeaderOnly,
    Lease,
    LocalCoordinator,
    WhileLeading,
    holder_id,
)

from .conftest import result_of

__all__ = ["FakeJob", "result_of"]


class FakeJob(Service):
    """
    A background job's service that counts its starts and stops.
    """

    def __init__(self) -> None:
        self.starts = 0
        self.stops = 0

    def startService(self) -> None:
        super().startService()
        self.starts += 1

    def stopService(self):
        super().stopService()
        self.stops += 1


@implementer(ICoordinator)
@attrs.define
class FakeCoordinator:
    """
    A shared coordinator whose leadership and leases the test decides:
    C{leading} answers L{lead}; the names in C{held_elsewhere} are refused.
    """

    holder: str = "node-a:1"
    shared: bool = True
    leading: bool = False
    held_elsewhere: set = attrs.Factory(set)
    asked: list = attrs.Factory(list)
    released: list = attrs.Factory(list)
    resigned: list = attrs.Factory(list)
    #: When set, lead() answers with this Deferred (fired by the test).
    pending: Deferred | None = None

    def setup(self):
        return succeed(None)

    def acquire(self, name, ttl):
        self.asked.append(name)
        return succeed(None if name in self.held_elsewhere else Lease(name, self.holder, ttl))

    def release(self, lease):
        self.released.append(lease.name)
        return succeed(None)

    def lead(self, name):
        if self.pending is not None:
            return self.pending
        return succeed(self.leading)

    def resign(self, name):
        self.resigned.append(name)
        return succeed(None)

    def close(self):
        return succeed(None)


def test_providers_provide_the_interface():
    assert verifyObject(ICoordinator, LocalCoordinator())
    assert verifyObject(ICoordinator, FakeCoordinator())


def test_a_single_node_gets_every_lease_and_leads_at_once():
    local = LocalCoordinator("u:1")
    assert local.shared is False
    assert result_of(local.acquire("x", 30)) == Lease("x", "u:1", 30)
    assert result_of(local.acquire("x", 30)) is not None  # nobody else to refuse
    assert result_of(local.lead("job")) is True
    assert result_of(local.release(Lease("x", "u:1", 30))) is None
    assert result_of(local.close()) is None


def test_holder_is_the_uuid_and_the_pid():
    assert holder_id("abc", 42) == "abc:42"


def test_leader_only_on_a_single_node_starts_and_stops_with_it_and_schedules_nothing():
    clock, job = Clock(), FakeJob()
    service = LeaderOnly(LocalCoordinator(), "mirror-cache", job, clock)
    service.startService()
    assert job.running and job.starts == 1
    assert clock.getDelayedCalls() == []
    result_of(service.stopService())
    assert not job.running and job.stops == 1


def test_leader_only_starts_the_job_when_leadership_comes_and_stops_it_when_lost():
    clock, job, coordinator = Clock(), FakeJob(), FakeCoordinator()
    service = LeaderOnly(coordinator, "mirror-cache", job, clock, retry=10)
    service.startService()
    assert not job.running
    clock.advance(10)  # still another node's
    assert not job.running
    coordinator.leading = True
    clock.advance(9)
    assert not job.running
    clock.advance(1)  # the retry
    assert job.running and job.starts == 1
    clock.advance(10)  # still leading: nothing changes
    assert job.starts == 1
    coordinator.leading = False  # the claim died
    clock.advance(10)
    assert not job.running and job.stops == 1
    coordinator.leading = True
    clock.advance(10)
    assert job.running and job.starts == 2
    result_of(service.stopService())
    assert not job.running
    assert coordinator.resigned == ["mirror-cache"]
    assert clock.getDelayedCalls() == []


def test_leader_only_takes_a_failed_check_for_no_leadership_and_retries():
    clock, job, coordinator = Clock(), FakeJob(), FakeCoordinator(leading=True)
    service = LeaderOnly(coordinator, "mirror-cache", job, clock, retry=10)
    service.startService()
    assert job.running
    coordinator.pending = Deferred()
    clock.advance(10)
    coordinator.pending.errback(RuntimeError("the database went away"))
    assert not job.running
    coordinator.pending = None
    clock.advance(10)
    assert job.running
    result_of(service.stopService())


def test_leader_only_ignores_an_answer_arriving_after_it_stopped():
    clock, job, coordinator = Clock(), FakeJob(), FakeCoordinator()
    coordinator.pending = Deferred()
    service = LeaderOnly(coordinator, "mirror-cache", job, clock, retry=10)
    service.startService()
    result_of(service.stopService())
    coordinator.pending.callback(True)
    assert not job.running and job.starts == 0
    assert clock.getDelayedCalls() == []


def test_coordinator_service_sets_up_and_closes():
    calls = []

    @implementer(ICoordinator)
    class Recording(FakeCoordinator):
        def setup(self):
            calls.append("setup")
            return succeed(None)

        def close(self):
            calls.append("close")
            return succeed(None)

    service = CoordinatorService(Recording())
    service.startService()
    result_of(service.stopService())
    assert calls == ["setup", "close"]


class FakeStorage:
    """
    Just the storage's listeners, told of commits the test makes up.
    """

    def __init__(self) -> None:
        self.listeners = []
        self.values = {}

    def subscribe(self, listener) -> None:
        self.listeners.append(listener)

    def commit(self, key: str, value) -> None:
        self.values[key] = value
        for listener in self.listeners:
            listener(1, frozenset([key]))


def fetcher(result="fetched here"):
    calls = []

    async def fetch():
        calls.append(1)
        return result

    return calls, fetch


def test_fetch_leases_of_a_single_node_only_fetch():
    storage = FakeStorage()
    leases = FetchLeases(LocalCoordinator(), storage, Clock())
    calls, fetch = fetcher()
    assert result_of(ensureDeferred(leases.run("k", "k", lambda: None, fetch))) == "fetched here"
    assert calls == [1]
    assert storage.listeners == []  # not even listening


def test_fetch_under_a_lease_releases_it():
    coordinator = FakeCoordinator()
    leases = FetchLeases(coordinator, FakeStorage(), Clock())
    calls, fetch = fetcher()
    assert result_of(ensureDeferred(leases.run("k", "k", lambda: None, fetch))) == "fetched here"
    assert coordinator.released == ["k"]


def test_a_node_finding_the_lease_held_takes_the_other_nodes_commit():
    clock, storage = Clock(), FakeStorage()
    coordinator = FakeCoordinator(held_elsewhere={"k"})
    leases = FetchLeases(coordinator, storage, clock, poll=0.5, bound=10)
    calls, fetch = fetcher()
    d = ensureDeferred(leases.run("k", "k", lambda: storage.values.get("k"), fetch))
    clock.advance(0.5)
    clock.advance(0.5)  # tries the lease again: still held
    assert coordinator.asked == ["k"] * 3
    storage.commit("other", "x")  # another key: no matter
    storage.commit("k", "theirs")
    assert not d.called  # after the commit
    clock.advance(0)
    assert result_of(d) == "theirs"
    assert calls == [] and leases.taken_over == 1


def test_a_commit_of_the_key_that_is_not_the_result_keeps_waiting():
    clock, storage = Clock(), FakeStorage()
    coordinator = FakeCoordinator(held_elsewhere={"k"})
    leases = FetchLeases(coordinator, storage, clock, poll=0.5, bound=10)
    calls, fetch = fetcher()
    d = ensureDeferred(leases.run("k", "k", lambda: None, fetch))
    storage.commit("k", "not it")
    clock.advance(0)
    assert not d.called
    # The other node released without a result: this one takes the lease.
    coordinator.held_elsewhere.clear()
    clock.advance(0.5)
    assert result_of(d) == "fetched here"
    assert coordinator.released == ["k"]


def test_past_the_bound_a_node_fetches_itself():
    clock, storage = Clock(), FakeStorage()
    coordinator = FakeCoordinator(held_elsewhere={"k"})
    leases = FetchLeases(coordinator, storage, clock, poll=0.5, bound=2)
    calls, fetch = fetcher()
    d = ensureDeferred(leases.run("k", "k", lambda: None, fetch))
    clock.pump([0.5] * 3)
    assert not d.called
    clock.advance(0.5)
    assert result_of(d) == "fetched here"
    assert leases.waited_in_vain == 1
    assert coordinator.released == []  # never held
    assert clock.getDelayedCalls() == []


def test_a_failing_coordinator_does_not_stop_the_fetch():
    @implementer(ICoordinator)
    class Broken(FakeCoordinator):
        def acquire(self, name, ttl):
            raise RuntimeError("no database")

    leases = FetchLeases(Broken(), FakeStorage(), Clock())
    calls, fetch = fetcher()
    assert result_of(ensureDeferred(leases.run("k", "k", lambda: None, fetch))) == "fetched here"


def test_while_leading_forwards_calls_only_while_the_job_runs():
    class Cache:
        def __init__(self) -> None:
            self.stored_paths = []

        def stored(self, path, entry):
            self.stored_paths.append(path)
            return "evicting soon"

    clock, job, coordinator = Clock(), FakeJob(), FakeCoordinator()
    leader = LeaderOnly(coordinator, "mirror-cache", job, clock, retry=10)
    cache = Cache()
    gate = WhileLeading(leader, cache)
    leader.startService()
    assert gate.stored("a", {}) is None  # a follower: no eviction from here
    coordinator.leading = True
    clock.advance(10)
    assert gate.stored("b", {}) == "evicting soon"
    assert cache.stored_paths == ["b"]
    result_of(leader.stopService())


def test_a_coordinator_that_does_not_answer_does_not_hold_the_fetch():
    @implementer(ICoordinator)
    class Silent(FakeCoordinator):
        def acquire(self, name, ttl):
            return Deferred()  # the database does not answer

    clock = Clock()
    leases = FetchLeases(Silent(), FakeStorage(), clock)
    calls, fetch = fetcher()
    d = ensureDeferred(leases.run("k", "k", lambda: None, fetch))
    assert not d.called
    clock.advance(ACQUIRE_TIMEOUT)
    assert result_of(d) == "fetched here" and calls == [1]


class FailingJob(FakeJob):
    """
    A job whose first start fails after it marked itself running (the
    mirror cache reading the state during a database blip).
    """

    def startService(self) -> None:
        super().startService()
        if self.starts == 1:
            raise RuntimeError("the state is unavailable")


def test_a_job_that_fails_to_start_is_started_again_at_the_next_check():
    clock, job, coordinator = Clock(), FailingJob(), FakeCoordinator(leading=True)
    service = LeaderOnly(coordinator, "mirror-cache", job, clock, retry=10)
    service.startService()
    assert job.starts == 1 and not job.running
    assert coordinator.resigned == ["mirror-cache"]  # another node may do better
    clock.advance(10)
    assert job.starts == 2 and job.running
    result_of(service.stopService())

"""
Coordination between web nodes that share one state (L{ICoordinator}).

Several devpi-tx processes may serve one state (PostgreSQL) and one file
store.  Most of what they do needs no agreement, as the state's
transactions order their writes; two things do:

 - fetching from upstream: several nodes asked for the same mirrored page
   or file at once should fetch it once, the others taking the result
   from the state (L{FetchLeases}, over the coordinator's leases);
 - background jobs that change the state in bulk (the eviction of
   mirrored files) must run on one node at a time (L{LeaderOnly}, over
   the coordinator's leadership).

A single node uses L{LocalCoordinator}: every lease and leadership is
granted at once, and the callers skip the coordination altogether (its
C{shared} is false), so a lone server behaves and costs as before.
L{devpi_tx.storage.pgcoordination.PostgresCoordinator} coordinates the
nodes of a PostgreSQL state.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from ..interfaces import ICoordinator
from ..logs import logger
from .errors import first_line

log = logger("devpi_tx.coordination")

#: How long taking a fetch's lease may take before the fetch goes ahead
#: without one (a database that does not answer must not hold requests).
ACQUIRE_TIMEOUT = 5.0


def _why(failure_or_error) -> str:
    """
    One line for the logs: coordination fails when the database does, and
    a traceback per lease or check during an outage says nothing more.
    """
    error = getattr(failure_or_error, "value", failure_or_error)
    name = type(error).__name__
    return f"{name}: {first_line(error)}" if str(error).strip() else name


T = TypeVar("T")

#: What L{FetchLeases._acquire} returns when the coordinator failed.
_UNGUARDED = object()

#: Seconds between a leadership's checks (and a follower's tries to lead).
LEAD_RETRY = 10.0
#: Seconds a fetch's lease lasts unless renewed (it is, while held): a
#: dead node's lease is taken over this long after its last renewal.
FETCH_TTL = 30.0
#: Seconds a node waits at most for another node's fetch before it
#: fetches itself (the server's is a multiple of --request-timeout).
FETCH_BOUND = 60.0
#: Seconds between the tries of a node waiting on another node's fetch to
#: take the lease itself (the other may have finished without a commit:
#: a page that had not changed upstream).
FETCH_POLL = 0.5


def holder_id(uuid: str, pid: int | None = None) -> str:
    """
    A node's identity in leases: its uuid (.nodeinfo) and its pid, so
    that a restarted node is told from the process it replaced.
    """
    return f"{uuid}:{os.getpid() if pid is None else pid}"


@attrs.frozen
class Lease:
    """
    A held lease: what L{ICoordinator.acquire} grants and
    L{ICoordinator.release} gives back.
    """

    name: str
    holder: str
    ttl: float


@implementer(ICoordinator)
class LocalCoordinator:
    """
    The coordinator of a single node: there is no other node to agree
    with, so every lease is granted and every job is led, at once.
    """

    shared = False

    def __init__(self, holder: str = "local") -> None:
        self.holder = holder

    def setup(self) -> Deferred[None]:
        return succeed(None)

    def acquire(self, name: str, ttl: float) -> Deferred[Lease | None]:
        return succeed(Lease(name, self.holder, ttl))

    def release(self, lease: Lease) -> Deferred[None]:
        return succeed(None)

    def lead(self, name: str) -> Deferred[bool]:
        return succeed(True)

    def resign(self, name: str) -> Deferred[None]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)


class CoordinatorService(Service):
    """
    Sets the coordinator up when the server starts (a failure is logged:
    fetches then go ahead without leases, and jobs find no leader until
    the database answers) and closes it when the server stops.
    """

    def __init__(self, coordinator: ICoordinator) -> None:
        self.setName("coordinator")
        self.coordinator = coordinator

    def startService(self) -> None:
        super().startService()
        d = maybeDeferred(self.coordinator.setup)
        d.addErrback(lambda failure: log.warn("setting the coordination up failed: {why}", why=_why(failure)))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return maybeDeferred(self.coordinator.close).addCallback(lambda _: None)


class LeaderOnly(Service):
    """
    Run C{child} (a background job's service) only while this node leads
    C{job_name}: started when the leadership is gained, stopped when it is
    lost, and asked for again every C{retry} seconds on C{clock}, which
    also checks that a leadership held is still alive (the node's claim
    dies with its connection to the shared state).  Between a claim's loss
    and the next check two nodes may run the job for up to C{retry}
    seconds; the jobs wrapped tolerate that (each of their writes is a
    transaction).

    With a coordinator that is not shared (one node) the child starts and
    stops with this service, and nothing is scheduled.
    """

    def __init__(
        self,
        coordinator: ICoordinator,
        job_name: str,
        child: IService,
        clock: IReactorTime,
        retry: float = LEAD_RETRY,
    ) -> None:
        self.setName(f"leader-only:{job_name}")
        self.coordinator = coordinator
        self.job_name = job_name
        self.child = child
        self._clock = clock
        self._retry = retry
        self._next: IDelayedCall | None = None

    @property
    def leading(self) -> bool:
        return bool(self.child.running)

    def startService(self) -> None:
        super().startService()
        self._check()

    def _check(self) -> None:
        self._next = None
        job = self.job_name
        d = maybeDeferred(self.coordinator.lead, job)

        def failed(failure) -> bool:
            log.warn("leadership of {job}: asking failed: {why}", job=self.job_name, why=_why(failure))
            return False

        def decided(leading: bool) -> Deferred | None:
            if not self.running:  # stopped meanwhile
                return None
            if leading and not self.child.running:
                if self.coordinator.shared:
                    log.info("leading {job} ({holder})", job=self.job_name, holder=self.coordinator.holder)
                try:
                    self.child.startService()
                except Exception as e:
                    # Not started: give the leadership up (another node
                    # may do better) and ask again at the next check.
                    log.warn("{job} did not start: {why}", job=self.job_name, why=_why(e))
                    if self.child.running:
                        self._stop_child()
                    return maybeDeferred(self.coordinator.resign, self.job_name)
            elif not leading and self.child.running:
                log.warn("no longer leading {job}: stopping it", job=self.job_name)
                return self._stop_child()
            return None

        def again(_: object) -> None:
            if self.running and self.coordinator.shared and self._next is None:
                self._next = self._clock.callLater(self._retry, self._check)

        d.addErrback(failed).addCallback(decided)
        d.addErrback(lambda failure: log.failure("{job}: starting or stopping it failed", failure, job=job))
        d.addBoth(again)

    def _stop_child(self) -> Deferred:
        stopping = maybeDeferred(self.child.stopService)
        stopping.addErrback(lambda failure: log.failure("stopping {job} failed", failure, job=self.job_name))
        return stopping

    def stopService(self) -> Deferred[None]:
        """
        Stop the child if it runs, then give the leadership up.
        """
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        d: Deferred = self._stop_child() if self.child.running else succeed(None)
        if self.coordinator.shared:
            d.addCallback(lambda _: self.coordinator.resign(self.job_name))
            d.addErrback(lambda failure: log.failure("resigning {job} failed", failure, job=self.job_name))
        return d.addCallback(lambda _: None)


class WhileLeading:
    """
    Another object's methods, called only while C{leader} runs its job,
    and doing nothing (returning L{None}) on a follower: the mirror cache
    as the mirrored files see it (L{MirrorFiles.cache}), whose C{stored()}
    may start an eviction, which only the leading node runs.
    """

    def __init__(self, leader: LeaderOnly, target: object) -> None:
        self._leader = leader
        self._target = target

    def __getattr__(self, name: str):
        method = getattr(self._target, name)

        def call(*args, **kwargs):
            return method(*args, **kwargs) if self._leader.leading else None

        return call


class FetchLeases:
    """
    One fetch from upstream across the nodes: a node takes the lease named
    after what it fetches before fetching; a node that finds the lease held
    waits until the other's result is committed (a commit changing the
    given state key after which C{ready()} finds it), trying the lease
    again every C{poll} seconds (the holder may have finished without a
    commit, or died and its lease expired), and fetches itself after
    C{bound} seconds at most.

    With a coordinator that is not shared, L{run} is the fetch itself.
    """

    def __init__(
        self,
        coordinator: ICoordinator,
        storage,
        clock: IReactorTime,
        *,
        ttl: float = FETCH_TTL,
        poll: float = FETCH_POLL,
        bound: float = FETCH_BOUND,
    ) -> None:
        self.bound = bound
        self.coordinator = coordinator
        self.shared = coordinator.shared
        self._storage = storage
        self._clock = clock
        self._ttl = ttl
        self._poll = poll
        #: State key -> the waiters' wake-ups, called on a commit changing it.
        self._watching: dict[str, list[Callable[[], None]]] = {}
        #: Fetches taken from another node's result, and those done here
        #: after waiting in vain (metrics, tests).
        self.taken_over = 0
        self.waited_in_vain = 0
        if self.shared:
            storage.subscribe(self._committed)

    def _committed(self, serial: int, keys: frozenset[str]) -> None:
        if not self._watching:
            return
        for key in keys & self._watching.keys():
            for wake in self._watching.pop(key):
                wake()

    async def run(
        self,
        name: str,
        key: str,
        ready: Callable[[], T | None],
        fetch: Callable[[], Awaitable[T]],
        bound: float | None = None,
    ) -> T:
        """
        The result of C{fetch()} under the lease C{name}, or, when another
        node holds it, what C{ready()} returns once that node's commit
        changed C{key} and C{ready()} is no longer L{None} (C{ready} is
        asked only after such a commit: what was there before is what the
        other node is replacing).
        """
        if not self.shared:
            return await fetch()
        bound = self.bound if bound is None else bound
        started = self._clock.seconds()
        lease = await self._acquire(name)
        while lease is None:
            waited = self._clock.seconds() - started
            if waited >= bound:
                self.waited_in_vain += 1
                log.warn(
                    "{name}: another node held the lease for {waited:g} s; fetching here too",
                    name=name,
                    waited=waited,
                )
                return await fetch()
            # Woken by a commit of the key, or at the next try of the lease.
            if await self._commit_or_timeout(key, min(self._poll, bound - waited)):
                found = ready()
                if found is not None:
                    self.taken_over += 1
                    log.info("{name}: taken from another node's fetch", name=name)
                    return found
            lease = await self._acquire(name)
        if lease is _UNGUARDED:
            return await fetch()
        try:
            return await fetch()
        finally:
            try:
                await self.coordinator.release(lease)
            except Exception as e:
                log.warn("{name}: releasing the lease failed (it expires): {why}", name=name, why=_why(e))

    async def _acquire(self, name: str):
        """
        The lease, L{None} when another node holds it, or L{_UNGUARDED}
        when the coordinator failed: the fetch then goes ahead without one
        (the coordination saves fetches, it is never needed for a right
        answer).
        """
        try:
            asked = maybeDeferred(self.coordinator.acquire, name, self._ttl)
            return await asked.addTimeout(ACQUIRE_TIMEOUT, self._clock)
        except Exception as e:
            log.warn("{name}: taking the lease failed; fetching without it: {why}", name=name, why=_why(e))
            return _UNGUARDED

    def _commit_or_timeout(self, key: str, seconds: float) -> Deferred[bool]:
        """
        Fire with L{True} on the next commit changing C{key}, or with
        L{False} after C{seconds}.
        """
        d: Deferred[bool] = Deferred()

        def wake() -> None:
            # Called from within the commit: the waiter goes on after it.
            if call.active():
                call.cancel()
                self._clock.callLater(0, d.callback, True)

        def timed_out() -> None:
            waiting = self._watching.get(key, [])
            if wake in waiting:
                waiting.remove(wake)
                if not waiting:
                    del self._watching[key]
            d.callback(False)

        call = self._clock.callLater(seconds, timed_out)
        self._watching.setdefault(key, []).append(wake)
        return d


#: The state key of the uuid the nodes sharing a state answer with.
SHARED_UUID_KEY = "+nodes/uuid"


def shared_uuid(storage, own: str) -> str:
    """
    The uuid every node of a shared state answers with (C{X-Devpi-Uuid}):
    the first node's, kept in the state, so that clients and a replica
    following the nodes through a load balancer see one server, not one
    per node.  Each node's own uuid (C{.nodeinfo}) still names it among
    the nodes (L{holder_id}).
    """
    found = storage.get(SHARED_UUID_KEY)
    if isinstance(found, str):
        return found
    with storage.transaction() as tx:
        # Under the state's write lock: the first node to get here wins.
        found = tx.get(SHARED_UUID_KEY)
        if not isinstance(found, str):
            found = own
            tx.set(SHARED_UUID_KEY, own)
    return found

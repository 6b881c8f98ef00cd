"""
The throttle of failed password checks (L{devpi_tx.auth.throttle}), on a
L{Clock}: back-off, what each key blocks, known pairs, attempts in flight,
forgetting, bounded memory and the log.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from devpi_tx.auth.throttle import Limits, PasswordThrottle, Throttled


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_000_000)
    return clock


@pytest.fixture
def throttle(clock) -> PasswordThrottle:
    return PasswordThrottle(clock)


def fail(throttle, user="alice", address="10.0.0.1", times=1) -> None:
    for _ in range(times):
        assert throttle.attempt_allowed(user, address) is None
        throttle.failed(user, address)


def succeed(throttle, user="alice", address="10.0.0.1") -> None:
    assert throttle.attempt_allowed(user, address) is None
    throttle.succeeded(user, address)


@pytest.fixture
def events():
    seen: list[dict] = []

    def observe(event):
        if event.get("log_namespace") == "devpi_tx.auth.throttle":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_five_failures_start_a_back_off_that_doubles_to_a_cap(throttle, clock):
    fail(throttle, times=4)
    assert throttle.attempt_allowed("alice", "10.0.0.1") is None
    throttle.failed("alice", "10.0.0.1")
    waits = []
    for _ in range(9):
        wait = throttle.attempt_allowed("alice", "10.0.0.1")
        waits.append(wait)
        clock.advance(wait - 0.5)
        assert throttle.attempt_allowed("alice", "10.0.0.1") == 0.5
        clock.advance(0.5)
        fail(throttle)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_other_users_and_addresses_are_not_blocked_by_a_pair(throttle):
    fail(throttle, times=5)
    assert throttle.attempt_allowed("alice", "10.0.0.1") == 1
    assert throttle.attempt_allowed("alice", "10.0.0.2") is None
    throttle.failed("alice", "10.0.0.2")
    assert throttle.attempt_allowed("bob", "10.0.0.1") is None
    throttle.failed("bob", "10.0.0.1")


def test_failures_are_forgotten_after_a_quiet_period(throttle, clock):
    fail(throttle, times=5)
    clock.advance(599)
    fail(throttle)  # the sixth: 2 s
    assert throttle.attempt_allowed("alice", "10.0.0.1") == 2
    clock.advance(600)
    assert throttle.sizes()["pairs"] == 1
    fail(throttle, times=4)  # counted from zero again
    assert throttle.attempt_allowed("alice", "10.0.0.1") is None
    assert throttle.sizes()["pairs"] == 1


def test_success_clears_the_pair_but_not_the_address_or_the_user(throttle, clock):
    fail(throttle, times=4)
    succeed(throttle)
    fail(throttle, times=4)
    assert throttle.attempt_allowed("alice", "10.0.0.1") is None
    throttle.failed("alice", "10.0.0.1")
    assert throttle.attempt_allowed("alice", "10.0.0.1") == 1
    # The address has 9 failures, the user 9: both still count.
    clock.advance(1)
    for i in range(11):
        fail(throttle, user=f"name{i}", address="10.0.0.1")
    assert throttle.attempt_allowed("carol", "10.0.0.1") == 1


def test_an_address_trying_many_names_is_blocked(throttle):
    for i in range(20):
        fail(throttle, user=f"name{i}", address="10.0.0.9")
    assert throttle.attempt_allowed("someone", "10.0.0.9") == 1
    assert throttle.attempt_allowed("someone", "10.0.0.8") is None


def test_many_addresses_trying_one_name_block_new_addresses_not_known_ones(throttle):
    succeed(throttle, address="192.168.1.5")
    for i in range(20):
        fail(throttle, address=f"10.0.1.{i}")
    assert throttle.attempt_allowed("alice", "10.0.2.1") == 1
    assert throttle.attempt_allowed("bob", "10.0.2.1") is None
    throttle.failed("bob", "10.0.2.1")
    # Where alice logged in before, her password is still checked...
    succeed(throttle, address="192.168.1.5")
    # ...and that pair still has its own limit of five.
    fail(throttle, address="192.168.1.5", times=5)
    assert throttle.attempt_allowed("alice", "192.168.1.5") == 1


def test_a_known_pair_is_not_blocked_by_its_address(throttle):
    succeed(throttle, user="alice", address="10.9.9.9")
    for i in range(20):
        fail(throttle, user=f"name{i}", address="10.9.9.9")
    assert throttle.attempt_allowed("bob", "10.9.9.9") is not None
    succeed(throttle, user="alice", address="10.9.9.9")


def test_known_pairs_expire(throttle, clock):
    succeed(throttle, address="192.168.1.5")
    clock.advance(7 * 86400)
    for i in range(20):
        fail(throttle, address=f"10.0.1.{i}")
    assert throttle.attempt_allowed("alice", "192.168.1.5") == 1


def test_attempts_being_checked_count_as_failures(throttle):
    # A pair that has not failed may check several at once (parallel
    # uploads with the right password), up to what one address may.
    for _ in range(20):
        assert throttle.attempt_allowed("alice", "10.0.0.1") is None
    assert throttle.attempt_allowed("alice", "10.0.0.1") == 1
    for _ in range(20):
        throttle.succeeded("alice", "10.0.0.1")
    # Once the pair has failed, its checks in flight count too: two more
    # failures would reach its threshold of five.
    fail(throttle, times=3)
    assert throttle.attempt_allowed("alice", "10.0.0.1") is None
    assert throttle.attempt_allowed("alice", "10.0.0.1") is None
    assert throttle.attempt_allowed("alice", "10.0.0.1") == 1


def test_after_a_back_off_one_attempt_at_a_time(throttle, clock):
    fail(throttle, times=5)
    clock.advance(1)
    assert throttle.attempt_allowed("alice", "10.0.0.1") is None
    assert throttle.attempt_allowed("alice", "10.0.0.1") == 1
    throttle.failed("alice", "10.0.0.1")
    assert throttle.attempt_allowed("alice", "10.0.0.1") == 2


def test_memory_is_bounded(clock):
    throttle = PasswordThrottle(clock, Limits(max_entries=100))
    for i in range(1000):
        fail(throttle, user=f"name{i}", address=f"10.{i // 256}.{i % 256}.1")
        succeed(throttle, user=f"user{i}", address=f"10.{i // 256}.{i % 256}.2")
    sizes = throttle.sizes()
    assert max(sizes.values()) == 100
    # The most recent are kept.
    fail(throttle, user="name999", address="10.3.231.1", times=4)
    assert throttle.attempt_allowed("name999", "10.3.231.1") == 1


def test_throttling_is_logged_once_per_window(throttle, clock, events):
    fail(throttle, times=5)
    for _ in range(10):
        assert throttle.attempt_allowed("alice", "10.0.0.1") is not None
    assert len(events) == 1
    event = events[0]
    fields = (event["user"], event["client"], event["failures"], event["seconds"])
    assert fields == ("alice", "10.0.0.1", 5, 1)
    assert event["scope"] == "user and address"
    clock.advance(1)
    fail(throttle)
    assert [e["seconds"] for e in events] == [1, 2]


def test_failures_during_a_window_extend_it_without_logging_again(throttle, events):
    # A known pair is not held back by its address's throttle, but its
    # failures still count there.
    succeed(throttle, user="alice", address="10.9.9.9")
    for i in range(20):
        fail(throttle, user=f"name{i}", address="10.9.9.9")
    assert throttle.attempt_allowed("bob", "10.9.9.9") == 1
    fail(throttle, user="alice", address="10.9.9.9")
    assert throttle.attempt_allowed("bob", "10.9.9.9") == 2
    assert [(e["scope"], e["failures"]) for e in events] == [("address", 20)]


def test_refused_answers_are_held_up_to_a_second(throttle, clock):
    fired = []
    throttle.hold(0.25).addCallback(fired.append)
    throttle.hold(30).addCallback(fired.append)
    assert throttle.held == 2
    clock.advance(0.25)
    assert len(fired) == 1
    clock.advance(0.74)
    assert len(fired) == 1
    clock.advance(0.01)
    assert len(fired) == 2
    assert throttle.held == 0


def test_held_answers_are_bounded_and_released_when_cancelled(clock):
    throttle = PasswordThrottle(clock, Limits(max_held=2))
    first, second = throttle.hold(1), throttle.hold(1)
    third = []
    throttle.hold(1).addCallback(third.append)
    assert third == [None]  # answered at once
    first.cancel()
    first.addErrback(lambda f: None)
    assert throttle.held == 1
    fourth = throttle.hold(1)
    assert throttle.held == 2
    clock.advance(1)
    assert second.called and fourth.called
    assert throttle.held == 0
    assert clock.getDelayedCalls() == []


def test_throttled_seconds_are_whole_and_at_least_one():
    assert Throttled("alice", 0.2).seconds == 1
    assert Throttled("alice", 1.0).seconds == 1
    assert Throttled("alice", 1.01).seconds == 2

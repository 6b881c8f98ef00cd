"""
Throttling of password guessing: failed password checks are counted, and
after a few of them further password attempts are refused for a while
without running argon2 (a guessing storm must not cost CPU).

Failures are counted under three keys, each with its own threshold:

 - the (user, client address) pair: 5 failures;
 - the client address, whatever the user name: 20 (one address trying
   many names);
 - the user name, from whatever address: 20 (many addresses trying one
   name).

Once a key has reached its threshold, each further failure starts a
back-off: 1 s after the threshold's failure, doubling with every failure
after it, at most 60 s.  When a back-off has run out one attempt at a time
is let through; a failure starts the next, longer one.  A key with no
failure for 10 minutes is forgotten.  Attempts still being checked count
as failures until they are decided, so that a client cannot start a
thousand checks at once before the first has failed (for a user and
address that have not failed, only against the address's and the user's
thresholds: parallel uploads with the right password are not refused).

Whom each key blocks:

 - the pair's throttle always applies;
 - the address's and the user's throttles do not apply to a pair that
   logged in with a password within the last 7 days (a I{known} pair).
   An attacker guessing one user's password from elsewhere, or spraying
   names from a shared address, cannot lock that user out of their usual
   address; the known pair is still held to its own 5-failure limit, so it
   is no way around the throttle (an attacker needs the password to make
   a pair known).  A user logging in from a new address while their name
   is under attack waits out the back-off (at most 60 s at a time).

A refused attempt's answer is held for up to a second (L{hold}; at most
1,000 at once, past that they are answered at once): a guessing client
that waits for each answer, as most do, then sends a few requests a second
instead of as many as the server can answer, which would slow everyone
else's requests down almost as much as the password checks did.

Login tokens (C{X-Devpi-Auth} or Basic with a token) are checked by their
signature, never by argon2, and never pass through this throttle, so a
guessing storm cannot stop token-based use (devpi-client after
C{devpi login}, which then sends its token).

Behind a reverse proxy every client has the proxy's address, so the
address key counts everyone's failures together; known pairs still work.

Memory is bounded: each key kind keeps at most C{max_entries} records
(and as many known pairs), the least recently used dropped first.

This module knows nothing of HTTP: the caller asks L{attempt_allowed}
before checking a password and reports the outcome with L{failed} or
L{succeeded}.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from ..logs import logger

log = logger("devpi_tx.auth.throttle")


@attrs.frozen
class Limits:
    """
    The throttle's thresholds and times (seconds).

    @ivar pair: failures of one (user, address) before its back-off.
    @ivar address: failures from one address, any user.
    @ivar user: failures for one user, any address.
    @ivar base: the first back-off, doubled with each failure after it.
    @ivar cap: the longest back-off.
    @ivar quiet: a key without failures for this long is forgotten.
    @ivar known: how long a successful password login keeps its pair known.
    @ivar max_entries: records kept per key kind (and known pairs).
    @ivar hold: the longest a refused attempt's answer is held.
    @ivar max_held: answers held at once.
    """

    pair: int = 5
    address: int = 20
    user: int = 20
    base: float = 1.0
    cap: float = 60.0
    quiet: float = 600.0
    known: float = 7 * 86400.0
    max_entries: int = 10000
    hold: float = 1.0
    max_held: int = 1000


class Throttled(Exception):
    """
    A password attempt refused without being checked.

    @ivar user: the user name the attempt named.
    @ivar retry_after: seconds until an attempt may be let through.
    """

    def __init__(self, user: str, retry_after: float) -> None:
        super().__init__(f"password attempts for {user!r} throttled for {retry_after:.1f} s")
        self.user = user
        self.retry_after = retry_after

    @property
    def seconds(self) -> int:
        """
        The wait in whole seconds, at least 1 (for C{Retry-After}).
        """
        return max(1, math.ceil(self.retry_after))


@attrs.define(slots=True)
class _Record:
    failures: int = 0
    pending: int = 0
    last_failure: float = 0.0
    blocked_until: float = 0.0

    def stale(self, now: float, quiet: float) -> bool:
        return self.pending == 0 and now >= max(self.last_failure + quiet, self.blocked_until)

    def wait(self, now: float, threshold: int, base: float, count_pending: bool = True) -> float:
        if self.blocked_until > now:
            return self.blocked_until - now
        # Attempts being checked count as failures: one at a time past the
        # threshold.
        if count_pending and self.pending >= max(1, threshold - self.failures):
            return base
        return 0.0


class _Counts:
    """
    The records of one key kind, least recently used first.
    """

    def __init__(self, scope: str, threshold: int, limits: Limits) -> None:
        self.scope = scope
        self.threshold = threshold
        self._limits = limits
        self._records: OrderedDict[Hashable, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def find(self, key: Hashable, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is None:
            return None
        if record.stale(now, self._limits.quiet):
            del self._records[key]
            return None
        self._records.move_to_end(key)
        return record

    def get(self, key: Hashable, now: float) -> _Record:
        record = self.find(key, now)
        if record is None:
            record = self._records[key] = _Record()
            while len(self._records) > self._limits.max_entries:
                self._records.popitem(last=False)
        return record

    def drop_if_clear(self, key: Hashable) -> None:
        record = self._records.get(key)
        if record is not None and record.pending == 0 and record.failures == 0:
            del self._records[key]


class PasswordThrottle:
    """
    Counts failed password checks per (user, address), address and user,
    and says when an attempt must wait (see the module's description).

    @param clock: what time it is (C{seconds()}), and where held answers
        wait (C{callLater}).
    """

    def __init__(self, clock: IReactorTime, limits: Limits | None = None) -> None:
        self.clock = clock
        self.limits = limits = limits or Limits()
        self._pairs = _Counts("user and address", limits.pair, limits)
        self._addresses = _Counts("address", limits.address, limits)
        self._users = _Counts("user", limits.user, limits)
        #: (user, address) -> until when the pair is known.
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        #: Refused attempts whose answers are being held.
        self.held = 0

    def _keys(self, user: str, address: str) -> list[tuple[_Counts, Hashable]]:
        return [(self._pairs, (user, address)), (self._addresses, address), (self._users, user)]

    def _is_known(self, user: str, address: str, now: float) -> bool:
        until = self._known.get((user, address))
        if until is None:
            return False
        if until <= now:
            del self._known[(user, address)]
            return False
        return True

    def attempt_allowed(self, user: str, address: str) -> float | None:
        """
        May a password for C{user} from C{address} be checked now?

        @return: L{None} if it may (then report the outcome with
            L{failed} or L{succeeded}, exactly once), else the seconds to
            wait.
        """
        now = self.clock.seconds()
        known = self._is_known(user, address, now)
        wait = 0.0
        for counts, key in self._keys(user, address):
            if known and counts is not self._pairs:
                continue
            record = counts.find(key, now)
            if record is not None:
                # A pair that has not failed may check several passwords at
                # once (parallel uploads with the right one); the address's
                # and the user's counts still bound what is in flight.
                count_pending = counts is not self._pairs or record.failures > 0
                wait = max(wait, record.wait(now, counts.threshold, self.limits.base, count_pending))
        if wait > 0:
            return wait
        for counts, key in self._keys(user, address):
            counts.get(key, now).pending += 1
        return None

    def failed(self, user: str, address: str) -> None:
        """
        A password allowed by L{attempt_allowed} was wrong (or the user
        does not exist).
        """
        now = self.clock.seconds()
        limits = self.limits
        for counts, key in self._keys(user, address):
            record = counts.get(key, now)
            record.pending = max(0, record.pending - 1)
            record.failures += 1
            record.last_failure = now
            beyond = record.failures - counts.threshold
            if beyond < 0:
                continue
            seconds = min(limits.cap, limits.base * 2 ** min(beyond, 32))
            starting = record.blocked_until <= now
            record.blocked_until = max(record.blocked_until, now + seconds)
            if starting:
                log.info(
                    "password attempts throttled for {seconds:g} s after {failures} failures"
                    " per {scope} (user {user!r}, client {client})",
                    scope=counts.scope,
                    user=user,
                    client=address,
                    failures=record.failures,
                    seconds=seconds,
                )

    def succeeded(self, user: str, address: str) -> None:
        """
        A password allowed by L{attempt_allowed} was right: the pair's
        failures are forgotten and the pair becomes known.  The address's
        and the user's failures stay (a right password for one name says
        nothing about guesses at others).
        """
        now = self.clock.seconds()
        for counts, key in self._keys(user, address):
            record = counts.find(key, now)
            if record is None:
                continue
            record.pending = max(0, record.pending - 1)
            if counts is self._pairs:
                record.failures = 0
                record.blocked_until = 0.0
            counts.drop_if_clear(key)
        self._known[(user, address)] = now + self.limits.known
        self._known.move_to_end((user, address))
        while len(self._known) > self.limits.max_entries:
            self._known.popitem(last=False)

    def hold(self, wait: float) -> Deferred[None]:
        """
        Fires when the answer to an attempt refused for C{wait} seconds may
        be sent: after C{wait} or C{limits.hold} seconds, whichever is
        less, or at once if C{limits.max_held} answers are held already.
        """
        if self.held >= self.limits.max_held or self.limits.hold <= 0:
            return succeed(None)
        self.held += 1

        def release(result):
            self.held -= 1
            return result

        return deferLater(self.clock, min(wait, self.limits.hold), lambda: None).addBoth(release)

    def sizes(self) -> dict[str, int]:
        """
        How many records each key kind holds (for tests and status).
        """
        return {
            "pairs": len(self._pairs),
            "addresses": len(self._addresses),
            "users": len(self._users),
            "known": len(self._known),
        }

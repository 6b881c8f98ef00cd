"""
Password hashing and checking without stalling the reactor or paying
argon2's cost on every request.

argon2id takes a tenth of a second or more of CPU per check, on purpose.
twine sends Basic credentials with every request, so each check runs in a
thread and a verified credential is remembered for a few minutes under an
HMAC of (user, password hash, password) with a per-process key: the
password is never kept, and a changed password (a new hash) can never hit
an old entry.  Concurrent checks of the same credential share one
computation, and at most C{max_parallel} hashes run at once so that a burst
of wrong passwords cannot eat the machine's memory (each hash uses 64 MiB).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThread

from ..singleflight import SingleFlight


def default_hasher() -> PasswordHasher:
    """
    argon2id with m=64 MiB, t=3, p=4: the parameters devpi-server uses, so
    hashes move between the two servers unchanged.
    """
    return PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4)


def fast_hasher() -> PasswordHasher:
    """
    Cheap parameters, for tests only.
    """
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class PasswordChecker:
    """
    Hash and verify passwords off the reactor thread, with a short-lived
    cache of successful checks.
    """

    def __init__(
        self,
        hasher: PasswordHasher | None = None,
        *,
        ttl: float = 300.0,
        max_entries: int = 10000,
        max_parallel: int = 2,
        run_in_thread: Callable[..., Deferred] = deferToThread,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hasher = hasher or default_hasher()
        self._key = os.urandom(32)
        self._ttl = ttl
        self._max_entries = max_entries
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        #: Checks under way: the same credentials at once are checked once.
        self._pending: SingleFlight[bool] = SingleFlight()
        self._limit = DeferredSemaphore(max_parallel)
        self._run = run_in_thread
        self._clock = clock

    def _cache_key(self, username: str, pwhash: str, password: str) -> bytes:
        message = "\0".join([username, pwhash, password]).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def hash(self, password: str) -> str:
        return await self._limit.run(self._run, self._hasher.hash, password)

    def _verify_sync(self, pwhash: str, password: str) -> bool:
        try:
            return self._hasher.verify(pwhash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, username: str, pwhash: str | None, password: str) -> bool:
        if not pwhash:
            return False
        key = self._cache_key(username, pwhash, password)
        expires = self._verified.get(key)
        now = self._clock()
        if expires is not None:
            if expires > now:
                return True
            del self._verified[key]
        return await self._pending.run(key, lambda: self._check(key, pwhash, password))

    async def _check(self, key: bytes, pwhash: str, password: str) -> bool:
        ok = await self._limit.run(self._run, self._verify_sync, pwhash, password)
        if ok:
            self._remember(key)
        return ok

    def _remember(self, key: bytes) -> None:
        self._verified[key] = self._clock() + self._ttl
        self._verified.move_to_end(key)
        while len(self._verified) > self._max_entries:
            self._verified.popitem(last=False)

    def forget_all(self) -> None:
        """
        Drop every remembered credential (after a password change; entries
        for an old hash could never match again anyway, this frees them).
        """
        self._verified.clear()

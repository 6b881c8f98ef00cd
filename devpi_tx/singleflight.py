"""
One run of a piece of asynchronous work per key at a time.

Many requests ask for the same thing at once: a mirrored page, a wheel's
metadata, a rendered list, one password check.  The first caller does the
work; callers that come while it runs wait for it and get its result (or
its exception) instead of doing the work again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._waiting: dict[Hashable, list[Deferred[T]]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._waiting

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        """
        The outcome of C{work()}, or of the run of it for C{key} that is
        under way.
        """
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiter: Deferred[T] = Deferred()
            waiting.append(waiter)
            return await waiter
        self._waiting[key] = []
        try:
            result = await work()
        except BaseException as exc:
            for waiter in self._waiting.pop(key):
                waiter.errback(exc)
            raise
        for waiter in self._waiting.pop(key):
            waiter.callback(result)
        return result

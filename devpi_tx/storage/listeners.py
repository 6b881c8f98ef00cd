"""
How an L{devpi_tx.interfaces.IStorage} provider tells its listeners of a
commit (its own, or another node's it caught up with).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.python.failure import Failure

from ..logs import logger

log = logger("devpi_tx.storage")

Listener = Callable[[int, frozenset[str]], object]


def notify(listeners: Iterable[Listener], serial: int, keys: frozenset[str]) -> None:
    """
    Call each listener with the serial and the changed keys.  One that
    raises is logged and the others are still told: a cache that failed to
    drop what changed must neither keep the others stale nor turn a commit
    that stands into an error for whoever made it.
    """
    for listener in list(listeners):
        try:
            listener(serial, keys)
        except Exception:
            log.failure("a listener of commit {serial} failed", Failure(), serial=serial)

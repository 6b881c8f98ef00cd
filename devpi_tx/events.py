"""
Events after an upload, a removal or a change of an index, for
L{IEventListener} plugins (webhooks, say).

The server calls L{EventDispatcher.emit} after the transaction committed;
each listener is then called on the reactor in a later turn (never within
the request: the answer is sent first), and what it returns (a Deferred, a
coroutine) runs on its own: a failure is logged, and one still running
after L{EventDispatcher.slow_after} seconds is logged as slow.  Nothing
waits for a listener, and none can change the request's answer.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from twisted.internet.defer import Deferred, maybeDeferred

from .interfaces import IEventListener
from .logs import logger

log = logger("devpi_tx.events")


@attrs.frozen
class UploadEvent:
    """
    A file was uploaded: C{rel} is C{"releasefile"}, C{"doczip"} or
    C{"toxresult"}; C{link} is its link (C{basename}, C{sha256}, C{size},
    C{relpath}).
    """

    stage: str
    project: str
    version: str
    rel: str
    link: dict
    user: str | None = None


@attrs.frozen
class RemoveEvent:
    """
    Something of an index was removed: C{what} is C{"project"},
    C{"version"}, C{"file"} or C{"yank"}/C{"unyank"}; C{version} and
    C{relpath} when they apply.
    """

    stage: str
    what: str
    project: str | None = None
    version: str | None = None
    relpath: str | None = None
    user: str | None = None


@attrs.frozen
class IndexChangeEvent:
    """
    An index was C{"created"}, C{"modified"} or C{"deleted"}; its
    configuration before (L{None} on creation) and after (L{None} once
    deleted).
    """

    stage: str
    action: str
    old: dict | None = None
    new: dict | None = None
    user: str | None = None


_METHODS = {UploadEvent: "on_upload", RemoveEvent: "on_remove", IndexChangeEvent: "on_index_change"}


class EventDispatcher:
    """
    Calls the listeners of each event later on C{reactor}.

    @ivar running: the listener calls not finished yet.
    """

    slow_after = 60.0

    def __init__(self, listeners: Iterable[IEventListener], reactor) -> None:
        self.listeners = tuple(listeners)
        self.reactor = reactor
        self.running: set[Deferred] = set()

    def emit(self, event) -> None:
        """
        Hand C{event} to every listener in a later turn of the reactor;
        return at once.
        """
        method = _METHODS[type(event)]
        for listener in self.listeners:
            self.reactor.callLater(0, self._call, listener, method, event)

    def _call(self, listener: IEventListener, method: str, event) -> None:
        name = getattr(listener, "name", type(listener).__name__)

        # (A coroutine returned is awaited: maybeDeferred wraps it.)
        d = maybeDeferred(getattr(listener, method), event)
        slow: list = []
        finished: list = []

        def done(result):
            finished.append(True)
            self.running.discard(d)
            if slow and slow[0].active():
                slow[0].cancel()
            return result

        d.addBoth(done).addErrback(self._failed, name, method, event)
        if not finished:
            self.running.add(d)
            slow.append(self.reactor.callLater(self.slow_after, self._slow, name, method, event))

    def _failed(self, failure, name: str, method: str, event) -> None:
        log.failure(
            "event listener {name!r}: {method} failed for {stage}",
            failure,
            name=name,
            method=method,
            stage=event.stage,
        )

    def _slow(self, name: str, method: str, event) -> None:
        log.warn(
            "event listener {name!r}: {method} for {stage} still running after {seconds} s",
            name=name,
            method=method,
            stage=event.stage,
            seconds=self.slow_after,
        )


class NoEvents(EventDispatcher):
    """
    A dispatcher without listeners (what a context has by default).
    """

    def __init__(self) -> None:
        super().__init__((), None)

    def emit(self, event) -> None:
        return None

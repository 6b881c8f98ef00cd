"""
Read-your-writes across the nodes that share one state: every answer
carries the serial of the state it was computed from (C{X-Devpi-Serial});
a client, or a load balancer, that sends that serial back with its next
request gets an answer from a state at least that new, whichever node it
reaches.  A node behind the one the client wrote to waits until the commit
reaches it (the storage tells every node of the others' commits), up to
C{--serial-wait} seconds; past that it answers from what it has, and logs
it.  A request without the header, or with a serial this node has, waits
for nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.web.iweb import IRequest

from ..logs import logger

log = logger("devpi_tx.site")

HEADER = b"x-devpi-serial"


class SerialWait:
    """
    Holds a request back until the state has reached the serial it asks
    for (L{wanted}).

    @param current: the serial this node's state is at.
    @param wait_for: C{wait_for(serial, timeout)}, a Deferred firing with
        whether the state reached C{serial} within C{timeout} seconds (the
        L{ChangeFeed}'s; a replica's sync service's on a replica).
    @param bound: seconds a request waits at most (C{--serial-wait}); 0: never.
    """

    def __init__(
        self, current: Callable[[], int], wait_for: Callable[[int, float], Deferred[bool]], bound: float
    ) -> None:
        self._current = current
        self._wait_for = wait_for
        self.bound = bound
        #: Requests that waited, and those served at the bound (metrics, tests).
        self.waited = 0
        self.gave_up = 0

    @classmethod
    def of(cls, context) -> SerialWait:
        """
        The wait of a server (L{ServerContext}): for its changelog feed, or
        on a replica for its sync service (which applies the primary's).
        """
        replica = context.replica
        wait_for = replica.sync.wait_for_serial if replica is not None else context.changefeed.wait_for
        return cls(lambda: context.storage.serial, wait_for, context.config.serial_wait)

    def wanted(self, request: IRequest) -> Deferred[None] | None:
        """
        L{None} when the request may be handled now (no header, a serial
        this node has, a malformed one, or waiting disabled); else a
        Deferred firing once it may, which cancelling (the client went)
        stops waiting.
        """
        if self.bound <= 0:
            return None
        values = request.requestHeaders.getRawHeaders(HEADER)
        if not values:
            return None
        raw = values[-1].strip()
        if not raw.isdigit() or len(raw) > 18:
            return None
        serial = int(raw)
        current = self._current()
        if serial <= current:
            return None
        self.waited += 1
        path = request.path.decode("latin-1")

        def reached(ok: bool) -> None:
            if not ok:
                self.gave_up += 1
                log.warn(
                    "{path}: the client wrote serial {serial}, this node has {current} after "
                    "{bound:g} s; answering from it",
                    path=path,
                    serial=serial,
                    current=self._current(),
                    bound=self.bound,
                )

        def failed(failure) -> None:
            if failure.check(CancelledError):
                return
            log.failure("{path}: waiting for serial {serial} failed", failure, path=path, serial=serial)

        return self._wait_for(serial, self.bound).addCallbacks(reached, failed)

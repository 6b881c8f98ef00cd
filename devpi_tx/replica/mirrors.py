"""
A replica's mirror pages: the primary fetches them from upstream and
commits them, the replica follows.

A replica never commits anything of its own (its serials are the
primary's), so when one of its mirror pages is out of date it asks the
primary for the same page (a C{HEAD}: the primary brings its page up to
date as for any client, committing what changed) and then waits until it
has applied the serial the primary answered with.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred

from ..mirror.errors import UpstreamError, UpstreamTimeout
from ..mirror.http import UpstreamHTTP, ask_upstream
from ..model.stages import Stage
from .primary import PrimaryLink


def via_primary(
    http: UpstreamHTTP,
    primary: PrimaryLink,
    wait_for_serial: Callable[[int, float], Deferred[bool]],
    timeout: float,
) -> Callable[[Stage, str], object]:
    """
    The C{via_primary} of a replica's L{devpi_tx.mirror.pages.MirrorPages}.
    """

    async def refresh(stage: Stage, project: str) -> bool:
        url = primary.url_for(f"{stage.name}/+simple/{project}/")
        _, response = await ask_upstream(
            http, "HEAD", url, timeout=timeout, headers=primary.headers(Accept="text/html")
        )
        if response.code == 404:
            return False
        if response.code != 200:
            raise UpstreamError(f"the primary answered {response.code} for {stage.name}/{project}")
        found = response.headers.getRawHeaders("x-devpi-serial") or ["-1"]
        try:
            serial = int(found[0])
        except ValueError:
            raise UpstreamError(f"the primary sent a bad X-Devpi-Serial: {found[0]!r}") from None
        if not await wait_for_serial(serial, timeout):
            # An UpstreamTimeout: a 504 when nothing is cached.
            raise UpstreamTimeout(
                f"this replica did not reach the primary's serial {serial} within {timeout:g} s"
            )
        return True

    return refresh

"""
The replication routes of a primary: C{GET /+changelog/<n>} (one entry)
and C{GET /+changelog/<n>-} (a stream of entries from C{n}), answered by
the L{ChangeFeed} of the context.

Only a primary answers them, and only to a replica: the request is checked
in devpi-server's order (the role; the C{X-DEVPI-EXPECTED-PRIMARY-ID}
header and the uuid it expects; the replica's Bearer token, see
L{devpi_tx.auth.replicatokens}), each failure with devpi's status and
message.
"""

from __future__ import annotations

import re

from twisted.web.iweb import IRequest

from ..auth.replicatokens import WRONG, ReplicaAuthError
from .negotiation import has_flag
from .render import error
from .router import app

DISABLED = "Replication protocol disabled"
NO_EXPECTED_ID = "replica sent no X-DEVPI-EXPECTED-PRIMARY-ID or X-DEVPI-EXPECTED-MASTER-ID header"
NO_IDENTITY = "Replication endpoint requires a replica identity."

_SPEC = re.compile(r"(0|[1-9][0-9]{0,18})(-?)")


class ChangelogRoutes:
    """
    Mixin of L{devpi_tx.web.api.DevpiAPI} with the replication routes.
    """

    ctx: object

    def replica_identity(self, request: IRequest) -> tuple[str | None, bytes | None]:
        """
        Who is asking for the changelog: (the replica's uuid, None), or
        (None, the refusal to answer with).
        """
        if self.ctx.config.effective_role != "primary":
            return None, error(request, 403, DISABLED)
        expected = request.getHeader("x-devpi-expected-primary-id")
        if expected is None:
            expected = request.getHeader("x-devpi-expected-master-id")
        if expected is None:
            return None, error(request, 400, NO_EXPECTED_ID)
        if expected and expected != self.ctx.uuid:
            return None, error(
                request, 400, f"expected {self.ctx.uuid} as primary_uuid, replica sent {expected}"
            )
        scheme, _, token = (request.getHeader("authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, error(request, 403, NO_IDENTITY)
        try:
            replica = self.ctx.replica_tokens.check(token.strip())
        except ReplicaAuthError as exc:
            return None, error(request, 403, exc.message)
        claimed = request.getHeader("x-devpi-replica-uuid")
        if claimed is not None and claimed != replica:
            # A token another replica was given.
            return None, error(request, 403, WRONG)
        return replica, None

    @app.route("/+changelog/<spec>", methods=["GET"])
    async def changelog(self, request: IRequest, spec: str):
        replica, refusal = self.replica_identity(request)
        if refusal is not None:
            return refusal
        match = _SPEC.fullmatch(spec)
        if match is None:
            return error(request, 400, f"not a serial: {spec!r} (expected <n> or <n>-)")
        return await self.ctx.changefeed.answer(
            request,
            int(match.group(1)),
            stream=bool(match.group(2)),
            initial=has_flag(request, "initial_fetch"),
            replica=replica,
        )

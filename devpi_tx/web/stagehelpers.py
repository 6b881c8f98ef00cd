"""
What the route mixins of private indexes share: the index configuration,
the chain's plan for a project (both memoised until the index structure
changes), bringing mirrors up to date, and dropping unwanted blobs.

The mixins (L{devpi_tx.web.releases.ReleaseRoutes} composes them) end up
in L{devpi_tx.web.api.DevpiAPI}, which gives them C{self.ctx} (the
L{ServerContext}), C{self.auth} and the helpers C{outside_url} and
C{deny}.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..model import indexes, stages
from ..model.errors import NotFound


class StageHelpers:
    """
    Base of the route mixins of private indexes.
    """

    ctx: object
    auth: object

    def _stage(self, user: str, index: str) -> dict:
        """
        The configuration of an index (shared: read it, do not change it).

        @raise NotFound: there is no such index.
        """
        config = self._index_config(user, index)
        if config is None:
            raise NotFound(f"index '{user}/{index}' does not exist")
        return config

    def _index_config(self, user: str, index: str) -> dict | None:
        return self.ctx.memo.get(
            ("index", user, index), lambda: indexes.get_index(self.ctx.storage, user, index)
        )

    def _readonly(self, config: dict) -> bool:
        """
        Whether an index (by its configuration) refuses uploads and pushes.
        """
        return self.ctx.registry.for_config(config).readonly

    def _plan(self, stage: str, project: str) -> stages.Plan:
        return self.ctx.memo.get(
            ("plan", stage, project),
            lambda: stages.plan(self.ctx.storage, self._resolution_order(stage), project),
        )

    def _resolution_order(self, stage: str) -> list[stages.Stage]:
        # Per index, not per project: a cold project's plan does not decode
        # the chain's user records again.
        return self.ctx.memo.get(
            ("order", stage),
            lambda: stages.resolution_order(self.ctx.storage, stage, self.ctx.registry.is_mirror),
        )

    def _consulted_mirrors(self, stage: str, project: str) -> list:
        return self.ctx.memo.get(
            ("mirrors", stage, project),
            lambda: stages.consulted_mirrors(self._plan(stage, project)),
        )

    async def _refresh_mirrors(self, stage: str, project: str) -> list[str]:
        """
        Bring the mirror pages a project page draws on up to date (only the
        mirrors the whitelist rule lets in); return warnings for stale ones.
        """
        warnings = []
        for mirror in self._consulted_mirrors(stage, project):
            warning = await self.ctx.mirrors.ensure(mirror, project)
            if warning:
                warnings.append(f"{mirror.name}: {warning}")
        return warnings

    def _cleanup(self, digests: Iterable[str | None]) -> None:
        """
        Delete blobs nothing wants any more (after a removal, or after an
        upload that was refused once its file was already written).
        """
        self.ctx.blobs.remove_unwanted(digests)

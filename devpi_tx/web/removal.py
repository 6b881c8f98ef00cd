"""
Deleting and yanking on private indexes: projects, versions and single
files.  Both need the index's C{del_entries} right (its uploaders, or the
owner); deletion on a non-volatile index needs C{?force}.  Blobs no link
uses any more are removed from disk after the commit.
"""

from __future__ import annotations

from packaging.utils import canonicalize_name
from twisted.web.iweb import IRequest

from ..events import RemoveEvent
from ..model import releases
from ..model.errors import InvalidInput, NotFound
from .negotiation import has_flag, read_json
from .render import envelope, error
from .router import app
from .stagehelpers import StageHelpers


class RemovalRoutes(StageHelpers):
    """
    Mixin with the C{DELETE} and yanking C{PATCH} routes.
    """

    async def _may_delete(self, request: IRequest, user: str, index: str) -> tuple[dict, object]:
        config = self._stage(user, index)
        auth = await self.auth.authenticate(request)
        acl = self.ctx.registry.for_config(config).principals_for_delete(config)
        allowed = self.ctx.policy.may_delete_entries(auth.identity, user, acl)
        return config, (None if allowed else auth)

    def _removed(self, request: IRequest, stage: str, what: str, **fields) -> None:
        """
        Tell the event listeners (after the commit).
        """
        auth = getattr(request, "devpi_auth", None)
        who = auth.identity.username if auth is not None else None
        self.ctx.events.emit(RemoveEvent(stage, what, user=who, **fields))

    async def _delete(
        self, request: IRequest, user: str, index: str, what: str, remove, event: dict | None = None
    ) -> bytes | None:
        """
        Check the C{del_*} permission, then run C{remove(tx, stage,
        volatile=, force=)} in one transaction and drop unused blobs.

        @return: the refusal to send, or L{None} when done.
        """
        config, denied = await self._may_delete(request, user, index)
        if denied is not None:
            return self.deny(request, denied, f"no permission to delete {what}")
        async with self.ctx.storage.write() as tx:
            unused = remove(
                tx,
                f"{user}/{index}",
                volatile=config.get("volatile", True),
                force=has_flag(request, "force"),
            )
        self._cleanup(unused)
        if event is not None:
            self._removed(request, f"{user}/{index}", **event)
        return None

    @app.route("/<user>/<index>/<project>", methods=["DELETE"])
    @app.route("/<user>/<index>/<project>/", methods=["DELETE"])
    async def project_delete(self, request: IRequest, user: str, index: str, project: str):
        name = canonicalize_name(project)

        def remove(tx, stage, **rules):
            return releases.delete_project(tx, stage, name, **rules)

        event = {"what": "project", "project": name}
        refused = await self._delete(request, user, index, f"project {name}", remove, event)
        return refused or envelope(request, message=f"project {name} deleted from stage {user}/{index}")

    @app.route("/<user>/<index>/<project>/<version>", methods=["DELETE"])
    @app.route("/<user>/<index>/<project>/<version>/", methods=["DELETE"])
    async def version_delete(self, request: IRequest, user: str, index: str, project: str, version: str):
        name = canonicalize_name(project)

        def remove(tx, stage, **rules):
            unused = releases.delete_version(tx, stage, name, version, **rules)
            if not releases.version_records(tx, stage, name):
                tx.delete(releases.project_key(stage, name))
            return unused

        event = {"what": "version", "project": name, "version": version}
        refused = await self._delete(request, user, index, f"{name} {version}", remove, event)
        return refused or envelope(request, message=f"project {name!r} version {version!r} deleted")

    @app.route("/<user>/<index>/<project>/<version>", methods=["PATCH"])
    @app.route("/<user>/<index>/<project>/<version>/", methods=["PATCH"])
    async def version_yank(self, request: IRequest, user: str, index: str, project: str, version: str):
        """
        Yank (or unyank) every file of a version: C{{"yanked": "reason"}},
        C{{"yanked": true}} or C{{"yanked": false}}.
        """
        config, denied = await self._may_delete(request, user, index)
        if denied is not None:
            return self.deny(request, denied, f"no permission to yank {project} {version}")
        reason = self._yank_reason(request)
        stage = f"{user}/{index}"
        missing = f"The version {version} of project {canonicalize_name(project)} does not exist."
        if releases.get_version(self.ctx.storage, stage, project, version) is None:
            raise NotFound(missing)
        async with self.ctx.storage.write() as tx:
            # Read again in the transaction: a file uploaded or deleted
            # while this waited for the write (PostgreSQL) is yanked or
            # skipped, not missed or failed on.
            record = releases.get_version(tx, stage, project, version)
            if record is None:
                raise NotFound(missing)
            for link in record["+links"]:
                if link["rel"] == "releasefile":
                    releases.set_yanked(tx, stage, link["relpath"], reason)
        state = "unyanked" if reason is None else "yanked"
        self._removed(request, stage, state[:-2], project=canonicalize_name(project), version=version)
        return envelope(request, message=f"{canonicalize_name(project)} {version} {state}")

    def _yank_reason(self, request: IRequest):
        data = read_json(request)
        if not isinstance(data, dict) or "yanked" not in data:
            raise InvalidInput('expected {"yanked": "reason" | true | false}')
        value = data["yanked"]
        if value is False or value is None:
            return None
        if value is True or isinstance(value, str):
            return value
        raise InvalidInput("'yanked' must be a string (the reason), true or false")

    @app.route("/<user>/<index>/+f/<path:relpath>", methods=["DELETE"])
    async def file_delete(self, request: IRequest, user: str, index: str, relpath: str):
        path = f"{user}/{index}/+f/{relpath}"
        if self.ctx.storage.get(releases.gone_key(path)) is not None:
            return error(request, 410, "file existed, deleted in later serial")

        def remove(tx, stage, **rules):
            return releases.delete_file(tx, stage, path, **rules)

        event = {"what": "file", "relpath": path}
        refused = await self._delete(request, user, index, "files", remove, event)
        return refused or envelope(request, message=f"package {path!r} deleted")

    @app.route("/<user>/<index>/+f/<path:relpath>", methods=["PATCH"])
    async def file_yank(self, request: IRequest, user: str, index: str, relpath: str):
        """
        Yank one file: C{{"yanked": "reason"}}, C{true} or C{false}.
        """
        _, denied = await self._may_delete(request, user, index)
        if denied is not None:
            return self.deny(request, denied, "no permission to yank files")
        reason = self._yank_reason(request)
        async with self.ctx.storage.write() as tx:
            link = releases.set_yanked(tx, f"{user}/{index}", f"{user}/{index}/+f/{relpath}", reason)
        state = "unyanked" if reason is None else "yanked"
        self._removed(request, f"{user}/{index}", state[:-2], relpath=f"{user}/{index}/+f/{relpath}")
        return envelope(request, message=f"{link['basename']} {state}")

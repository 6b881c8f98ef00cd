"""
Project and version JSON (C{GET /<user>/<index>/<project>[/<version>]}, what
C{devpi list} and C{devpi getjson} ask), merged over the index's chain by
the whitelist rule of the simple page, and C{+explain}, which shows that
rule at work.
"""

from __future__ import annotations

import json

from packaging.utils import canonicalize_name
from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IRequest

from ..mirror.pages import MirrorUnavailable
from ..model import releases, stages, typefilters, versions_memo
from ..model.errors import NotFound
from . import simple
from .negotiation import has_flag, wants_json
from .pagecache import Page
from .render import envelope, error, send_json
from .router import app
from .stagehelpers import StageHelpers


def _hidden(contribution, shown, customizer, config: dict) -> dict:
    """
    What the index types' filters hid of a stage's files, for C{+explain},
    and what the index's type says of each file (its optional
    C{explain_link(config, link)}, a minimum age's ages).
    """
    kept = {link["basename"] for link in shown.links}
    hidden = [link["basename"] for link in contribution.links if link["basename"] not in kept]
    result: dict = {"hidden_by_index_type": hidden} if hidden else {}
    explain_link = getattr(customizer, "explain_link", None)
    if explain_link is not None and contribution.links:
        result["index_type"] = {link["basename"]: explain_link(config, link) for link in contribution.links}
    return result


class ProjectRoutes(StageHelpers):
    """
    Mixin with the project and version JSON routes and C{+explain}.
    """

    @app.route("/<user>/<index>/+explain/<project>", methods=["GET"])
    async def explain(self, request: IRequest, user: str, index: str, project: str):
        """
        Which index of the chain serves which files of a project, and why
        (beyond devpi): the inheritance and whitelist rule made visible.
        """
        self._stage(user, index)
        releases.check_project_name(project)
        stage = f"{user}/{index}"
        name = canonicalize_name(project)
        try:
            await self._refresh_mirrors(stage, name)
        except MirrorUnavailable as exc:
            return error(request, exc.status, str(exc))
        contributions = stages.project_contributions(
            self.ctx.storage, self._plan(stage, name), name, self.ctx.mirror_links
        )
        shown = typefilters.filter_contributions(
            self.ctx.storage, self._resolution_order(stage), name, contributions, self.ctx.registry.shown_by
        )
        config = self._stage(user, index)
        customizer = self.ctx.registry.shown_by(config)
        result = {
            "index": stage,
            "project": name,
            "mirror_whitelist_inheritance": config.get("mirror_whitelist_inheritance", "intersection"),
            "stages": [
                {
                    "index": c.stage,
                    "reason": c.reason,
                    "files": [link["basename"] for link in c.links],
                    **_hidden(c, kept, customizer, config),
                }
                for c, kept in zip(contributions, shown, strict=True)
            ],
        }
        return envelope(request, type="explain", result=result)

    async def _merged_versions(
        self,
        request: IRequest,
        user: str,
        index: str,
        project: str,
        only: str | None = None,
        derived: dict[str, dict] | None = None,
        expiry: typefilters.Expiry | None = None,
    ) -> dict:
        """
        The version records of a project over the index's chain (the
        first stage with a version wins), by the same whitelist rule as its
        simple page; mirrors the rule lets in are asked as for that page.
        With C{only}, that version's record alone: a private stage reads
        one key, not every version of the project.

        A mirror that fails with nothing cached contributes nothing (as
        devpi, whose stale project list then lacks the project): the
        answer says so in a warning header, or in the 404's message.

        @param derived: filled with the C{derived} slot of each version
            read from the versions memo (what callers make from a version
            can be kept there until it changes).

        @raise NotFound: no stage of the chain has the project.
        """
        stage = f"{user}/{index}"
        self._stage(user, index)
        planned = self._plan(stage, project)
        if has_flag(request, "ignore_bases"):
            planned = planned[:1] if planned and planned[0][0].name == stage else []
        order = self._resolution_order(stage)
        coverage = typefilters.Coverage(self.ctx.storage, order)
        merged: dict = {}
        found = False
        failures: list[str] = []
        for source, serves, _ in planned:
            if not serves:
                continue
            entries = None
            if source.is_mirror:
                try:
                    warning = await self.ctx.mirrors.ensure(source, project)
                except MirrorUnavailable as exc:
                    warning = str(exc)
                    failures.append(f"{source.name}: {exc}")
                if warning:
                    request.setHeader("X-Devpi-Mirror-Warning", warning.encode("latin-1", "replace"))
                records = self.ctx.mirrors.version_records(source, project)
                if records is None:
                    continue
            elif only is not None:
                if releases.get_project(self.ctx.storage, source.name, project) is None:
                    continue
                record = releases.get_version(self.ctx.storage, source.name, project, only)
                records = {only: record} if record is not None else {}
            else:
                entries = self.ctx.versions.entries(source.name, project)
                records = {version: entry.record for version, entry in entries.items()}
            if only is not None and records:
                records = {only: records[only]} if only in records else {}
            records, changed = typefilters.filter_records(
                self.ctx.storage,
                order,
                project,
                source.name,
                records,
                self.ctx.registry.shown_by,
                coverage,
                expiry,
            )
            if derived is not None and entries is not None:
                for version in records:
                    if version not in merged and version not in changed:
                        # A filtered record is not the memo's (nor are its pieces).
                        derived[version] = entries[version].derived
            found = True
            for version, record in records.items():
                merged.setdefault(version, record)
        if not found:
            raise NotFound("; ".join([f"no project {project!r}", *failures]))
        return merged

    def _mirrors_stale(self, stage: str, project: str) -> bool:
        """
        Whether a mirror the project's JSON draws on must be asked first.
        """
        return not all(self.ctx.mirrors.is_fresh(m, project) for m in self._consulted_mirrors(stage, project))

    @app.route("/<user>/<index>/<project>", methods=["GET", "HEAD"])
    @app.route("/<user>/<index>/<project>/", methods=["GET", "HEAD"])
    def project_get(self, request: IRequest, user: str, index: str, project: str):
        if simple.is_installer(request) and not wants_json(request):
            return self.simple_project(request, user, index, project)
        return ensureDeferred(self._project_json(request, user, index, project))

    async def _project_json(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        base = self.outside_url(request)
        name = canonicalize_name(project)
        ignore_bases = has_flag(request, "ignore_bases")
        # Kept until a commit touches the project (the page cache's rule);
        # mirrors are still brought up to date first.
        key = (f"{user}/{index}", name, "projectconfig", base, ignore_bases)
        page = self.ctx.page_cache.get(key)
        if page is not None and not self._mirrors_stale(f"{user}/{index}", name):
            return send_json(request, page.body)
        derived: dict[str, dict] = {}
        expiry = typefilters.Expiry()
        merged = await self._merged_versions(request, user, index, name, derived=derived, expiry=expiry)
        page = self.ctx.page_cache.get(key)  # still valid if no mirror page changed
        if page is None:
            # Each version's part kept with the version (if it comes from
            # the memo): after an upload, one version is encoded again.
            memo_key = ("projectconfig", base)
            pieces = []
            for version, record in merged.items():

                def make(version=version, record=record) -> bytes:
                    shown = json.dumps(self._record_json(base, record), separators=(",", ":"))
                    return (json.dumps(version) + ":" + shown).encode("utf-8")

                pieces.append(versions_memo.derived(derived.get(version), memo_key, make))
            body = b'{"type":"projectconfig","result":{' + b",".join(pieces) + b"}}\n"
            page = Page(body, "", "application/json", expiry.at)
            self.ctx.page_cache.put(key, page)
        return send_json(request, page.body)

    @app.route("/<user>/<index>/<project>/<version>", methods=["GET", "HEAD"])
    @app.route("/<user>/<index>/<project>/<version>/", methods=["GET", "HEAD"])
    async def version_get(self, request: IRequest, user: str, index: str, project: str, version: str):
        name = canonicalize_name(project)
        merged = await self._merged_versions(request, user, index, name, only=version)
        if version not in merged:
            raise NotFound(f"The version {version} of project {name} does not exist.")
        return envelope(
            request, type="versiondata", result=self._record_json(self.outside_url(request), merged[version])
        )

    def _link_json(self, base: str, link: dict) -> dict:
        sha256 = link.get("sha256")
        # A mirrored file whose upstream link had no sha256 shows the hash
        # upstream gave (md5, say), if any.
        spec = f"sha256={sha256}" if sha256 else link.get("hash_spec") or ""
        algorithm, _, digest = spec.partition("=")
        shown = {
            "rel": link["rel"],
            "hash_spec": spec,
            "hashes": {algorithm: digest} if spec else {},
            "href": f"{base}/{simple.quote_path(link['relpath'])}",
        }
        if "log" in link:  # mirrored files have none
            shown["log"] = link["log"]
        if link.get("for_relpath"):
            shown["for_href"] = f"{base}/{simple.quote_path(link['for_relpath'])}"
        for key in ("yanked", "attestations"):
            if link.get(key) not in (None, False):
                shown[key] = link[key]
        return shown

    def _record_json(self, base: str, record: dict) -> dict:
        shown = {k: v for k, v in record.items() if k != "+links"}
        shown["+links"] = [self._link_json(base, link) for link in record.get("+links", [])]
        return shown

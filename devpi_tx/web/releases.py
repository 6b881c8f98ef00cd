"""
Routes of private indexes: uploads, the simple API, project and version
JSON, files, deletion, yanking, tox results and push.

The handlers live in a mixin of L{devpi_tx.web.api.DevpiAPI}, which gives
them C{self.ctx} (the L{ServerContext}), C{self.auth} and the helpers
C{outside_url} and C{deny}.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from urllib.parse import unquote

from packaging.utils import canonicalize_name
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from ..mirror.client import UpstreamError, gateway_status
from ..mirror.files import GrowingFileBody
from ..mirror.pages import MirrorUnavailable
from ..model import indexes, releases, stages
from ..model import metadata as coremetadata
from ..model import push as localpush
from ..model.errors import InvalidInput, ModelError, NotFound
from ..model.metadata import is_zip, wheel_metadata
from ..remote.pypi_upload import PushTarget, push_release
from . import simple
from .files import serve_file
from .listpages import merged_names
from .negotiation import has_flag, read_json, wants_json
from .pagecache import Page
from .render import envelope, error
from .router import app
from .upload import Refusal, UploadReceiver, multipart_boundary

log = Logger(namespace="devpi_tx.releases")

_UPLOAD_PATH = re.compile(r"^/([^/+][^/]*)/([^/+][^/]*)/?$")
_CHUNK = 65536


def _first(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def _upload_error(request: IRequest, status: int, message: str) -> bytes:
    """
    Upload errors carry their message in the reason phrase, which twine
    and setuptools print.
    """
    return error(request, status, message, reason_is_message=True)


class ReleaseRoutes:
    """
    Mixin with the routes of private indexes.
    """

    ctx: object

    # -- helpers -----------------------------------------------------------

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

    def _plan(self, stage: str, project: str) -> stages.Plan:
        return self.ctx.memo.get(
            ("plan", stage, project),
            lambda: stages.plan(self.ctx.storage, stage, project, self._resolution_order(stage)),
        )

    def _resolution_order(self, stage: str) -> list[stages.Stage]:
        # Per index, not per project: a cold project's plan does not decode
        # the chain's user records again.
        return self.ctx.memo.get(("order", stage), lambda: stages.resolution_order(self.ctx.storage, stage))

    def _consulted_mirrors(self, stage: str, project: str) -> list:
        return self.ctx.memo.get(
            ("mirrors", stage, project),
            lambda: stages.consulted_mirrors(self.ctx.storage, stage, project, self._plan(stage, project)),
        )

    def _cleanup(self, digests) -> None:
        """
        Delete blobs nothing wants any more (after a removal, or after an
        upload that was refused once its file was already written).
        """
        self.ctx.blobs.remove_unwanted(digests)

    def _hold(self, *digests) -> None:
        """
        Keep blobs safe from garbage collection until L{_release}.
        """
        self.ctx.blobs.hold(*digests)

    def _release(self, *digests) -> None:
        self.ctx.blobs.release(*digests)

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

    # -- upload --------------------------------------------------------------

    def upload_receiver(self, request: IRequest) -> UploadReceiver | None:
        """
        Called by the site when a request's headers are in: a streaming
        receiver for multipart uploads to an index, else L{None}.
        """
        command = getattr(request.channel, "_command", None)
        path = getattr(request.channel, "_path", None)
        if command != b"POST" or not path:
            return None
        match = _UPLOAD_PATH.match(path.split(b"?", 1)[0].decode("utf-8", "replace"))
        boundary = multipart_boundary(request.getHeader("content-type") or "")
        if match is None or boundary is None:
            return None
        user, index = unquote(match.group(1)), unquote(match.group(2))
        transport = request.channel.transport
        # For the installer fast path, which hands the upload to index_post.
        request.devpi_upload_index = (user, index)
        return UploadReceiver(
            self.ctx.files,
            boundary,
            authorize=lambda: self.authorize_upload(request, user, index),
            pause=transport.pauseProducing,
            resume=transport.resumeProducing,
        )

    async def authorize_upload(self, request: IRequest, user: str, index: str) -> None:
        config = self._index_config(user, index)
        if config is None:
            raise Refusal(lambda: _upload_error(request, 404, f"index '{user}/{index}' does not exist"))
        if config["type"] == "mirror":
            raise Refusal(lambda: _upload_error(request, 404, "cannot submit to mirror index"))
        auth = await self.auth.authenticate(request)
        if self.ctx.policy.may_upload(auth.identity, config.get("acl_upload", [])):
            return
        if auth.identity.authenticated:
            raise Refusal(lambda: _upload_error(request, 403, "no permission to submit"))

        def unauthorized() -> bytes:
            request.setHeader("WWW-Authenticate", 'Basic realm="pypi"')
            if auth.failed:
                return _upload_error(
                    request, 401, f"Unauthorized: credentials for user {auth.sent_user!r} were rejected"
                )
            return _upload_error(
                request, 401, f"Unauthorized: authentication required to upload to {user}/{index}"
            )

        raise Refusal(unauthorized)

    @app.route("/<user>/<index>", methods=["POST", "PUSH"])
    @app.route("/<user>/<index>/", methods=["POST", "PUSH"])
    async def index_post(self, request: IRequest, user: str, index: str):
        receiver = getattr(request, "devpi_upload", None)
        if receiver is None:
            boundary = multipart_boundary(request.getHeader("content-type") or "")
            if boundary is None:
                return await self.push(request, user, index)
            receiver = UploadReceiver(
                self.ctx.files, boundary, authorize=lambda: self.authorize_upload(request, user, index)
            )
            request.content.seek(0)
            while chunk := request.content.read(_CHUNK):
                receiver.feed(chunk)
            receiver.body_complete()
        await receiver.wait()
        if receiver.refusal is not None:
            return receiver.refusal.render()
        if receiver.error is not None:
            return _upload_error(request, 400, receiver.error)
        try:
            return await self._store_upload(request, user, index, receiver)
        except ModelError as exc:
            receiver.discard()
            return _upload_error(request, exc.status, exc.message)

    async def _store_upload(self, request: IRequest, user: str, index: str, receiver) -> bytes:
        stage = f"{user}/{index}"
        fields = receiver.fields
        action = _first(fields, ":action")
        if action is None:
            raise InvalidInput(":action field not found")
        if action not in ("file_upload", "doc_upload", "submit"):
            raise InvalidInput(f"action {action!r} not supported")
        name = _first(fields, "name")
        if not name:
            raise InvalidInput("name field not found")
        releases.check_project_name(name)
        metadata = releases.metadata_from_form(fields)
        if action == "submit":
            receiver.discard()
            version = _first(fields, "version")
            if not version:
                raise InvalidInput("version field not found")
            with self.ctx.storage.transaction() as tx:
                releases.register(tx, stage, metadata, replace=True)
            return self._upload_ok(request)
        if receiver.file is None:
            raise InvalidInput("content file field not found")
        config = self._stage(user, index)
        if action == "doc_upload":
            # An empty documentation zip is stored, as devpi stores it.
            return await self._store_doczip(request, stage, config, metadata, receiver)
        if receiver.file.size == 0:
            raise InvalidInput("the uploaded file is empty")
        version = _first(fields, "version")
        if not version:
            raise InvalidInput("version field not found")
        basename = receiver.filename or ""
        kind = releases.check_filename_matches(basename, name, version)
        writer, receiver.file = receiver.file, None

        def checked(sha256: str, meta_sha: str | None) -> dict:
            sent = _first(fields, "sha256_digest")
            if sent and sent.strip().lower() != sha256:
                raise InvalidInput(f"sha256 digest mismatch for {basename}: sent {sent}, received {sha256}")
            extra = {"core_metadata_sha256": meta_sha} if meta_sha else {}
            attestations = _first(fields, "attestations")
            if attestations:
                try:
                    extra["attestations"] = json.loads(attestations)
                except ValueError:
                    raise InvalidInput("attestations field is not valid JSON") from None
            return extra

        outcome, sha256 = await self._store_file(
            request, stage, config, metadata, writer, "releasefile", basename, kind == "wheel", checked
        )
        if outcome == "identical":
            return self._upload_ok(request, "Upload of identical file to non volatile index.")
        log.info("stored {path}", path=releases.relpath(stage, sha256, basename))
        return self._upload_ok(request)

    async def _store_file(
        self, request, stage, config, metadata, writer, rel, basename, wheel, checked
    ) -> tuple[str, str]:
        """
        Make an uploaded file durable, let C{checked(sha256, metadata sha)}
        vet it (and return extra link fields), and link it in one
        transaction.  Whatever fails leaves no file behind.

        @return: C{"stored"} or C{"identical"}, and the file's sha256.
        """
        # Held from before the file gets its final name until its link is
        # committed, so that a concurrent cleanup never removes it.
        self._hold(writer.hexdigest())
        content = writer.in_memory() if wheel else None
        meta_data = None
        try:
            if content is not None:
                # A small wheel, still in memory: its METADATA is read now,
                # and its blob written after the link is committed, with
                # others (it is derived data, see model.metadata and
                # DerivedBlobs), off the upload's path.
                meta_data = wheel_metadata(io.BytesIO(content), basename)
                sha256, size, _ = await self.ctx.run_in_thread(
                    coremetadata.commit_upload, self.ctx.files, writer, None
                )
                meta_sha = hashlib.sha256(meta_data).hexdigest()
            else:
                # A broken wheel raises InvalidInput in the thread; the
                # cleanup is done here, on the reactor thread, which alone
                # reads the state.
                sha256, size, meta_sha = await self.ctx.run_in_thread(
                    coremetadata.commit_upload, self.ctx.files, writer, basename if wheel else None
                )
        except BaseException:
            writer.abort()  # nothing to do once committed
            self._release(writer.hexdigest())
            self._cleanup([writer.hexdigest()])
            raise
        self._hold(meta_sha)
        try:
            extra = checked(sha256, meta_sha)
            who = (await self.auth.authenticate(request)).identity.username
            with self.ctx.storage.transaction() as tx:
                outcome, _, unused = releases.add_file(
                    tx,
                    stage,
                    config.get("volatile", True),
                    metadata,
                    rel=rel,
                    basename=basename,
                    sha256=sha256,
                    size=size,
                    who=who,
                    extra=extra,
                )
        except BaseException:
            self._release(sha256, meta_sha)
            self._cleanup([sha256, meta_sha])
            raise
        self._release(sha256, meta_sha)
        self._cleanup(unused)
        if meta_data is not None:
            self.ctx.derived_blobs.add(meta_data)
        return outcome, sha256

    async def _sound_metadata(self, wheel: dict, basename: str) -> str:
        """
        The digest of an uploaded wheel's METADATA blob, checked once per
        process (L{coremetadata.repair_metadata}, in a thread) after any
        pending write of it (L{DerivedBlobs}) is done.
        """
        digest = wheel["core_metadata_sha256"]
        blobs = self.ctx.blobs
        if blobs.is_sound(digest) or wheel.get("mirror"):
            return digest
        await self.ctx.derived_blobs.settled(digest)
        made_again = await self.ctx.run_in_thread(
            coremetadata.repair_metadata, self.ctx.files, wheel["sha256"], digest, basename
        )
        if made_again:
            log.warn("METADATA of {name} was damaged or missing; taken from the wheel again", name=basename)
        blobs.mark_sound(digest)
        return digest

    async def _store_doczip(self, request, stage, config, metadata, receiver) -> bytes:
        name = metadata["name"]
        version = metadata.get("version") or releases.latest_version(self.ctx.storage, stage, name)
        if not version:
            raise InvalidInput(f"doczip has no version and {name!r} has no releases to derive one from")
        metadata["version"] = version
        writer, receiver.file = receiver.file, None

        def checked(sha256: str, meta_sha: str | None) -> dict:
            if writer.size and not is_zip(self.ctx.files.path(sha256)):
                raise InvalidInput("the documentation upload is not a zip file")
            return {}

        basename = f"{name}-{version}.doc.zip"
        await self._store_file(request, stage, config, metadata, writer, "doczip", basename, False, checked)
        return self._upload_ok(request)

    def _upload_ok(self, request: IRequest, reason: str = "OK") -> bytes:
        request.setResponseCode(200, reason.encode("latin-1", "replace"))
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        request.setHeader("Content-Length", "0")
        return b""

    # -- simple API ------------------------------------------------------------

    def _absolute_base(self, request: IRequest) -> str | None:
        if self.ctx.config.absolute_urls or request.getHeader("x-devpi-absolute-urls") is not None:
            return self.outside_url(request)
        return None

    def _send_page(self, request: IRequest, page: Page) -> bytes:
        request.setHeader("Vary", "Accept, User-Agent")
        request.setHeader("ETag", page.etag)
        request.setHeader("Content-Type", simple.content_type_for(page.fmt))
        if simple.not_modified(request, page.etag):
            request.setResponseCode(304)
            return b""
        request.setHeader("Content-Length", str(len(page.body)))
        return page.body

    def simple_list(self, request: IRequest, user: str, index: str) -> bytes:
        self._stage(user, index)
        try:
            fmt = simple.choose_format(request)
        except simple.NotAcceptable as exc:
            return error(request, 406, str(exc))
        stage = f"{user}/{index}"
        key = (stage, None, fmt)
        page = self.ctx.page_cache.get(key)
        if page is None:
            sources = self.ctx.list_sources(stage)
            if any(isinstance(names, str) for _, names in sources):
                # An upstream's list: written to disk by a thread.
                return ensureDeferred(self._large_list(request, stage, fmt, sources))
            groups = [(name, list(names)) for name, names in merged_names(sources)]
            body = simple.render_project_list(fmt, stage, groups)
            page = Page(body, simple.etag_for(body), fmt)
            self.ctx.page_cache.put(key, page)
        return self._send_page(request, page)

    async def _large_list(self, request: IRequest, stage: str, fmt: str, sources):
        rendered = await self.ctx.list_pages.get(stage, fmt, sources)
        request.setHeader("Vary", "Accept, User-Agent")
        return rendered.serve(request, simple.content_type_for(fmt))

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

    def simple_project(self, request: IRequest, user: str, index: str, project: str):
        """
        A project page: answered at once when every mirror it draws on is
        fresh (the common case, kept free of coroutine machinery), else
        once those mirrors have been asked.
        """
        self._stage(user, index)
        try:
            fmt = simple.choose_format(request)
        except simple.NotAcceptable as exc:
            return error(request, 406, str(exc))
        stage = f"{user}/{index}"
        name = canonicalize_name(project)
        if all(self.ctx.mirrors.is_fresh(m, name) for m in self._consulted_mirrors(stage, name)):
            return self._project_page(request, stage, name, project, fmt)
        return ensureDeferred(self._refreshed_project_page(request, stage, name, project, fmt))

    async def _refreshed_project_page(
        self, request: IRequest, stage: str, name: str, project: str, fmt: str
    ) -> bytes:
        try:
            warnings = await self._refresh_mirrors(stage, name)
        except MirrorUnavailable as exc:
            return error(request, exc.status, str(exc))
        for warning in warnings:
            request.setHeader("X-Devpi-Mirror-Warning", warning.encode("latin-1", "replace"))
        return self._project_page(request, stage, name, project, fmt)

    def _project_page(self, request: IRequest, stage: str, name: str, project: str, fmt: str) -> bytes:
        page_dir = request.path.decode("utf-8", "replace")
        if not page_dir.endswith("/"):
            page_dir = page_dir.rsplit("/", 1)[0] + "/"
        absolute = self._absolute_base(request)
        key = (stage, name, fmt, page_dir, absolute)
        page = self.ctx.page_cache.get(key)
        if page is None:
            contributions = stages.project_contributions(
                self.ctx.storage, stage, name, self.ctx.mirror_links, self._plan(stage, name)
            )
            if not any(c.links or c.versions for c in contributions):
                return error(request, 404, f"no project {project!r} on index {stage} or its bases")
            body = simple.render_project(fmt, stage, name, contributions, page_dir, absolute)
            page = Page(body, simple.etag_for(body), fmt)
            self.ctx.page_cache.put(key, page)
        return self._send_page(request, page)

    def _normalised_redirect(self, request: IRequest, project: str, slash: bool) -> bytes | None:
        name = canonicalize_name(project)
        if name == project and slash:
            return None
        path = request.path.decode("utf-8", "replace")
        head = path.rstrip("/").rsplit("/", 1)[0]
        target = f"{head}/{name}/"
        if request.uri.find(b"?") >= 0:
            target += "?" + request.uri.split(b"?", 1)[1].decode("latin-1")
        request.setResponseCode(302)
        request.setHeader("Location", target)
        request.setHeader("Vary", "Accept, User-Agent")
        return b""

    @app.route("/<user>/<index>/+simple", methods=["GET", "HEAD"])
    def simple_root_noslash(self, request: IRequest, user: str, index: str):
        if simple.is_installer(request):
            return self.simple_list(request, user, index)
        request.setResponseCode(302)
        request.setHeader("Location", f"/{user}/{index}/+simple/")
        request.setHeader("Vary", "User-Agent")
        return b""

    @app.route("/<user>/<index>/+simple/", methods=["GET", "HEAD"])
    def simple_root(self, request: IRequest, user: str, index: str):
        return self.simple_list(request, user, index)

    @app.route("/<user>/<index>/+simple/<project>", methods=["GET", "HEAD"])
    def simple_project_noslash(self, request: IRequest, user: str, index: str, project: str):
        if canonicalize_name(project) == project and simple.is_installer(request):
            return self.simple_project(request, user, index, project)
        return self._normalised_redirect(request, project, slash=False)

    @app.route("/<user>/<index>/+simple/<project>/", methods=["GET", "HEAD"])
    def simple_project_page(self, request: IRequest, user: str, index: str, project: str):
        redirect = self._normalised_redirect(request, project, slash=True)
        if redirect is not None:
            return redirect
        return self.simple_project(request, user, index, project)

    @app.route("/<user>/<index>/+simple/<project>/refresh", methods=["POST"])
    def simple_refresh(self, request: IRequest, user: str, index: str, project: str):
        self._stage(user, index)
        self.ctx.refresh_project(f"{user}/{index}", canonicalize_name(project))
        request.setResponseCode(302)
        request.setHeader("Location", f"/{user}/{index}/+simple/{canonicalize_name(project)}/")
        return b""

    @app.route("/<user>/<index>/+explain/<project>", methods=["GET"])
    async def explain(self, request: IRequest, user: str, index: str, project: str):
        """
        Which index of the chain serves which files of a project, and why
        (beyond devpi): the inheritance and whitelist rule made visible.
        """
        self._stage(user, index)
        stage = f"{user}/{index}"
        name = canonicalize_name(project)
        try:
            await self._refresh_mirrors(stage, name)
        except MirrorUnavailable as exc:
            return error(request, exc.status, str(exc))
        contributions = stages.project_contributions(self.ctx.storage, stage, name, self.ctx.mirror_links)
        result = {
            "index": stage,
            "project": name,
            "mirror_whitelist_inheritance": self._stage(user, index).get(
                "mirror_whitelist_inheritance", "intersection"
            ),
            "stages": [
                {
                    "index": c.stage,
                    "reason": c.reason,
                    "files": [link["basename"] for link in c.links],
                }
                for c in contributions
            ],
        }
        return envelope(request, type="explain", result=result)

    # -- project and version JSON ------------------------------------------------

    async def _merged_versions(self, request: IRequest, user: str, index: str, project: str) -> dict:
        """
        The version records of a project over the index's chain (the
        first stage with a version wins), by the same whitelist rule as its
        simple page; mirrors the rule lets in are asked as for that page.

        A mirror that fails with nothing cached contributes nothing (as
        devpi, whose stale project list then lacks the project): the
        answer says so in a warning header, or in the 404's message.

        @raise NotFound: no stage of the chain has the project.
        """
        stage = f"{user}/{index}"
        self._stage(user, index)
        planned = self._plan(stage, project)
        if has_flag(request, "ignore_bases"):
            planned = planned[:1] if planned and planned[0][0].name == stage else []
        merged: dict = {}
        found = False
        failures: list[str] = []
        for source, serves, _ in planned:
            if not serves:
                continue
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
            else:
                records = releases.version_records(self.ctx.storage, source.name, project)
            found = True
            for version, record in records.items():
                merged.setdefault(version, record)
        if not found:
            raise NotFound("; ".join([f"no project {project!r}", *failures]))
        return merged

    @app.route("/<user>/<index>/<project>", methods=["GET", "HEAD"])
    @app.route("/<user>/<index>/<project>/", methods=["GET", "HEAD"])
    def project_get(self, request: IRequest, user: str, index: str, project: str):
        if simple.is_installer(request) and not wants_json(request):
            return self.simple_project(request, user, index, project)
        return ensureDeferred(self._project_json(request, user, index, project))

    async def _project_json(self, request: IRequest, user: str, index: str, project: str) -> bytes:
        base = self.outside_url(request)
        merged = await self._merged_versions(request, user, index, canonicalize_name(project))
        result = {version: self._record_json(base, record) for version, record in merged.items()}
        return envelope(request, type="projectconfig", result=result)

    @app.route("/<user>/<index>/<project>/<version>", methods=["GET", "HEAD"])
    @app.route("/<user>/<index>/<project>/<version>/", methods=["GET", "HEAD"])
    async def version_get(self, request: IRequest, user: str, index: str, project: str, version: str):
        name = canonicalize_name(project)
        merged = await self._merged_versions(request, user, index, name)
        if version not in merged:
            raise NotFound(f"The version {version} of project {name} does not exist.")
        return envelope(
            request, type="versiondata", result=self._record_json(self.outside_url(request), merged[version])
        )

    async def _may_delete(self, request: IRequest, user: str, index: str) -> tuple[dict, object]:
        config = self._stage(user, index)
        auth = await self.auth.authenticate(request)
        allowed = self.ctx.policy.may_delete_entries(auth.identity, user, config.get("acl_upload", []))
        return config, (None if allowed else auth)

    async def _delete(self, request: IRequest, user: str, index: str, what: str, remove) -> bytes | None:
        """
        Check the C{del_*} permission, then run C{remove(tx, stage,
        volatile=, force=)} in one transaction and drop unused blobs.

        @return: the refusal to send, or L{None} when done.
        """
        config, denied = await self._may_delete(request, user, index)
        if denied is not None:
            return self.deny(request, denied, f"no permission to delete {what}")
        with self.ctx.storage.transaction() as tx:
            unused = remove(
                tx,
                f"{user}/{index}",
                volatile=config.get("volatile", True),
                force=has_flag(request, "force"),
            )
        self._cleanup(unused)
        return None

    @app.route("/<user>/<index>/<project>", methods=["DELETE"])
    @app.route("/<user>/<index>/<project>/", methods=["DELETE"])
    async def project_delete(self, request: IRequest, user: str, index: str, project: str):
        name = canonicalize_name(project)

        def remove(tx, stage, **rules):
            return releases.delete_project(tx, stage, name, **rules)

        refused = await self._delete(request, user, index, f"project {name}", remove)
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

        refused = await self._delete(request, user, index, f"{name} {version}", remove)
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
        record = releases.get_version(self.ctx.storage, stage, project, version)
        if record is None:
            raise NotFound(f"The version {version} of project {canonicalize_name(project)} does not exist.")
        with self.ctx.storage.transaction() as tx:
            for link in record["+links"]:
                if link["rel"] == "releasefile":
                    releases.set_yanked(tx, stage, link["relpath"], reason)
        state = "unyanked" if reason is None else "yanked"
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

    # -- files -------------------------------------------------------------------

    @app.route("/<user>/<index>/+e/<path:relpath>", methods=["GET", "HEAD"])
    async def mirror_file_get(self, request: IRequest, user: str, index: str, relpath: str):
        return await self.file_get(request, user, index, relpath, kind="+e")

    @app.route("/<user>/<index>/+f/<path:relpath>", methods=["GET", "HEAD"])
    async def file_get(self, request: IRequest, user: str, index: str, relpath: str, kind: str = "+f"):
        path = f"{user}/{index}/{kind}/{relpath}"
        storage = self.ctx.storage
        entry = releases.get_file(storage, path)
        if entry is not None and entry.get("mirror") and not self.ctx.mirror_files.is_stored(entry):
            if wants_json(request):
                result = {"url": indexes.redact_url(entry["url"]), "project": entry["project"]}
                if entry.get("sha256"):
                    result["hashes"] = {"sha256": entry["sha256"]}
                return envelope(request, type="releasefilemeta", result=result)
            if self.ctx.config.offline_mode:
                return error(request, 404, f"{path} is not cached and the server is offline")
            try:
                if request.method == b"HEAD":
                    for name, value in (await self.ctx.mirror_files.head(entry)).items():
                        request.setHeader(name, value)
                    request.setHeader("Content-Type", "application/octet-stream")
                    return b""
                download = self.ctx.mirror_files.download(path, entry)
                await download.wait("started")
                if download.committing or download.done:
                    entry = await download.wait("finished")
                else:
                    return self._send_growing(request, download, entry)
            except UpstreamError as exc:
                return error(request, gateway_status(exc), str(exc))
        if entry is None and path.endswith(".metadata"):
            wheel = releases.get_file(storage, path[: -len(".metadata")])
            if wheel is not None and wheel.get("mirror") and wheel["url"].endswith(".whl"):
                if (
                    self.ctx.config.offline_mode
                    and not wheel.get("core_metadata_sha256")
                    and not self.ctx.mirror_files.is_stored(wheel)
                ):
                    # Offline, metadata comes from the store or the stored wheel.
                    return error(request, 404, f"{path} is not cached and the server is offline")
                try:
                    digest = await self.ctx.mirror_files.metadata(path[: -len(".metadata")])
                except InvalidInput as exc:
                    return error(request, 502, exc.message)
                except UpstreamError as exc:
                    return error(request, gateway_status(exc), str(exc))
                return self._serve_blob(request, digest, wheel["last_modified"], "text/plain; charset=utf-8")
            wheel = releases.get_file(storage, path[: -len(".metadata")])
            if wheel is not None and wheel.get("core_metadata_sha256"):
                try:
                    digest = await self._sound_metadata(wheel, path.rsplit("/", 1)[1][: -len(".metadata")])
                except InvalidInput as exc:
                    return error(request, 500, exc.message)
                return self._serve_blob(request, digest, wheel["last_modified"], "text/plain; charset=utf-8")
        if entry is None:
            if storage.get(releases.gone_key(path)) is not None:
                return error(request, 410, "file existed, deleted in later serial")
            return error(request, 404, f"no file at {path}")
        if wants_json(request):
            result = {
                "last_modified": releases.http_date(entry["last_modified"]),
                "hash_spec": f"sha256={entry['sha256']}",
                "hashes": {"sha256": entry["sha256"]},
                "project": entry["project"],
                "version": entry["version"],
            }
            return envelope(request, type="releasefilemeta", result=result)
        content_type = "application/json" if entry["rel"] == "toxresult" else "application/octet-stream"
        return self._serve_blob(request, entry["sha256"], entry["last_modified"], content_type)

    def _send_growing(self, request: IRequest, download, entry: dict):
        """
        Answer with a file while its download from upstream is running.
        """
        request.setResponseCode(200)
        request.setHeader("Content-Type", "application/octet-stream")
        if download.total is not None:
            request.setHeader("Content-Length", str(download.total))
        if entry.get("sha256"):
            request.setHeader("ETag", f'"{entry["sha256"]}"')
            request.setHeader("Cache-Control", "max-age=365000000, immutable, public")
        return GrowingFileBody(request, download).start()

    def _serve_blob(self, request: IRequest, sha256: str, last_modified: float, content_type: str):
        path = self.ctx.files.path(sha256)
        try:
            size = os.path.getsize(path)
            return serve_file(
                request,
                path,
                size=size,
                sha256=sha256,
                last_modified=last_modified,
                content_type=content_type,
            )
        except FileNotFoundError:
            log.error("file {sha256} is linked but missing on disk", sha256=sha256)
            return error(request, 500, "file is missing on the server's disk")

    @app.route("/<user>/<index>/+f/<path:relpath>", methods=["DELETE"])
    async def file_delete(self, request: IRequest, user: str, index: str, relpath: str):
        path = f"{user}/{index}/+f/{relpath}"
        if self.ctx.storage.get(releases.gone_key(path)) is not None:
            return error(request, 410, "file existed, deleted in later serial")

        def remove(tx, stage, **rules):
            return releases.delete_file(tx, stage, path, **rules)

        refused = await self._delete(request, user, index, "files", remove)
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
        with self.ctx.storage.transaction() as tx:
            link = releases.set_yanked(tx, f"{user}/{index}", f"{user}/{index}/+f/{relpath}", reason)
        state = "unyanked" if reason is None else "yanked"
        return envelope(request, message=f"{link['basename']} {state}")

    @app.route("/<user>/<index>/+f/<path:relpath>", methods=["POST"])
    async def toxresult_upload(self, request: IRequest, user: str, index: str, relpath: str):
        """
        Store a tox result (JSON) for a release file.  Errors are JSON
        whatever the client accepts, as devpi-server 6.11+ answers them.
        """
        try:
            return await self._store_toxresult(request, user, index, relpath)
        except ModelError as exc:
            return error(request, exc.status, exc.message, as_json=True)

    async def _store_toxresult(self, request: IRequest, user: str, index: str, relpath: str) -> bytes:
        config = self._stage(user, index)
        stage = f"{user}/{index}"
        path = f"{stage}/+f/{relpath}"
        auth = await self.auth.authenticate(request)
        acl = config.get("acl_toxresult_upload", [":ANONYMOUS:"])
        if not self.ctx.policy.may_upload(auth.identity, acl):
            return self.deny(
                request,
                auth,
                "no permission to upload tox results (use 'devpi test --no-upload')",
                as_json=True,
            )
        entry = releases.get_file(self.ctx.storage, path)
        if entry is None or entry["rel"] != "releasefile":
            raise NotFound(f"no release file found at {path}")
        read_json(request)  # must be JSON; the raw bytes are stored
        request.content.seek(0)
        data = request.content.read()
        writer = self.ctx.files.writer()
        writer.write(data)
        self._hold(writer.hexdigest())
        try:
            sha256 = await self.ctx.run_in_thread(writer.commit)  # fsync: off the reactor
        finally:
            self._release(writer.hexdigest())
        record = releases.get_version(self.ctx.storage, stage, entry["project"], entry["version"])
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        count = sum(1 for link in record["+links"] if link.get("for_relpath") == path)
        basename = f"{path.rsplit('/', 1)[1]}.toxresult-{stamp}-{count}"
        tox_path = f"{path.rsplit('/', 1)[0]}/{basename}"
        try:
            with self.ctx.storage.transaction() as tx:
                releases.add_file(
                    tx,
                    stage,
                    True,
                    {"name": record["name"], "version": record["version"]},
                    rel="toxresult",
                    basename=basename,
                    sha256=sha256,
                    size=len(data),
                    who=auth.identity.username,
                    extra={"for_relpath": path},
                    path=tox_path,
                )
        except BaseException:
            self._cleanup([sha256])
            raise
        return envelope(request, type="toxresultpath", result=f"{tox_path}#sha256={sha256}")

    # -- push ----------------------------------------------------------------------

    async def push(self, request: IRequest, user: str, index: str) -> bytes:
        """
        Check the request and the permission; the push itself is the
        model's (L{localpush.push_release}) or L{push_release}'s.
        """
        stage = f"{user}/{index}"
        self._stage(user, index)
        content_type = request.getHeader("content-type") or ""
        try:
            data = read_json(request)
        except InvalidInput:
            if "json" in content_type:
                raise
            raise InvalidInput(
                "expected a multipart/form-data upload or a JSON push request, "
                f"got Content-Type {content_type!r}"
            ) from None
        if not isinstance(data, dict):
            raise InvalidInput("Bad request: expected a JSON object")
        name, version = data.get("name"), data.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            raise InvalidInput("push needs 'name' and 'version'")
        no_docs, only_docs = bool(data.get("no_docs")), bool(data.get("only_docs"))
        if no_docs and only_docs:
            raise InvalidInput("can't use 'no_docs' and 'only_docs' together")
        record = localpush.release_to_push(self.ctx.storage, stage, name, version)
        if "targetindex" not in data:
            return await self._push_external(request, stage, data, record, no_docs, only_docs)
        extra = set(data) - {"name", "version", "targetindex", "no_docs", "only_docs"}
        if extra:
            raise InvalidInput(f"unknown additional options: {', '.join(sorted(extra))}")
        target = data["targetindex"]
        target_config = localpush.push_target(self.ctx.storage, target)
        auth = await self.auth.authenticate(request)
        if not self.ctx.policy.may_upload(auth.identity, target_config.get("acl_upload", [])):
            if auth.failed:
                return self.deny(request, auth, "")
            return error(request, 401, f"user {auth.identity.username!r} cannot upload to {target!r}")
        with self.ctx.storage.transaction() as tx:
            outcome = localpush.push_release(
                tx,
                stage,
                target,
                name,
                version,
                auth.identity.username,
                no_docs=no_docs,
                only_docs=only_docs,
            )
        self._cleanup(outcome.unused)
        log.info(
            "pushed {name} {version} from {src} to {dst}", name=name, version=version, src=stage, dst=target
        )
        return envelope(request, type="actionlog", result=outcome.actions)

    async def _push_external(self, request, stage, data, record, no_docs, only_docs) -> bytes:
        """
        Act like twine against C{posturl}, streaming each file from disk.
        """
        extra = set(data) - {
            "name", "version", "posturl", "username", "password", "register_project", "no_docs", "only_docs"
        }  # fmt: skip
        if extra:
            raise InvalidInput(f"unknown additional options: {', '.join(sorted(extra))}")
        posturl = data.get("posturl")
        if not isinstance(posturl, str) or not posturl.startswith(("http://", "https://")):
            raise InvalidInput("push needs 'targetindex', or 'posturl' with an http(s) URL")
        auth = await self.auth.authenticate(request)
        config = self._stage(*stage.split("/"))
        if not self.ctx.policy.may_upload(auth.identity, config.get("acl_upload", [])):
            return self.deny(request, auth, f"no permission to push from {stage}")
        target = PushTarget(
            posturl,
            str(data.get("username") or ""),
            str(data.get("password") or ""),
            bool(data.get("register_project")),
        )
        metadata = {k: v for k, v in record.items() if k != "+links"}
        status, results = await push_release(
            self.ctx.http,
            self.ctx.files,
            target,
            metadata,
            record["+links"],
            no_docs=no_docs,
            only_docs=only_docs,
            timeout=self.ctx.config.request_timeout * 6,
        )
        log.info(
            "pushed {name} {version} from {src} to {url}: {status}",
            name=record["name"], version=record["version"], src=stage, url=posturl, status=status,
        )  # fmt: skip
        return envelope(request, status, type="actionlog", result=results)

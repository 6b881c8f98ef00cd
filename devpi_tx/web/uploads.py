"""
Uploads to private indexes: release files, documentation zips and
C{:action=submit} registrations, as twine, setuptools and devpi-client
send them (C{POST /<user>/<index>/} with a multipart body).

The body streams into the file store (L{devpi_tx.web.upload}); the file
is linked in one transaction once it is durable.  A C{POST} (or C{PUSH})
that is not multipart is a push (L{devpi_tx.web.push}).
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import re
from urllib.parse import unquote

from packaging.utils import canonicalize_name
from twisted.web.iweb import IRequest

from .._compat import pending_request_line
from ..auth.throttle import Throttled
from ..customizers import run_hook
from ..events import UploadEvent
from ..logs import logger
from ..model import metadata as coremetadata
from ..model import releases
from ..model.errors import InvalidInput, ModelError
from ..model.metadata import stored_is_zip, wheel_metadata
from .credentials import too_many_attempts
from .render import error
from .router import app
from .stagehelpers import StageHelpers
from .upload import Refusal, UploadReceiver, multipart_boundary

log = logger("devpi_tx.releases")

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


class UploadRoutes(StageHelpers):
    """
    Mixin with the upload route.
    """

    def upload_receiver(self, request: IRequest) -> UploadReceiver | None:
        """
        Called by the site when a request's headers are in: a streaming
        receiver for multipart uploads to an index, else L{None}.
        """
        command, path = pending_request_line(request.channel)
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
        customizer = self.ctx.registry.for_config(config)
        if customizer.readonly:
            kind = config["type"]
            raise Refusal(lambda: _upload_error(request, 404, f"cannot submit to {kind} index"))
        try:
            auth = await self.auth.authenticate(request)
        except Throttled as exc:
            throttled = exc  # the except clause's name is gone when the refusal renders
            raise Refusal(lambda: too_many_attempts(request, throttled, reason_is_message=True)) from None
        if self.ctx.policy.may_upload(auth.identity, customizer.principals_for_upload(config)):
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
            async with self.ctx.storage.write() as tx:
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
        blobs = self.ctx.blobs
        blobs.hold(writer.hexdigest())
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
            blobs.release(writer.hexdigest())
            blobs.remove_unwanted([writer.hexdigest()])
            raise
        blobs.hold(meta_sha)
        try:
            extra = checked(sha256, meta_sha)
            if inspect.isawaitable(extra):
                extra = await extra
            who = (await self.auth.authenticate(request)).identity.username
            async with self.ctx.storage.write() as tx:
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
            blobs.release(sha256, meta_sha)
            blobs.remove_unwanted([sha256, meta_sha])
            raise
        blobs.release(sha256, meta_sha)
        blobs.remove_unwanted(unused)
        self.ctx.metrics.uploaded(rel, size)
        if meta_data is not None:
            self.ctx.derived_blobs.add(meta_data)
        if outcome != "identical":
            link = {
                "rel": rel,
                "basename": basename,
                "sha256": sha256,
                "size": size,
                "relpath": releases.relpath(stage, sha256, basename),
            }
            project = canonicalize_name(metadata["name"])
            customizer = self.ctx.registry.for_config(config)
            run_hook(customizer, "on_upload", stage, project, metadata.get("version", ""), link)
            self.ctx.events.emit(
                UploadEvent(stage, project, metadata.get("version", ""), rel, link, user=who)
            )
        return outcome, sha256

    async def _store_doczip(self, request, stage, config, metadata, receiver) -> bytes:
        name = metadata["name"]
        version = metadata.get("version") or releases.latest_version(self.ctx.storage, stage, name)
        if not version:
            raise InvalidInput(f"doczip has no version and {name!r} has no releases to derive one from")
        metadata["version"] = version
        writer, receiver.file = receiver.file, None

        async def checked(sha256: str, meta_sha: str | None) -> dict:
            # In a thread: the store may be remote.
            if writer.size and not await self.ctx.run_in_thread(stored_is_zip, self.ctx.files, sha256):
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

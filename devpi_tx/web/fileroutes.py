"""
Files of an index: C{+f} (stored here) and C{+e} (mirrored files not yet
fetched, addressed by a hash of their URL), their C{.metadata} (PEP 658),
and JSON about a file.  A mirrored file not stored yet is fetched from
upstream and served while it arrives.  The bytes go out through
L{devpi_tx.web.files}.
"""

from __future__ import annotations

import os

from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET

from ..interfaces import ILocalFileStore
from ..logs import logger
from ..mirror.client import UpstreamError, gateway_status
from ..mirror.files import GrowingFileBody
from ..model import indexes, releases
from ..model import metadata as coremetadata
from ..model.errors import InvalidInput
from .files import serve_file
from .negotiation import wants_json
from .remotefiles import serve_remote
from .render import envelope, error
from .router import app
from .stagehelpers import StageHelpers

log = logger("devpi_tx.releases")


class FileRoutes(StageHelpers):
    """
    Mixin with the routes that serve files.
    """

    @app.route("/<user>/<index>/+e/<path:relpath>", methods=["GET", "HEAD"])
    async def mirror_file_get(self, request: IRequest, user: str, index: str, relpath: str):
        return await self.file_get(request, user, index, relpath, kind="+e")

    @app.route("/<user>/<index>/+f/<path:relpath>", methods=["GET", "HEAD"])
    async def file_get(self, request: IRequest, user: str, index: str, relpath: str, kind: str = "+f"):
        path = f"{user}/{index}/{kind}/{relpath}"
        storage = self.ctx.storage
        entry = releases.get_file(storage, path)
        if self.ctx.replica is not None:
            answered = await self._replica_file(request, path, entry)
            if answered is not None:
                return answered
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
        if entry.get("mirror"):
            self.ctx.mirror_files.touch(path)
        return self._serve_blob(request, entry["sha256"], entry["last_modified"], content_type)

    async def _replica_file(self, request: IRequest, path: str, entry: dict | None):
        """
        On a replica, a file it does not have yet: a mirror's that the
        primary has not stored either (or its metadata) is relayed from the
        primary, which fetches and stores it, since a replica stores nothing
        of its own; any other is fetched from the primary now, sharing the
        download the file sync may have started.  L{None} when the replica
        has what it needs to answer.
        """
        replica = self.ctx.replica
        assert replica is not None
        wheel = None
        if entry is None and path.endswith(".metadata"):
            wheel = releases.get_file(self.ctx.storage, path[: -len(".metadata")])
        if wheel is not None:
            if wheel.get("core_metadata_sha256") and self.ctx.files.exists(wheel["core_metadata_sha256"]):
                return None
            if wheel.get("mirror") and not wheel.get("core_metadata_sha256"):
                await replica.proxy.forward(request)
                return NOT_DONE_YET
        elif entry is None or (entry.get("sha256") and self.ctx.files.exists(entry["sha256"])):
            return None
        elif entry.get("mirror") and not entry.get("stored"):
            await replica.proxy.forward(request)
            return NOT_DONE_YET
        if wants_json(request) and entry is not None:
            return None  # the file's metadata: in the state already
        # --replica-max-retries: tries again at once after a failure (an
        # aborted connection, say) before the client is told.
        retries = self.ctx.config.replica_max_retries
        while True:
            try:
                await replica.files.fetch(path)
                return None
            except UpstreamError as exc:
                if retries == 0:
                    return error(request, gateway_status(exc), f"{path}: not replicated yet, and {exc}")
                retries -= 1

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
        files = self.ctx.files
        if not ILocalFileStore.providedBy(files):
            return serve_remote(
                request,
                self.ctx.http,
                files,
                sha256=sha256,
                last_modified=last_modified,
                content_type=content_type,
                redirect=self.ctx.config.files_redirect,
                timeout=self.ctx.config.request_timeout,
            )
        path = files.local_path(sha256)
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

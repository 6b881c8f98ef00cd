"""
Tox results (C{POST /<user>/<index>/+f/...} with JSON, as C{devpi test}
sends them): stored as files linked to the release file they were run
against, under the index's C{acl_toxresult_upload}, if shaped like tox's
C{--result-json} report and not too large (L{devpi_tx.model.toxresults}).
"""

from __future__ import annotations

import time

from packaging.utils import canonicalize_name
from twisted.web.iweb import IRequest

from ..events import UploadEvent
from ..model import releases, toxresults
from ..model.errors import ModelError, NotFound
from .negotiation import read_json
from .render import envelope, error
from .router import app
from .stagehelpers import StageHelpers


class ToxResultRoutes(StageHelpers):
    """
    Mixin with the tox result upload route.
    """

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
        acl = self.ctx.registry.for_config(config).principals_for_toxresult_upload(config)
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
        # The site caps JSON bodies; one labelled multipart may be larger.
        request.content.seek(0, 2)
        toxresults.check_size(
            request.content.tell(), min(toxresults.MAX_SIZE, self.ctx.config.max_json_body_size)
        )
        toxresults.check_toxresult(read_json(request))  # the raw bytes are stored
        request.content.seek(0)
        data = request.content.read()
        writer = self.ctx.files.writer()
        writer.write(data)
        self.ctx.blobs.hold(writer.hexdigest())
        try:
            sha256 = await self.ctx.run_in_thread(writer.commit)  # fsync: off the reactor
        finally:
            self.ctx.blobs.release(writer.hexdigest())
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        try:
            async with self.ctx.storage.write() as tx:
                # Counted inside the transaction: another result for the
                # same file committed while this one waited for the write
                # (PostgreSQL) must not be given the same name.
                record = releases.get_version(tx, stage, entry["project"], entry["version"])
                if record is None:
                    raise NotFound(f"no release file found at {path}")
                count = sum(1 for link in record["+links"] if link.get("for_relpath") == path)
                basename = f"{path.rsplit('/', 1)[1]}.toxresult-{stamp}-{count}"
                tox_path = f"{path.rsplit('/', 1)[0]}/{basename}"
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
        self.ctx.metrics.uploaded("toxresult", len(data))
        link = {
            "rel": "toxresult",
            "basename": basename,
            "sha256": sha256,
            "size": len(data),
            "relpath": tox_path,
        }
        self.ctx.events.emit(
            UploadEvent(
                stage,
                canonicalize_name(record["name"]),
                record["version"],
                "toxresult",
                link,
                user=auth.identity.username,
            )
        )
        return envelope(request, type="toxresultpath", result=f"{tox_path}#sha256={sha256}")

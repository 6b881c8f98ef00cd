"""
Push (C{POST /<user>/<index>/} with a JSON body, as C{devpi push} sends
it): to another index of this server (L{devpi_tx.model.push}), or to an
external index that takes twine uploads (L{devpi_tx.remote.pypi_upload}).
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from ..logs import logger
from ..model import push as localpush
from ..model.errors import InvalidInput
from ..model.redact import redact_url
from ..remote.pypi_upload import PushTarget, push_release
from .negotiation import read_json
from .render import envelope, error
from .stagehelpers import StageHelpers

log = logger("devpi_tx.releases")


class PushRoutes(StageHelpers):
    """
    Mixin with the push handler; the upload route hands it JSON bodies.
    """

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
        pushed = localpush.parse_push_request(data)
        name, version = pushed.name, pushed.version
        shown_by = self.ctx.registry.shown_by
        record = localpush.release_to_push(self.ctx.storage, stage, name, version, shown_by)
        if pushed.targetindex is None:
            return await self._push_external(request, stage, pushed, record)
        target = pushed.targetindex
        readonly = self._readonly
        target_config = localpush.push_target(self.ctx.storage, target, readonly)
        auth = await self.auth.authenticate(request)
        acl = self.ctx.registry.for_config(target_config).principals_for_upload(target_config)
        if not self.ctx.policy.may_upload(auth.identity, acl):
            if auth.failed:
                return self.deny(request, auth, "")
            return error(request, 401, f"user {auth.identity.username!r} cannot upload to {target!r}")
        async with self.ctx.storage.write() as tx:
            outcome = localpush.push_release(
                tx,
                stage,
                target,
                name,
                version,
                auth.identity.username,
                no_docs=pushed.no_docs,
                only_docs=pushed.only_docs,
                readonly=readonly,
                customizer_for=shown_by,
            )
        self._cleanup(outcome.unused)
        log.info(
            "pushed {name} {version} from {src} to {dst}", name=name, version=version, src=stage, dst=target
        )
        return envelope(request, type="actionlog", result=outcome.actions)

    async def _push_external(
        self, request: IRequest, stage: str, pushed: localpush.PushRequest, record: dict
    ) -> bytes:
        """
        Act like twine against C{posturl}, streaming each file from disk.
        """
        address = request.getHost()
        listener = (address.host, address.port) if hasattr(address, "port") else None
        localpush.check_not_self(pushed, listener, self.ctx.config.outside_url)
        auth = await self.auth.authenticate(request)
        config = self._stage(*stage.split("/"))
        acl = self.ctx.registry.for_config(config).principals_for_upload(config)
        if not self.ctx.policy.may_upload(auth.identity, acl):
            return self.deny(request, auth, f"no permission to push from {stage}")
        target = PushTarget(pushed.posturl, pushed.username, pushed.password, pushed.register_project)
        metadata = {k: v for k, v in record.items() if k != "+links"}
        outcome = await push_release(
            self.ctx.http,
            self.ctx.files,
            target,
            metadata,
            record["+links"],
            no_docs=pushed.no_docs,
            only_docs=pushed.only_docs,
            timeout=self.ctx.config.request_timeout * 6,
            run_in_thread=self.ctx.run_in_thread,
        )
        log.info(
            "pushed {name} {version} from {src} to {url}: {status}",
            name=record["name"], version=record["version"], src=stage, url=redact_url(pushed.posturl),
            status=outcome.status,
        )  # fmt: skip
        return envelope(
            request, outcome.status, type="actionlog", result=outcome.actions, message=outcome.message
        )

"""
The JSON API devpi-client drives: C{/+api}, C{/+status}, C{/+login},
C{/+authcheck}, users and indexes.  Each route parses the request, asks
the model, and renders; the rules live in L{devpi_tx.model}.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

from twisted.internet.defer import ensureDeferred
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from .. import COMPATIBLE_SERVER_VERSION, __version__
from ..auth.throttle import Throttled
from ..customizers import run_hook
from ..events import IndexChangeEvent
from ..logs import logger
from ..model import indexes, releases, users
from ..model.errors import InvalidInput, ModelError
from ..model.names import check_indexname, check_username
from ..storage.errors import StorageUnavailable
from . import namepages, simple
from .changelog import ChangelogRoutes
from .context import ServerContext
from .credentials import Authenticator, AuthResult, too_many_attempts
from .metrics import OpsRoutes
from .negotiation import has_flag, read_json, wants_json
from .pagecache import Page
from .releases import ReleaseRoutes
from .render import dump_json, envelope, error, send_json
from .router import app
from .site import storage_unavailable

log = logger("devpi_tx.api")

#: Features advertised in /+api that devpi-client checks for.
FEATURES = ["server-keyvalue-parsing", "push-no-docs", "push-only-docs"]


def replica_lag(sync, serial: int, now: float) -> tuple[int | None, float | None]:
    """
    How far a replica is behind its primary: in serials, and in seconds
    since it last had the primary's serial (0 when it has it now; L{None}
    before the primary first answered).
    """
    if sync.primary_serial is None:
        return None, None
    behind = max(0, sync.primary_serial - serial)
    if behind == 0:
        return 0, 0.0
    return behind, (now - sync.in_sync_at) if sync.in_sync_at is not None else None


class DevpiAPI(ReleaseRoutes, ChangelogRoutes, OpsRoutes):
    """
    The Klein application.
    """

    app = app

    def __init__(self, context: ServerContext) -> None:
        self.ctx = context
        self.auth = Authenticator(
            context.storage, context.signer, context.passwords, context.throttle, context.authenticators
        )

    # -- helpers -----------------------------------------------------------

    def outside_url(self, request: IRequest) -> str:
        header = request.getHeader("x-outside-url")
        if header:
            return header.rstrip("/")
        if self.ctx.config.outside_url:
            return self.ctx.config.outside_url.rstrip("/")
        host = request.getHeader("host")
        if not host:
            address = request.getHost()
            host = f"{address.host}:{address.port}"
        scheme = "https" if request.isSecure() else "http"
        return f"{scheme}://{host}"

    def deny(self, request: IRequest, auth: AuthResult, message: str, *, as_json: bool = False) -> bytes:
        """
        Refuse a request for lack of permission: 401 when the credentials
        sent were rejected, 403 otherwise.

        @param as_json: answer JSON whatever the client accepts (routes
            whose clients send JSON and read JSON back).
        """
        if auth.failed:
            request.setHeader("WWW-Authenticate", 'Basic realm="pypi"')
            if auth.status == "expired":
                request.setHeader("Location", self.outside_url(request) + "/+login")
                return error(
                    request,
                    401,
                    f"credentials for user {auth.sent_user!r} were rejected: "
                    "the login token expired or is invalid, log in again",
                    as_json=as_json,
                )
            return error(
                request, 401, f"credentials for user {auth.sent_user!r} were rejected", as_json=as_json
            )
        return error(request, 403, message, as_json=as_json)

    @app.handle_errors(ModelError)
    def model_error(self, request: IRequest, failure) -> bytes:
        exc = failure.value
        return error(request, exc.status, exc.message)

    @app.handle_errors(StorageUnavailable)
    def storage_unavailable(self, request: IRequest, failure) -> bytes:
        return storage_unavailable(request, failure.value)

    @app.handle_errors(Throttled)
    def throttled(self, request: IRequest, failure) -> bytes:
        return too_many_attempts(request, failure.value)

    @app.handle_errors(RouteNotFound)
    def not_found(self, request: IRequest, failure) -> bytes:
        # (An encoded slash never gets here: DevpiRequest refuses it first.)
        path = request.path.decode("utf-8", "replace")
        return error(request, 404, f"no such resource: {path}")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure) -> bytes:
        allowed = failure.value.valid_methods or []
        request.setHeader("Allow", ", ".join(allowed))
        return error(request, 405, f"method {request.method.decode()} not allowed here")

    # -- server-wide -------------------------------------------------------

    @app.route("/+api", methods=["GET"])
    @app.route("/<user>/+api", methods=["GET"])
    @app.route("/<user>/<index>/+api", methods=["GET"])
    async def api(self, request: IRequest, user: str | None = None, index: str | None = None):
        if user is not None:
            check_username(user)
        if index is not None:
            check_indexname(index)
        auth = await self.auth.authenticate(request)
        base = self.outside_url(request)
        if auth.status == "ok":
            authstatus = ["ok", auth.identity.username, list(auth.identity.groups)]
        elif auth.status == "expired":
            authstatus = ["expired", auth.sent_user, []]
        else:
            authstatus = ["noauth", "", []]
        result: dict = {
            "login": base + "/+login",
            "authstatus": authstatus,
            "features": FEATURES,
            # Beyond devpi (whose client reads only the keys it knows).
            "index-types": self.ctx.registry.types(),
        }
        if index is not None:
            config = indexes.require_index(self.ctx.storage, user, index)
            result["index"] = f"{base}/{user}/{index}"
            result["simpleindex"] = f"{base}/{user}/{index}/+simple/"
            if not self.ctx.registry.for_config(config).readonly:
                result["pypisubmit"] = f"{base}/{user}/{index}/"
        return envelope(request, type="apiconfig", result=result)

    @app.route("/+status", methods=["GET"])
    def status(self, request: IRequest):
        cfg = self.ctx.config
        storage = self.ctx.storage
        result = {
            "serverdir": cfg.serverdir,
            "uuid": self.ctx.uuid,
            "versioninfo": {"devpi-tx": __version__, "devpi-server": COMPATIBLE_SERVER_VERSION},
            "server-code": os.path.dirname(os.path.dirname(__file__)),
            "host": cfg.host,
            "port": cfg.port,
            "outside-url": cfg.outside_url,
            "serial": storage.serial,
            "last-commit-timestamp": storage.last_commit_timestamp(),
            "event-serial": storage.serial,
            "event-serial-timestamp": storage.last_commit_timestamp(),
            "event-serial-in-sync-at": time.time(),
            "metrics": [],
            # devpi-server's values: a primary and a standalone server
            # are both "MASTER".
            "role": "REPLICA" if cfg.effective_role == "replica" else "MASTER",
            "polling_replicas": self.ctx.changefeed.replicas.snapshot(),
        }
        if self.ctx.mirror_cache is not None:
            result["mirror-cache"] = self.ctx.mirror_cache.status()
        replica = self.ctx.replica
        if replica is not None:
            result.update(replica.sync.status())
            result.update(replica.files.status())
            lag = replica_lag(replica.sync, storage.serial, time.time())
            result["replica-serials-behind"], result["replica-lag-seconds"] = lag
            result["event-serial-in-sync-at"] = replica.sync.in_sync_at
            limit = request.args.get(b"max-lag")
            if limit:
                # For a load balancer's health check: a replica further
                # behind than this many seconds answers 503.
                try:
                    seconds = float(limit[0])
                except ValueError:
                    return error(request, 400, "max-lag must be a number of seconds")
                if lag[1] is None or lag[1] > seconds:
                    return envelope(request, 503, type="status", result=result)
        return envelope(request, type="status", result=result)

    @app.route("/+login", methods=["POST"])
    async def login(self, request: IRequest):
        data = read_json(request)
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("user"), str)
            or not isinstance(data.get("password"), str)
        ):
            raise InvalidInput("Bad request: no user/password specified")
        user, password = data["user"], data["password"]
        ok = await self.auth.check_login(request, user, password)
        if ok is None:
            log.info("login of {user!r} rejected", user=user)
            return error(request, 401, f"user {user!r} could not be authenticated")
        token = self.ctx.signer.issue(user, ok.groups, external=ok.external)
        return envelope(
            request,
            type="proxyauth",
            result={"password": token, "expiration": self.ctx.signer.max_age},
            message="login successful",
        )

    @app.route("/+authcheck", methods=["GET", "HEAD"])
    async def authcheck(self, request: IRequest):
        """
        For nginx C{auth_request}: may the request described by
        C{X-Original-URI} proceed?
        """
        target = request.getHeader("x-original-uri") or request.uri.decode("utf-8", "replace")
        path = urlsplit(target).path or "/"
        request.setHeader("Content-Type", "text/plain")
        if path.endswith("/+api") or path == "/+login":
            return b""
        try:
            self.app.url_map.bind("localhost").match(path, method="GET")
        except Exception:
            request.setResponseCode(403)
            return b""
        try:
            auth = await self.auth.authenticate(request)
        except Throttled as throttled:
            # nginx's auth_request takes only 2xx, 401 and 403.
            request.setHeader("Retry-After", str(throttled.seconds))
            request.setResponseCode(401)
            return b""
        if auth.failed:
            agent = request.getHeader("user-agent") or ""
            request.setResponseCode(403 if "devpi-client" in agent else 401)
        return b""

    # -- users -------------------------------------------------------------

    @app.route("/", methods=["GET"])
    def user_list(self, request: IRequest):
        return self._cached_json(
            request,
            ("+users", None, "list:userconfig"),
            lambda: {"type": "list:userconfig", "result": users.list_users(self.ctx.storage)},
        )

    @app.route("/<user>", methods=["GET"])
    @app.route("/<user>/", methods=["GET"])
    def user_get(self, request: IRequest, user: str):
        record = users.require_user(self.ctx.storage, user)
        return self._cached_json(
            request,
            (f"+user/{user}", None, "userconfig"),
            lambda: {"type": "userconfig", "result": users.public_user(record)},
        )

    def _cached_json(self, request: IRequest, key: tuple, make) -> bytes:
        """
        A JSON answer kept in the page cache, compact (the C encoder), until
        a commit changes a user record (which drops everything) or the
        project names (which drop every key with no project).
        """
        page = self.ctx.page_cache.get(key)
        if page is None:
            page = Page(dump_json(make(), compact=True), "", "application/json")
            self.ctx.page_cache.put(key, page)
        return send_json(request, page.body)

    @app.route("/<user>", methods=["PUT"])
    @app.route("/<user>/", methods=["PUT"])
    async def user_create(self, request: IRequest, user: str):
        auth = await self.auth.authenticate(request)
        if not self.ctx.policy.may_create_user(auth.identity):
            return self.deny(request, auth, f"no permission to create user {user!r}")
        data = read_json(request)
        fields = users.validate_create(self.ctx.storage, user, data)
        pwhash = None
        if "pwhash" not in fields:
            pwhash = await self.ctx.passwords.hash(data["password"])
        async with self.ctx.storage.write() as tx:
            record = users.create_user(tx, user, fields, pwhash)
        log.info("created user {user!r}", user=user)
        return envelope(request, 201, type="userconfig", result=users.public_user(record))

    @app.route("/<user>", methods=["PATCH"])
    @app.route("/<user>/", methods=["PATCH"])
    async def user_modify(self, request: IRequest, user: str):
        auth = await self.auth.authenticate(request)
        record = users.require_user(self.ctx.storage, user)
        data = read_json(request)
        changes, password, password_only = users.plan_modify(record, data)
        policy, identity = self.ctx.policy, auth.identity
        allowed = (
            policy.may_change_password(identity, user)
            if password_only
            else policy.may_modify_user(identity, user)
        )
        if not allowed:
            return self.deny(request, auth, f"no permission to modify user {user!r}")
        pwhash = None if password is None else await self.ctx.passwords.hash(password)
        async with self.ctx.storage.write() as tx:
            users.modify_user(tx, user, changes, pwhash)
        if pwhash is not None:
            self.ctx.passwords.forget_all()
            log.info("password of user {user!r} changed", user=user)
            if identity.username == user:
                token = self.ctx.signer.issue(user)
                return envelope(
                    request,
                    type="userpassword",
                    result={"password": token, "expiration": self.ctx.signer.max_age},
                    message="user updated, new proxy auth",
                )
        return envelope(request, message="user updated")

    @app.route("/<user>", methods=["DELETE"])
    @app.route("/<user>/", methods=["DELETE"])
    async def user_delete(self, request: IRequest, user: str):
        auth = await self.auth.authenticate(request)
        if not self.ctx.policy.may_delete_user(auth.identity, user):
            return self.deny(request, auth, f"no permission to delete user {user!r}")
        unused: set[str] = set()
        async with self.ctx.storage.write() as tx:
            for stage in users.delete_user(tx, user):
                unused |= releases.delete_stage_data(tx, stage)
        self._cleanup(unused)
        log.info("deleted user {user!r}", user=user)
        return envelope(request, message=f"user {user!r} deleted")

    # -- indexes -----------------------------------------------------------

    @app.route("/<user>/<index>", methods=["GET"])
    @app.route("/<user>/<index>/", methods=["GET"])
    def index_get(self, request: IRequest, user: str, index: str):
        config = dict(indexes.require_index(self.ctx.storage, user, index))
        if simple.is_installer(request) and not wants_json(request):
            return self.simple_list(request, user, index)
        if not has_flag(request, "no_projects"):
            stage = f"{user}/{index}"
            if self.ctx.registry.is_mirror(config):
                if not config.get("mirror_no_project_list") and self.ctx.project_lists.has_list(stage):
                    # An upstream's list: written to disk by a thread.
                    return ensureDeferred(self._mirror_index_json(request, stage, config))
                config["projects"] = self.ctx.mirrors.cached_projects(stage)
            else:
                # Kept until a commit adds or removes a project, or changes
                # the user record (the page cache's rule for lists).
                key = (stage, None, "indexconfig")
                page = self.ctx.page_cache.get(key)
                if page is None:
                    names = self.ctx.project_names.get(stage)
                    customizer = self.ctx.registry.shown_by(config)
                    flags = customizer.projects_filter(config, list(names)) if customizer.filters else None
                    if flags is None:
                        body = namepages.index_json(indexes.public_config(config), names)
                    else:
                        # The index's own projects, as its type shows them.
                        shown = [name for name, keep in zip(names, flags, strict=True) if keep]
                        result = dict(indexes.public_config(config), projects=shown)
                        body = dump_json({"type": "indexconfig", "result": result}, compact=True)
                    page = Page(body, "", "application/json")
                    self.ctx.page_cache.put(key, page)
                return send_json(request, page.body)
        return envelope(request, type="indexconfig", result=indexes.public_config(config))

    async def _mirror_index_json(self, request: IRequest, stage: str, config: dict):
        rendered = await self.ctx.list_pages.index_json(
            stage, indexes.public_config(config), self.ctx.project_lists.path(stage)
        )
        return rendered.serve(request, "application/json")

    @app.route("/<user>/<index>", methods=["PUT"])
    @app.route("/<user>/<index>/", methods=["PUT"])
    async def index_create(self, request: IRequest, user: str, index: str):
        # The user first, as devpi's routes look it up: a missing user is
        # 404 whoever asks (also with the token of a user just deleted).
        users.require_user(self.ctx.storage, user)
        auth = await self.auth.authenticate(request)
        if not self.ctx.policy.may_create_index(auth.identity, user):
            return self.deny(request, auth, f"no permission to create index {user}/{index}")
        data = read_json(request)
        async with self.ctx.storage.write() as tx:
            config = indexes.create_index(tx, self.ctx.registry, user, index, data)
        log.info("created index {stage}", stage=f"{user}/{index}")
        run_hook(self.ctx.registry.for_config(config), "on_created", f"{user}/{index}", config)
        self.ctx.events.emit(
            IndexChangeEvent(f"{user}/{index}", "created", None, config, auth.identity.username)
        )
        return envelope(request, type="indexconfig", result=indexes.public_config(config))

    @app.route("/<user>/<index>", methods=["PATCH"])
    @app.route("/<user>/<index>/", methods=["PATCH"])
    async def index_modify(self, request: IRequest, user: str, index: str):
        users.require_user(self.ctx.storage, user)
        auth = await self.auth.authenticate(request)
        old = indexes.get_index(self.ctx.storage, user, index)
        extra = self.ctx.registry.for_config(old).principals_for_modify(old) if old else frozenset()
        if not self.ctx.policy.may_modify_index(auth.identity, user, extra):
            return self.deny(request, auth, f"no permission to modify index {user}/{index}")
        data = read_json(request)
        async with self.ctx.storage.write() as tx:
            # What the hooks and events are told it was: as the transaction
            # finds it (another change may have committed while this one
            # waited for the write, on PostgreSQL).
            old = indexes.get_index(tx, user, index)
            config = indexes.modify_index(
                tx,
                self.ctx.registry,
                user,
                index,
                data,
                error_on_noop=has_flag(request, "error_on_noop"),
            )
        if old is not None and config != old:
            run_hook(self.ctx.registry.for_config(config), "on_modified", f"{user}/{index}", old, config)
            self.ctx.events.emit(
                IndexChangeEvent(f"{user}/{index}", "modified", old, config, auth.identity.username)
            )
        return envelope(request, type="indexconfig", result=indexes.public_config(config))

    @app.route("/<user>/<index>", methods=["DELETE"])
    @app.route("/<user>/<index>/", methods=["DELETE"])
    async def index_delete(self, request: IRequest, user: str, index: str):
        users.require_user(self.ctx.storage, user)
        auth = await self.auth.authenticate(request)
        if not self.ctx.policy.may_modify_index(auth.identity, user):
            return self.deny(request, auth, f"no permission to delete index {user}/{index}")
        old = indexes.get_index(self.ctx.storage, user, index)
        async with self.ctx.storage.write() as tx:
            indexes.delete_index(tx, user, index)
            unused = releases.delete_stage_data(tx, f"{user}/{index}")
        self._cleanup(unused)
        self.ctx.events.emit(
            IndexChangeEvent(f"{user}/{index}", "deleted", old, None, auth.identity.username)
        )
        log.info("deleted index {stage}", stage=f"{user}/{index}")
        return envelope(request, 201, message=f"index {user}/{index} deleted")

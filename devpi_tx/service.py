"""
The running server: a MultiService with one web server per listening
endpoint, built from a L{ServerConfig}.
"""

from __future__ import annotations

import json
import logging.config
import os
from collections.abc import Callable, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThread
from twisted.logger import STDLibLogObserver, globalLogPublisher

from .auth.passwords import PasswordChecker
from .auth.replicatokens import ReplicaTokens
from .auth.throttle import PasswordThrottle
from .auth.tokens import TokenSigner
from .config import ServerConfig
from .customizers import default_registry
from .customizers.plugins import FoundType, find_index_types
from .events import EventDispatcher
from .interfaces import IAuthenticator, ICoordinator, IEventListener
from .logs import logger, set_debug
from .mirror.cachebound import MirrorCache, MirrorCacheService
from .mirror.client import UpstreamClient
from .mirror.files import MirrorFiles
from .mirror.http import UpstreamHTTP, make_http_client
from .mirror.pages import MirrorPages
from .mirror.projectlist import ProjectLists, ProjectListService
from .model import releases
from .model.acl import Policy, parse_restrict_modify
from .model.blobs import BlobLedger
from .model.memo import StateMemo
from .model.names_index import ProjectNames
from .model.versions_memo import VersionsMemo
from .pipconfig import default_mirror_url
from .plugins import FoundPlugin, find_authenticators, find_event_listeners
from .replica.files import FileOptions, FileReplicator
from .replica.mirrors import via_primary
from .replica.primary import PrimaryCertificatePolicy, PrimaryLink
from .replica.sync import ReplicaSync
from .serverdir import (
    LAYOUT,
    ServerDirLock,
    check_replica_secret,
    check_role,
    ensure_secret,
    initialize,
    is_initialized,
    read_nodeinfo,
    write_nodeinfo,
)
from .startup import FoundPlugins, HoldServerDir, ListeningService, listen_labels
from .storage import coordination as nodes
from .storage.backends import coordinator_for, open_storage_for, storage_service
from .storage.filestore import open_file_store
from .web.accesslog import open_access_log
from .web.api import DevpiAPI
from .web.changefeed import ChangeFeed
from .web.context import ReplicaParts, ServerContext
from .web.derivedblobs import DerivedBlobs
from .web.installer import InstallerFastPath
from .web.listpages import ListPages
from .web.pagecache import PageCache
from .web.proxy import ForwardWrites, WriteProxy
from .web.readguard import ReadGuard
from .web.readyourwrites import SerialWait
from .web.sendfile import SendfileWorkers
from .web.site import DevpiSite

log = logger("devpi_tx.service")


class OrderedMultiService(MultiService):
    """
    A L{MultiService} whose children stop one after another, last added
    first, each once the one before has finished stopping: the web servers
    stop before the background work, and the state closes after everything
    that writes to it.  (L{MultiService} stops them all at once.)
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        d: Deferred[None] = succeed(None)
        for child in reversed(list(self)):
            d.addCallback(lambda _, child=child: child.stopService())
            d.addErrback(lambda failure: log.failure("stopping a service failed", failure))
        return d.addCallback(lambda _: None)


class CallOnStop(Service):
    """
    A service that does one thing when the server stops (close the state,
    the upstream pool; stop a background writer).
    """

    def __init__(self, name: str, on_stop: Callable[[], object]) -> None:
        self.setName(name)
        self._on_stop = on_stop

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return maybeDeferred(self._on_stop).addCallback(lambda _: None)


def _configure_stdlib_logging(path: str) -> STDLibLogObserver:
    """
    C{--logger-cfg}, as devpi-server reads it: a JSON (C{.json}) or YAML
    file (the safe loader) for C{logging.config.dictConfig}; the server's
    log events then also go to the standard library's logger C{devpi_tx}.
    Return the observer that sends them.
    """
    import yaml

    with open(path, encoding="utf-8") as f:
        text = f.read()
    data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    logging.config.dictConfig(data)
    observer = STDLibLogObserver(name="devpi_tx")
    globalLogPublisher.addObserver(observer)
    return observer


def _logged(found: list[FoundPlugin], kind: str) -> list:
    for plugin in found:
        log.info(
            "{kind} plugin {name} from {dist} {version}",
            kind=kind,
            name=plugin.entry_point,
            dist=plugin.distribution,
            version=plugin.version,
        )
    return [plugin.provider for plugin in found]


def build_context(
    config: ServerConfig,
    passwords: PasswordChecker | None = None,
    run_in_thread=None,
    upstream_http: UpstreamHTTP | None = None,
    clock=None,
    reactor=None,
    on_fatal: Callable[[str], object] | None = None,
    index_types: list[FoundType] | None = None,
    authenticators: Sequence[IAuthenticator] | None = None,
    event_listeners: Sequence[IEventListener] | None = None,
    coordinator: ICoordinator | None = None,
) -> ServerContext:
    """
    Open (initialising on first start) the server directory and build what
    request handlers share.

    @param index_types: the index types of plugins; those of the installed
        distributions' entry points if not given (each logged).
    @param authenticators: the L{IAuthenticator} plugins; and
    @param event_listeners: the L{IEventListener} plugins: those of the
        installed distributions' entry points if not given (each logged).

    @param reactor: what timers and upstream connections run on; the
        global reactor if not given.
    @param clock: with one, non-durable transactions (mirrored pages) are
        written in batches on it.
    @param upstream_http: the client for other servers; one over the agent
        stack of L{make_http_client} if not given.
    @param on_fatal: on a replica, what to do when replication must stop
        (the primary changed, say); stop the reactor by default.
    @param coordinator: a L{ICoordinator}, a single node's by default.
    """
    if reactor is None:
        from twisted.internet import reactor
    if config.mirror_cache_size is not None and config.effective_role == "replica":
        raise ValueError(
            "--mirror-cache-size: a replica's state follows its primary's; bound the primary's "
            "mirror cache (the files it evicts are removed from its replicas too)"
        )
    if index_types is None:
        index_types = find_index_types()
    for found in index_types:
        log.info(
            "index type {type!r} from {dist} {version} (entry point {name})",
            type=found.type_name,
            dist=found.distribution,
            version=found.version,
            name=found.entry_point,
        )
    if authenticators is None:
        authenticators = _logged(find_authenticators(), "authenticator")
    if event_listeners is None:
        event_listeners = _logged(find_event_listeners(), "event listener")
    if not is_initialized(config.serverdir):
        for line in initialize(config):
            if line.startswith("WARNING"):
                log.warn("init: {line}", line=line)
            else:
                log.info("init: {line}", line=line)
    nodeinfo = read_nodeinfo(config.serverdir)
    check_role(config, nodeinfo)
    check_replica_secret(config)
    secret = ensure_secret(config.secret_path)
    # (A server's PostgreSQL writes wait in a thread of their own; a
    # caller's run_in_thread, a test's, is used for them too.)
    storage = open_storage_for(config, clock, run_in_thread=run_in_thread, reactor=reactor)
    run_in_thread = run_in_thread or deferToThread
    role = config.effective_role
    if nodeinfo.get("layout", 1) < LAYOUT and role != "replica":
        # (A replica's state is the primary's: the primary's migration
        # reaches it as an entry.)
        with storage.transaction() as tx:
            moved = releases.migrate_links(tx)
        log.info("state layout {layout}: file links of {moved} versions moved", layout=LAYOUT, moved=moved)
        nodeinfo = dict(nodeinfo, layout=LAYOUT)
        write_nodeinfo(config.serverdir, nodeinfo)
    if role in ("primary", "standalone") and nodeinfo.get("role", "standalone") not in (role, "replica"):
        # The role this node last ran as (a former replica's directory is
        # the replica side's to judge).
        nodeinfo = dict(nodeinfo, role=role)
        write_nodeinfo(config.serverdir, nodeinfo)
    files = open_file_store(config)
    if upstream_http is None:
        tls_policy = None
        if role == "replica" and config.replica_cert:
            with open(config.replica_cert, "rb") as pem:
                tls_policy = PrimaryCertificatePolicy(config.primary_url, pem.read())
        upstream_http = make_http_client(
            reactor, connect_timeout=config.request_timeout, tls_policy=tls_policy
        )
    http = upstream_http
    page_cache = PageCache()
    storage.subscribe(page_cache.changed)
    blobs = BlobLedger(storage, files)

    list_pages = ListPages(os.path.join(config.serverdir, "+mirrorlists", "pages"), run_in_thread)
    list_pages.clear_directory()
    replica_tokens = ReplicaTokens(secret, clock=reactor.seconds)
    replica = None
    if role == "replica":
        replica = _replica_parts(
            config, nodeinfo, storage, files, http, replica_tokens, reactor, run_in_thread, on_fatal
        )
    registry = default_registry(config.mirror_url or default_mirror_url(), index_types)
    coordinator = coordinator or coordinator_for(
        config, reactor, run_in_thread, nodes.holder_id(nodeinfo["uuid"])
    )
    # One upstream fetch of a page or a file across the nodes.
    leases = nodes.FetchLeases(coordinator, storage, reactor, bound=config.request_timeout * 12)
    uuid = nodeinfo["uuid"]
    if coordinator.shared and role != "replica":
        uuid = nodes.shared_uuid(storage, uuid)
    context = ServerContext(
        config=config,
        storage=storage,
        registry=registry,
        policy=Policy(parse_restrict_modify(config.restrict_modify)),
        signer=TokenSigner(secret),
        passwords=passwords or PasswordChecker(),
        throttle=PasswordThrottle(reactor),
        uuid=uuid,
        files=files,
        run_in_thread=run_in_thread,
        http=http,
        page_cache=page_cache,
        memo=StateMemo(storage),
        derived_blobs=DerivedBlobs(files, run_in_thread, reactor, blobs.wanted),
        list_pages=list_pages,
        mirrors=MirrorPages(
            storage,
            UpstreamClient(http, config.request_timeout),
            default_expiry=config.mirror_cache_expiry,
            offline=config.offline_mode,
            via_primary=None
            if replica is None
            else via_primary(http, replica.link, replica.sync.wait_for_serial, config.proxy_timeout),
            leases=leases,
        ),
        # Files and project lists may take long to arrive whole; each chunk
        # must still come within this allowance.
        mirror_files=MirrorFiles(
            storage,
            files,
            http,
            timeout=config.request_timeout * 12,
            run_in_thread=run_in_thread,
            offline=config.offline_mode,
            blobs=blobs,
            leases=leases,
        ),
        project_lists=ProjectLists(
            storage,
            http,
            config.serverdir,
            timeout=config.request_timeout * 12,
            on_change=lambda: page_cache.invalidate_project(None),
            default_expiry=config.mirror_cache_expiry,
            is_mirror=registry.is_mirror,
        ),
        blobs=blobs,
        project_names=ProjectNames(storage),
        versions=VersionsMemo(storage),
        replica_tokens=replica_tokens,
        changefeed=ChangeFeed(storage, reactor),
        replica=replica,
        authenticators=tuple(authenticators),
        events=EventDispatcher(event_listeners, reactor),
        coordinator=coordinator,
    )
    if config.mirror_cache_size is not None:
        context.mirror_cache = context.mirror_files.cache = MirrorCache(
            storage,
            files,
            blobs,
            limit=config.mirror_cache_size,
            clock=reactor,
            run_in_thread=run_in_thread,
            is_mirror=registry.is_mirror,
        )
    return context


def _replica_parts(
    config: ServerConfig,
    nodeinfo: dict,
    storage,
    files,
    http: UpstreamHTTP,
    tokens: ReplicaTokens,
    reactor,
    run_in_thread,
    on_fatal: Callable[[str], object] | None,
) -> ReplicaParts:
    """
    A replica's link to its primary (the primary's uuid kept in
    C{.nodeinfo}), its sync services and its relay of writes.
    """
    serverdir = config.serverdir

    # The primary's uuid as .nodeinfo holds it, read once: it changes only
    # when saved (every request to the primary sends it).
    known = {"primary-uuid": nodeinfo.get("primary-uuid")}

    def save_primary_uuid(primary_uuid: str) -> None:
        known["primary-uuid"] = primary_uuid
        write_nodeinfo(serverdir, dict(read_nodeinfo(serverdir), **{"primary-uuid": primary_uuid}))

    def stop(message: str) -> None:
        # The sync service has logged why.
        if reactor.running:
            # Exit code 3 once the services have stopped, as devpi's replica.
            reactor.addSystemEventTrigger("after", "shutdown", os._exit, 3)
            reactor.stop()

    replica_uuid = nodeinfo["uuid"]
    link = PrimaryLink(
        config.primary_url,
        replica_uuid=replica_uuid,
        token=lambda: tokens.issue(replica_uuid),
        load_primary_uuid=lambda: known["primary-uuid"],
        save_primary_uuid=save_primary_uuid,
        outside_url=config.outside_url,
    )
    search = config.replica_file_search_path
    replicator = FileReplicator(
        storage,
        files,
        http,
        link,
        clock=reactor,
        run_in_thread=run_in_thread,
        options=FileOptions(
            threads=config.file_replication_threads,
            skip_indexes=config.file_replication_skip_indexes,
            search_paths=(search,) if search else (),
            hard_links=config.hard_links,
            timeout=config.request_timeout * 12,
        ),
    )
    sync = ReplicaSync(storage, http, link, clock=reactor, on_fatal=on_fatal or stop, files=replicator)
    proxy = WriteProxy(
        config.primary_url,
        http,
        sync.wait_for_serial,
        link.identity_headers,
        config.proxy_timeout,
        outside_url=config.outside_url,
    )
    return ReplicaParts(link, sync, replicator, proxy)


def make_site(context: ServerContext, *, reactor=None, api: DevpiAPI | None = None) -> DevpiSite:
    """
    The site serving C{context}; its connections' timers (idle timeouts)
    go to C{reactor} (Twisted's global one by default), and so do the
    timers and threads of what it serves (see L{web.sendfile}).
    """
    api = api if api is not None else DevpiAPI(context)
    root = ReadGuard(InstallerFastPath(api.app.resource(), api), api)
    stream_receiver = api.upload_receiver
    if context.replica is not None:
        # Writes go to the primary, their bodies spooled for it (never to
        # the upload receiver: a replica stores nothing of its own).
        root = ForwardWrites(root, context.replica.proxy)
        stream_receiver = context.replica.proxy.body_receiver
    site = DevpiSite(
        root,
        stream_receiver=stream_receiver,
        storage=context.storage,
        uuid=context.uuid,
        config=context.config,
        access_log=open_access_log(context.config.access_log),
        request_stats=None if context.config.no_metrics else context.metrics.requests,
        timeout=120,
        reactor=reactor,
    )
    site.noisy = False
    site.serial_wait = SerialWait.of(context)
    #: The threads large files are sent from (stopped by make_service's tree).
    site.sendfile_workers = SendfileWorkers(site.reactor)
    return site


def make_service(
    config: ServerConfig,
    reactor,
    lock: ServerDirLock | None = None,
    plugins: FoundPlugins | None = None,
    coordinator: ICoordinator | None = None,
) -> MultiService:
    """
    The server: one service tree, built from the config, whose children
    start in this order and stop in the reverse one, each after the last:

    0. with C{lock} (the server directory's, which the caller took), what
       keeps it and writes this process's pid into it,
    1. the state (closed last), and on a shared state (PostgreSQL) the
       watcher of the other nodes' commits and the coordination with them,
    2. the changelog streams to replicas (ended before the state closes),
    3. the upstream client's connection pool,
    4. the writer of derived blobs,
    5. the refresher of upstream project lists (not offline),
    6. the eviction of mirrored files (with --mirror-cache-size), while
       this node leads it among those sharing the state (L{LeaderOnly}),
    7. the threads that send large files,
    8. one web server per listening endpoint.
    """
    if config.logger_cfg:
        _configure_stdlib_logging(config.logger_cfg)
    set_debug(config.debug)
    found = {}
    if plugins is not None:
        # Loaded by the start-up checks: not loaded again.
        found = {
            "index_types": plugins.index_types,
            "authenticators": _logged(plugins.authenticators, "authenticator"),
            "event_listeners": _logged(plugins.event_listeners, "event listener"),
        }
    context = build_context(config, clock=reactor, reactor=reactor, coordinator=coordinator, **found)
    root = OrderedMultiService()
    if lock is not None:
        HoldServerDir(lock).setServiceParent(root)
    CallOnStop("state", context.storage.close).setServiceParent(root)
    watcher = storage_service(context.storage, reactor)
    if watcher is not None:
        # Other nodes' commits, on a state they share (stopped before it closes).
        watcher.setServiceParent(root)
    nodes.CoordinatorService(context.coordinator).setServiceParent(root)
    CallOnStop("changefeed", context.changefeed.stop).setServiceParent(root)
    CallOnStop("upstream", context.http.close_idle).setServiceParent(root)
    if context.replica is not None:
        # Files first: the sync hands it the files of each entry it applies.
        context.replica.files.setServiceParent(root)
        context.replica.sync.setServiceParent(root)
    CallOnStop("derived-blobs", context.derived_blobs.stop).setServiceParent(root)
    if not config.offline_mode:
        # Looked at every 5 minutes at most; fetched only once stale.
        interval = min(config.mirror_cache_expiry, 300)
        ProjectListService(context.project_lists, interval, reactor).setServiceParent(root)
    if context.mirror_cache is not None:
        cache = MirrorCacheService(context.mirror_cache, reactor)
        leader = nodes.LeaderOnly(context.coordinator, "mirror-cache", cache, reactor)
        leader.setServiceParent(root)
        if context.coordinator.shared:
            context.mirror_files.cache = nodes.WhileLeading(leader, context.mirror_cache)
    site = make_site(context, reactor=reactor)
    CallOnStop("sendfile", site.sendfile_workers.stop).setServiceParent(root)
    for description in config.endpoints:
        endpoint = serverFromString(reactor, description)
        labels = listen_labels(config, description)
        ListeningService(endpoint, site, description, labels).setServiceParent(root)
        log.info(
            "devpi-tx serving {serverdir} on {endpoint}",
            serverdir=config.serverdir,
            endpoint=description,
        )
    log.info("serial {serial}, uuid {uuid}", serial=context.storage.serial, uuid=context.uuid)
    return root

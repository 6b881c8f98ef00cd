"""
The running server: a MultiService with one web server per listening
endpoint, built from a L{ServerConfig}.
"""

from __future__ import annotations

import json
import logging.config
import os

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import reactor as global_reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, STDLibLogObserver, globalLogPublisher

from .auth.passwords import PasswordChecker
from .auth.tokens import TokenSigner
from .config import ServerConfig
from .customizers import default_registry
from .mirror.projectlist import project_list_service
from .model.acl import Policy, parse_restrict_modify
from .pipconfig import default_mirror_url
from .serverdir import ensure_secret, initialize, is_initialized, read_nodeinfo
from .storage.files import LocalFileStore
from .storage.sqlite import open_storage
from .web.accesslog import open_access_log
from .web.api import DevpiAPI, ServerContext
from .web.installer import InstallerFastPath
from .web.site import DevpiSite

log = Logger(namespace="devpi_tx.service")


class StorageService(MultiService):
    """
    Owns the state: closes it (and what writes to it in the background)
    when the server stops.
    """

    def __init__(self, context) -> None:
        super().__init__()
        self.context = context

    def stopService(self):
        result = super().stopService()
        self.context.close()
        return result


def _configure_stdlib_logging(path: str) -> None:
    import yaml

    with open(path, encoding="utf-8") as f:
        text = f.read()
    data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    logging.config.dictConfig(data)
    globalLogPublisher.addObserver(STDLibLogObserver(name="devpi_tx"))


def build_context(
    config: ServerConfig,
    passwords: PasswordChecker | None = None,
    run_in_thread=None,
    upstream_http=None,
    clock=None,
) -> ServerContext:
    """
    Open (initialising on first start) the server directory and build what
    request handlers share.  With a C{clock}, non-durable transactions
    (mirrored pages) are written in batches.
    """
    if not is_initialized(config.serverdir):
        for line in initialize(config):
            if line.startswith("WARNING"):
                log.warn("init: {line}", line=line)
            else:
                log.info("init: {line}", line=line)
    nodeinfo = read_nodeinfo(config.serverdir)
    secret = ensure_secret(config.secret_path)
    storage = open_storage(config.serverdir, clock=clock)
    return ServerContext(
        config=config,
        storage=storage,
        registry=default_registry(config.mirror_url or default_mirror_url()),
        policy=Policy(parse_restrict_modify(config.restrict_modify)),
        signer=TokenSigner(secret),
        passwords=passwords or PasswordChecker(),
        uuid=nodeinfo["uuid"],
        files=LocalFileStore(os.path.join(config.serverdir, "+files")),
        **({"run_in_thread": run_in_thread} if run_in_thread else {}),
        **({"upstream_http": upstream_http} if upstream_http is not None else {}),
    )


def make_site(context: ServerContext, *, reactor=None, api: DevpiAPI | None = None) -> DevpiSite:
    """
    The site serving C{context}; its connections' timers (idle timeouts)
    go to C{reactor} (Twisted's global one by default), and so do the
    timers and threads of what it serves (see L{web.sendfile}).
    """
    api = api if api is not None else DevpiAPI(context)
    site = DevpiSite(
        InstallerFastPath(api.app.resource(), api),
        stream_receiver=api.upload_receiver,
        storage=context.storage,
        uuid=context.uuid,
        config=context.config,
        access_log=open_access_log(context.config.access_log),
        timeout=120,
        reactor=reactor,
    )
    site.noisy = False
    return site


def make_service(config: ServerConfig, reactor=global_reactor) -> MultiService:
    if config.logger_cfg:
        _configure_stdlib_logging(config.logger_cfg)
    context = build_context(config, clock=reactor)
    root = StorageService(context)
    site = make_site(context, reactor=reactor)
    if not config.offline_mode:
        lists = project_list_service(context.project_lists, config.mirror_cache_expiry)
        lists.setServiceParent(root)
    for description in config.endpoints:
        endpoint = serverFromString(reactor, description)
        service = StreamServerEndpointService(endpoint, site)
        service._raiseSynchronously = True
        service.setServiceParent(root)
        log.info(
            "devpi-tx serving {serverdir} on {endpoint}",
            serverdir=config.serverdir,
            endpoint=description,
        )
    log.info("serial {serial}, uuid {uuid}", serial=context.storage.serial, uuid=context.uuid)
    return root

"""
What the request handlers share: the state, the file store, the mirror
machinery and the caches, built once by the composition root
(L{devpi_tx.service.build_context}) and handed to L{DevpiAPI}.

Nothing is made here: a test or the service builds each part with the
reactor and clients it wants, so the handlers never reach for globals.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from ..auth.passwords import PasswordChecker
from ..auth.replicatokens import ReplicaTokens
from ..auth.throttle import PasswordThrottle
from ..auth.tokens import TokenSigner
from ..config import ServerConfig
from ..customizers import CustomizerRegistry
from ..events import EventDispatcher, NoEvents
from ..interfaces import IFileStore
from ..mirror.cachebound import MirrorCache
from ..mirror.files import MirrorFiles
from ..mirror.http import UpstreamHTTP
from ..mirror.pages import MirrorPages
from ..mirror.projectlist import ProjectLists
from ..model import stages
from ..model.acl import Policy
from ..model.blobs import BlobLedger
from ..model.memo import StateMemo
from ..model.names_index import ProjectNames
from ..model.versions_memo import VersionsMemo
from ..replica.files import FileReplicator
from ..replica.primary import PrimaryLink
from ..replica.sync import ReplicaSync
from ..storage.coordination import LocalCoordinator
from .changefeed import ChangeFeed
from .derivedblobs import DerivedBlobs
from .listpages import ListPages
from .metrics import ServerMetrics
from .pagecache import PageCache
from .proxy import WriteProxy


@attrs.define
class ReplicaParts:
    """
    What a replica adds to a server: its link to the primary, the services
    that follow the primary's state and files, and the relay of writes.
    """

    link: PrimaryLink
    sync: ReplicaSync
    files: FileReplicator
    proxy: WriteProxy


@attrs.define
class ServerContext:
    """
    Everything a request handler needs.

    @ivar http: the one client for requests to other servers (upstream
        indexes, their files, push targets).
    @ivar blobs: which blobs must stay on disk (held by uploads in flight,
        or linked).
    @ivar throttle: failed password checks, and who must wait before the
        next (every password check asks it first).
    @ivar replica_tokens: checks the Bearer tokens of replicas.
    @ivar changefeed: the changelog as a primary serves it to replicas,
        and the replicas seen.
    """

    config: ServerConfig
    storage: object
    registry: CustomizerRegistry
    policy: Policy
    signer: TokenSigner
    passwords: PasswordChecker
    throttle: PasswordThrottle
    uuid: str
    files: IFileStore
    run_in_thread: Callable
    http: UpstreamHTTP
    page_cache: PageCache
    memo: StateMemo
    derived_blobs: DerivedBlobs
    list_pages: ListPages
    mirrors: MirrorPages
    mirror_files: MirrorFiles
    project_lists: ProjectLists
    blobs: BlobLedger
    project_names: ProjectNames
    versions: VersionsMemo
    replica_tokens: ReplicaTokens
    changefeed: ChangeFeed
    #: Set on a replica only.
    replica: ReplicaParts | None = None
    started: float = attrs.field(factory=time.time)
    #: Counters of requests and uploads, and the registry /+metrics shows.
    metrics: ServerMetrics = attrs.field(factory=ServerMetrics)
    #: The bound on the mirrored files kept (--mirror-cache-size), if any.
    mirror_cache: MirrorCache | None = None
    #: The authenticator plugins (L{IAuthenticator}), asked in order.
    authenticators: tuple = ()
    #: Tells the event listener plugins of uploads, removals and index changes.
    events: EventDispatcher = attrs.field(factory=NoEvents)
    #: What this node agrees with the other nodes sharing its state on
    #: (L{ICoordinator}); a single node's by default.
    coordinator: object = attrs.field(factory=LocalCoordinator)

    # The ledger's holds and sound blobs, as tests and older callers know them.
    pending_blobs = property(lambda self: self.blobs.held)
    sound_blobs = property(lambda self: self.blobs.sound)

    def close(self) -> None:
        """
        What the service tree does when it stops, for tests that build a
        context without one: stop the writer of derived blobs, end the
        changelog streams, close the state and the kept upstream
        connections.
        """
        self.derived_blobs.stop()
        self.changefeed.stop()
        self.storage.close()
        self.http.close_idle()

    def list_sources(self, stagename: str) -> list[tuple[str, list[str] | str]]:
        """
        Where each stage of the chain takes its project names from: the
        state (a list), or for a mirror with an upstream list, that list's
        file (a path).
        """
        sources: list[tuple[str, list[str] | str]] = []
        for stage in stages.resolution_order(self.storage, stagename, self.registry.is_mirror):
            if not stage.is_mirror:
                sources.append((stage.name, self.project_names.get(stage.name)))
            elif not stage.config.get("mirror_no_project_list") and self.project_lists.has_list(stage.name):
                sources.append((stage.name, self.project_lists.path(stage.name)))
            else:
                sources.append((stage.name, self.mirrors.cached_projects(stage.name)))
        return sources

    def mirror_links(self, stage, project: str) -> tuple[list[dict], list[str]]:
        """
        Links a mirror stage contributes to a project page: its cached page.
        """
        return self.mirrors.links(stage, project)

    def refresh_project(self, stage: str, project: str) -> None:
        """
        Make the next request fetch a mirrored project again.
        """
        self.mirrors.forget(stage, project)
        self.page_cache.invalidate_project(project)

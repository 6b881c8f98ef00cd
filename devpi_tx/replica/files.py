"""
The files a replica's state names, fetched into its file store.

Every applied entry that links a file (a C{file/<relpath>} key) whose blob
is not stored queues that file; a few at a time (C{threads}) are taken
from a local copy (C{search_paths}: another server directory on this
machine, ours or devpi-server's, copied or hard-linked) or downloaded from
the primary.  Each is hashed as it arrives and stored only if it has the
digest its entry says (the file store's writer gives it its final name
only when committed, so nothing half-fetched or wrong is ever served); a
failure is logged, kept in L{FileReplicator.errors} and tried again later,
with a pause that doubles each time.

A request for a file not fetched yet calls L{FileReplicator.fetch}, which
shares the download with the queue: one download per blob, whoever asked
first.  Blobs whose last reference an entry drops are removed, as the
primary removes them.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater

from ..interfaces import IFileStore, IStorage
from ..logs import logger
from ..mirror.bodies import collect_until_idle, read_body
from ..mirror.errors import UpstreamError, upstream_error
from ..mirror.http import UpstreamHTTP, ask_upstream
from ..model import indexes, releases
from ..model.errors import InvalidInput, NotFound
from ..singleflight import SingleFlight
from . import localcopy
from .primary import PrimaryLink

log = logger("devpi_tx.replica")

#: File keys looked at per turn of the reactor when scanning the state.
SCAN_BATCH = 1000


@attrs.frozen
class FileOptions:
    """
    @ivar threads: downloads (or copies) at once for the queue
        (devpi's C{--file-replication-threads}).
    @ivar skip_indexes: files of these indexes are not queued, only
        fetched when asked for: C{user/index} names, index types
        (C{mirror}, C{stage}), or C{all}.
    @ivar search_paths: directories to look in before downloading: a
        devpi-tx file store (C{<dir>/<sha[:3]>/<sha[3:]>}) or a devpi
        C{+files} directory (C{<dir>/<relpath>}), or a server directory
        holding either as C{+files}.
    @ivar hard_links: link files found there instead of copying them.
    @ivar timeout: seconds for the primary's answer, and for each piece
        of a file's body.
    @ivar retry_initial: the pause before a failed file is tried again.
    @ivar retry_max: the longest such pause.
    @ivar max_errors: how many files' errors are kept.
    """

    threads: int = 5
    skip_indexes: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    search_paths: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    hard_links: bool = False
    timeout: float = 60.0
    retry_initial: float = 1.0
    retry_max: float = 300.0
    max_errors: int = 100


class FileReplicator(Service):
    """
    The queue of files to fetch, its workers, and on-demand fetches.

    @ivar files_in_sync_at: when the queue was last empty.
    @ivar scanned_at: when the scan of the state at start ended.
    """

    name = "replica-files"

    def __init__(
        self,
        storage: IStorage,
        files: IFileStore,
        http: UpstreamHTTP,
        primary: PrimaryLink,
        *,
        clock: IReactorTime,
        run_in_thread: Callable[..., Deferred],
        options: FileOptions | None = None,
    ) -> None:
        """
        @param run_in_thread: runs what blocks on the disk (committing a
            file, copying one); C{deferToThread} in the server.
        """
        self._storage = storage
        self._files = files
        self._http = http
        self._primary = primary
        self._clock = clock
        self._run = run_in_thread
        self._options = options or FileOptions()
        #: Relpaths waiting for a worker, first come first served.
        self._queue: dict[str, None] = {}
        #: Relpaths a worker has.
        self._working: set[str] = set()
        #: Relpaths waiting to be tried again, and consecutive failures.
        self._retries: dict[str, IDelayedCall] = {}
        self._failures: dict[str, int] = {}
        self._errors: collections.OrderedDict[str, dict] = collections.OrderedDict()
        self._slots = DeferredSemaphore(self._options.threads)
        self._pumping = False
        #: One fetch per blob, by digest.
        self._blobs: SingleFlight[None] = SingleFlight()
        #: Work in flight (workers, on-demand fetches, the scan): cancelled at stop.
        self._jobs: set[Deferred] = set()
        self.files_in_sync_at: float | None = None
        self.scanned_at: float | None = None

    # -- what others read ------------------------------------------------------------

    @property
    def pending(self) -> int:
        """
        Files queued, being fetched, or waiting to be tried again.
        """
        return len(self._queue.keys() | self._working | self._retries.keys())

    @property
    def errors(self) -> list[dict]:
        """
        The last error of each file that has not been fetched since, oldest
        first: C{{"relpath", "message", "time", "attempts"}}.
        """
        return list(self._errors.values())

    def status(self) -> dict:
        """
        The file replication fields of C{/+status}, under devpi's names.
        """
        return {
            "replica-files-in-sync-at": self.files_in_sync_at,
            "replica-init-queue-finished-at": self.scanned_at,
            "replica-files-pending": self.pending,
            "replication-errors": {error["relpath"]: error for error in self._errors.values()},
        }

    # -- the service -------------------------------------------------------------------

    def startService(self) -> None:
        """
        Queue what the state names and the store lacks (the queue of a
        previous run is lost with it), then what entries bring.
        """
        super().startService()
        scan = self._track(Deferred.fromCoroutine(self._scan()))
        scan.addErrback(lambda failure: None if not self.running else log.failure("scanning files", failure))
        self._pump()

    def stopService(self) -> Deferred:
        """
        Cancel downloads and retries; a file being committed is committed.
        """
        super().stopService()
        for call in self._retries.values():
            call.cancel()
        self._retries.clear()
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        return DeferredList(jobs, consumeErrors=True)

    def _track(self, job: Deferred) -> Deferred:
        self._jobs.add(job)

        def done(result):
            self._jobs.discard(job)
            return result

        return job.addBoth(done)

    async def _scan(self) -> None:
        keys = self._storage.keys("file/")
        for at in range(0, len(keys), SCAN_BATCH):
            for key in keys[at : at + SCAN_BATCH]:
                entry = self._storage.get(key)
                if entry is not None:
                    self._consider(key[len("file/") :], entry)
            self._pump()
            await deferLater(self._clock, 0, lambda: None)
        self.scanned_at = self._clock.seconds()
        log.info("{count} files in the state, {pending} to fetch", count=len(keys), pending=self.pending)
        self._check_in_sync()

    # -- the queue -----------------------------------------------------------------------

    def entry_applied(self, changes: dict) -> None:
        """
        An entry was applied: queue the files it links that are missing,
        and remove the blobs it no longer references.
        """
        for key, value in changes.items():
            if key.startswith("file/"):
                if value is None:
                    self._forget(key[len("file/") :])
                else:
                    self._consider(key[len("file/") :], value)
            elif key.startswith("blob/") and value is None:
                self._unreferenced(key[len("blob/") :])
        self._pump()

    def _consider(self, relpath: str, entry: dict) -> None:
        if not self._missing(entry) or self._skipped(relpath):
            return
        retry = self._retries.pop(relpath, None)
        if retry is not None:
            retry.cancel()  # new information: try now
        self._queue[relpath] = None

    def _forget(self, relpath: str) -> None:
        """
        The file is gone from the state: nothing to fetch or report.
        """
        self._queue.pop(relpath, None)
        retry = self._retries.pop(relpath, None)
        if retry is not None:
            retry.cancel()
        self._failures.pop(relpath, None)
        self._errors.pop(relpath, None)
        self._check_in_sync()

    def _unreferenced(self, sha256: str) -> None:
        if sha256 in self._blobs or releases.blob_in_use(self._storage, sha256):
            return
        try:
            self._files.remove(sha256)
        except ValueError:
            log.warn("no such blob to remove: {sha256!r}", sha256=sha256)

    def _missing(self, entry: dict) -> list[tuple[str, str]]:
        """
        The blobs of a file entry the store lacks: C{(sha256, "file")} for
        the file (a mirror's only once the primary has stored it) and
        C{(sha256, "metadata")} for a wheel's METADATA.
        """
        missing = []
        try:
            sha256 = entry.get("sha256")
            if sha256 and (not entry.get("mirror") or entry.get("stored")) and not self._files.exists(sha256):
                missing.append((sha256, "file"))
            meta = entry.get("core_metadata_sha256")
            if meta and not self._files.exists(meta):
                missing.append((meta, "metadata"))
        except (ValueError, AttributeError, TypeError):
            log.warn("file entry with a bad digest ignored: {entry!r}", entry=entry)
            return []
        return missing

    def _skipped(self, relpath: str) -> bool:
        skip = self._options.skip_indexes
        if not skip:
            return False
        if "all" in skip:
            return True
        stage = "/".join(relpath.split("/")[:2])
        if stage in skip:
            return True
        user, _, index = stage.partition("/")
        config = indexes.get_index(self._storage, user, index) or {}
        return config.get("type") in skip

    def _pump(self) -> None:
        """
        Give queued files to free workers.  Not again from within itself:
        a file that needs nothing is done at once, and the loop on the
        stack takes the next one (no recursion as deep as the queue).
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.running and self._queue and self._slots.tokens > 0:
                relpath = next(iter(self._queue))
                del self._queue[relpath]
                self._working.add(relpath)
                job = self._slots.run(lambda relpath=relpath: Deferred.fromCoroutine(self._work(relpath)))
                self._track(job).addBoth(lambda _, relpath=relpath: self._worked(relpath))
        finally:
            self._pumping = False

    def _worked(self, relpath: str) -> None:
        self._working.discard(relpath)
        self._pump()
        self._check_in_sync()

    def _check_in_sync(self) -> None:
        idle = not (self._queue or self._working or self._retries)
        if self.running and self.scanned_at is not None and idle:
            self.files_in_sync_at = self._clock.seconds()

    async def _work(self, relpath: str) -> None:
        try:
            await self._ensure(relpath)
        except Exception as exc:
            if self.running:
                self._failed(relpath, exc, retry=not isinstance(exc, InvalidInput))
            return
        self._failures.pop(relpath, None)
        self._errors.pop(relpath, None)

    def _failed(self, relpath: str, exc: Exception, *, retry: bool) -> None:
        attempts = self._failures.get(relpath, 0) + 1
        self._failures[relpath] = attempts
        message = (
            str(exc) if isinstance(exc, (UpstreamError, InvalidInput)) else f"{type(exc).__name__}: {exc}"
        )
        self._errors.pop(relpath, None)
        self._errors[relpath] = {
            "relpath": relpath,
            "message": message,
            "time": self._clock.seconds(),
            "attempts": attempts,
        }
        while len(self._errors) > self._options.max_errors:
            self._errors.popitem(last=False)
        if not retry:
            log.error("file {relpath} not replicated: {error}", relpath=relpath, error=message)
            return
        delay = min(self._options.retry_initial * 2 ** (attempts - 1), self._options.retry_max)
        log.warn(
            "file {relpath} not replicated: {error}; again in {delay:g} s",
            relpath=relpath,
            error=message,
            delay=delay,
        )
        if relpath not in self._retries:
            self._retries[relpath] = self._clock.callLater(delay, self._retry, relpath)

    def _retry(self, relpath: str) -> None:
        del self._retries[relpath]
        self._queue[relpath] = None
        self._pump()

    # -- fetching ---------------------------------------------------------------------------

    def fetch(self, relpath: str) -> Deferred[str]:
        """
        Have the file at C{relpath} stored now (a request for it came in),
        sharing a download already under way; fires with its sha256.  A
        mirrored file the primary has not stored yet is asked for all the
        same (the primary fetches it from its upstream).  For
        C{<wheel>.metadata}, the wheel's METADATA blob is fetched.
        Cancelling the returned Deferred leaves the download running for
        others.

        @raise NotFound: the state has no such file.
        @raise UpstreamError: it could not be fetched, or did not match.
        """
        job = self._track(Deferred.fromCoroutine(self._ensure(relpath, asked=True)))
        result: Deferred[str] = Deferred()

        def forward(outcome):
            if not result.called:
                result.callback(outcome)  # a Failure goes to the errbacks

        job.addBoth(forward)
        return result

    async def _ensure(self, relpath: str, *, asked: bool = False) -> str | None:
        """
        Fetch what the store lacks of the file at C{relpath} (only what
        L{_missing} says, unless C{asked}); return the digest of the file.
        A file no longer in the state is no error unless C{asked}.
        """
        entry = self._storage.get(releases.file_key(relpath))
        kind = "file"
        if entry is None and asked and relpath.endswith(".metadata"):
            relpath, kind = relpath[: -len(".metadata")], "metadata"
            entry = self._storage.get(releases.file_key(relpath))
        if entry is None:
            if asked:
                raise NotFound(f"no file at {relpath}")
            return None
        localcopy.check_relpath(relpath)
        missing = self._missing(entry)
        if asked:
            sha256 = entry.get("sha256") if kind == "file" else entry.get("core_metadata_sha256")
            if not sha256:
                raise UpstreamError(f"{relpath}: the primary has no {kind} with a known sha256 yet")
            missing = [] if self._files.exists(sha256) else [(sha256, kind)]
        for sha256, kind in missing:
            await self._blobs.run(
                sha256, lambda sha256=sha256, kind=kind: self._obtain(relpath, sha256, kind)
            )
        return sha256 if asked else entry.get("sha256")

    async def _obtain(self, relpath: str, sha256: str, kind: str) -> None:
        """
        Store one blob: from a local copy, from the wheel (a METADATA
        blob), or from the primary.
        """
        if self._files.exists(sha256):
            return
        if self._options.search_paths:
            sources = localcopy.candidates(
                self._options.search_paths, relpath, sha256, by_name=kind == "file"
            )
            found, wrong = await self._run(
                localcopy.take_local_copy,
                self._files,
                list(sources),
                sha256,
                self._options.hard_links,
            )
            for source in wrong:
                log.warn("{source} is not the file with sha256 {sha256}", source=source, sha256=sha256)
            if found is not None:
                log.debug("{relpath}: taken from {source}", relpath=relpath, source=found)
                return
        if kind == "metadata":
            entry = self._storage.get(releases.file_key(relpath)) or {}
            wheel = entry.get("sha256")
            basename = relpath.rsplit("/", 1)[-1]
            if wheel and basename.endswith(".whl") and self._files.exists(wheel):
                if await self._run(localcopy.derive_metadata, self._files, wheel, basename, sha256):
                    return
        path = relpath + (".metadata" if kind == "metadata" else "")
        await self._download(self._primary.url_for(path), sha256)
        log.debug("{path}: fetched from the primary", path=path)

    async def _download(self, url: str, sha256: str) -> None:
        """
        Download a blob from the primary into the store, hashed as it
        arrives; it gets its final name only if it has the digest wanted.
        """
        timeout = self._options.timeout
        headers = self._primary.headers(**{"X-DEVPI-REPLICA-FILEREPL": "YES"})
        _, response = await ask_upstream(self._http, "GET", url, timeout=timeout, headers=headers)
        if response.code != 200:
            try:
                await read_body(self._http, url, response, 4096, idle=timeout)
            except UpstreamError:
                pass
            raise UpstreamError(f"{url}: the primary answered {response.code}")
        writer = self._files.writer()
        committing = False
        try:
            try:
                await collect_until_idle(self._http, response, writer.write, idle=timeout, url=url)
            except UpstreamError:
                raise
            except Exception as exc:
                raise upstream_error(url, exc) from None
            digest = writer.hexdigest()
            if digest != sha256:
                raise UpstreamError(f"{url}: sha256 mismatch, expected {sha256}, got {digest}")
            committing = True
            await self._run(writer.commit)
        except BaseException:
            if not committing:
                # Once the commit runs in its thread it is left to finish:
                # the content was checked.
                writer.abort()
            raise

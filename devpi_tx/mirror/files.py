"""
Mirrored files: the first request starts one upstream download, written
to a temporary file and hashed as it arrives; that request and any others
for the same file read the growing file and get its bytes as they come.
The hash is checked before the file is linked into the state; a failed,
truncated or mismatching download aborts the clients' connections (never
a short 200), leaves no file, and the next request tries again.
"""

from __future__ import annotations

import collections
import hashlib
import time
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ..interfaces import IFileStore
from ..logs import logger
from ..model import releases
from ..model.metadata import MAX_METADATA, wheel_metadata
from ..singleflight import SingleFlight
from .client import UpstreamError, ask_upstream, collect_until_idle, fetch_whole, redact
from .pages import SYNTHESIZED_METADATA_MIN_SIZE
from .remotezip import RangeNotSupported, fetch_wheel_metadata

log = logger("devpi_tx.mirror")

#: Bytes read from the growing file per step.
STEP = 256 * 1024


class Download:
    """
    One upstream download in progress.

    @ivar received: bytes written to the temporary file so far.
    @ivar total: the length upstream announced, if it did.
    """

    def __init__(self, writer) -> None:
        self.writer = writer
        self.received = 0
        self.total: int | None = None
        self.committing = False
        self._listeners: list = []
        self._waiting: dict[str, list[Deferred]] = {"started": [], "finished": []}
        self._outcome: dict[str, tuple[bool, object]] = {}

    def wait(self, stage: str) -> Deferred:
        """
        A Deferred that fires when the download reaches C{stage}
        (C{"started"}: upstream's headers are in; C{"finished"}: the file is
        stored, with its entry) or fails with L{UpstreamError}.
        """
        d: Deferred = Deferred()
        if stage in self._outcome:
            ok, value = self._outcome[stage]
            d.callback(value) if ok else d.errback(value)
        else:
            self._waiting[stage].append(d)
        return d

    def reached(self, stage: str, ok: bool, value: object) -> None:
        if stage in self._outcome:
            return
        self._outcome[stage] = (ok, value)
        for d in self._waiting.pop(stage):
            d.callback(value) if ok else d.errback(value)

    @property
    def done(self) -> bool:
        return "finished" in self._outcome

    def listen(self, listener) -> None:
        self._listeners.append(listener)

    def forget(self, listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def data(self, chunk: bytes) -> None:
        self.writer.write(chunk)
        self.writer.flush()
        self.received += len(chunk)
        for listener in list(self._listeners):
            listener.more()

    def end(self, error: Exception | None) -> None:
        for listener in list(self._listeners):
            listener.ended(error)
        self._listeners.clear()


@implementer(IPushProducer)
class GrowingFileBody:
    """
    Send a file that is still being downloaded: what has arrived is read
    from the temporary file and written, respecting the client's pace;
    the rest follows as it comes.
    """

    def __init__(self, request: IRequest, download: Download) -> None:
        self._request = request
        self._download = download
        self._file = open(download.writer.partial_path, "rb")
        self._sent = 0
        self._paused = False
        self._ended = False
        self._error: Exception | None = None
        self.done: Deferred = Deferred(lambda d: self.stopProducing())

    def start(self) -> Deferred:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda reason: self.stopProducing())
        self._download.listen(self)
        self._pump()
        return self.done

    # -- from the download -----------------------------------------------------

    def more(self) -> None:
        if not self._paused:
            self._pump()

    def ended(self, error: Exception | None) -> None:
        self._ended = True
        self._error = error
        if not self._paused or error is not None:
            self._pump()

    # -- from the consumer -----------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        if self._file is not None:
            self._close()
            self._request.unregisterProducer()
        self._fire()

    # ---------------------------------------------------------------------------

    def _pump(self) -> None:
        if self._file is None:
            return
        if self._error is not None:
            # Never let a short body pass for a complete one.
            self._close()
            self._request.unregisterProducer()
            self._request.channel.transport.abortConnection()
            self._fire()
            return
        while not self._paused and self._sent < self._download.received:
            data = self._file.read(min(STEP, self._download.received - self._sent))
            if not data:
                break
            self._sent += len(data)
            self._request.write(data)
        if self._ended and self._sent >= self._download.received:
            self._close()
            self._request.unregisterProducer()
            self._request.finish()
            self._fire()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._download.forget(self)

    def _fire(self) -> None:
        if not self.done.called:
            self.done.callback(None)


#: How long a host that ignored a range request is not asked with ranges.
NO_RANGES_TTL = 3600.0


class MirrorFiles:
    def __init__(
        self,
        storage,
        files,
        http,
        *,
        timeout: float,
        run_in_thread,
        # Smaller wheels (by upstream's size) are downloaded whole for their
        # METADATA: the installer asks for the wheel next.  The same size
        # decides whether a page advertises that METADATA.
        range_threshold: int = SYNTHESIZED_METADATA_MIN_SIZE,
        offline: bool = False,
        blobs=None,
        leases=None,
    ) -> None:
        """
        @param leases: with nodes sharing the state, the L{FetchLeases} that
            make one node download a file the others then find stored.
        @param blobs: the L{BlobLedger} a download's blob is held in from
            before it gets its final name until its entry is committed, so
            that no removal (an eviction, say) takes it meanwhile.
        """
        self._storage = storage
        self._blobs = blobs
        self.leases = leases
        #: The bound on the stored files (a L{MirrorCache}), told of each
        #: file stored and served; L{None}: no bound.
        self.cache = None
        #: Downloads by result, and the bytes stored (metrics).
        self.downloads: collections.Counter[str] = collections.Counter({"ok": 0, "error": 0})
        self.download_bytes = 0
        self._files = files
        self._http = http
        self._timeout = timeout
        self._run = run_in_thread
        self._downloads: dict[str, Download] = {}
        self._metadata_readings: SingleFlight[str] = SingleFlight()
        self._range_threshold = range_threshold
        #: Never ask upstream (--offline-mode): metadata of stored wheels only.
        self._offline = offline
        #: Upstream hosts that answered a range request with the whole
        #: file, and until when to believe it.
        self._no_ranges: dict[str, float] = {}

    def is_stored(self, entry: dict) -> bool:
        return bool(entry.get("stored")) and self._files.exists(entry["sha256"])

    def touch(self, path: str) -> None:
        """
        The stored mirrored file at C{path} is being served (recency, for
        the cache's bound).
        """
        if self.cache is not None:
            self.cache.touch(path)

    def download(self, path: str, entry: dict) -> Download:
        """
        The download of C{path}, started now unless one is running.
        """
        download = self._downloads.get(path)
        if download is None:
            download = Download(self._files.writer())
            self._downloads[path] = download
            d = Deferred.fromCoroutine(self._run_download(path, entry, download))
            d.addErrback(lambda failure: None)  # reported through the download
        return download

    async def ensure(self, path: str) -> dict:
        """
        Make sure the mirrored file at C{path} is stored; return its entry.

        @raise UpstreamError: the download failed or did not match.
        """
        entry = releases.get_file(self._storage, path)
        if entry is not None and self.is_stored(entry):
            return entry
        return await self.download(path, entry).wait("finished")

    async def metadata(self, path: str) -> str:
        """
        As L{_metadata}, one at a time per wheel: concurrent requests for
        the metadata of one wheel share its work (and its range requests).
        """
        return await self._metadata_readings.run(path, lambda: self._metadata(path))

    async def _metadata(self, path: str) -> str:
        """
        The sha256 of the stored core metadata (PEP 658) of the mirrored
        wheel at C{path}, taken from the first of: what is stored already;
        upstream's, when it offers it (hash-checked); the wheel, when it is
        stored; the wheel upstream, read with range requests when that is
        worth it (L{_ranges_worth_it}: its tail, where the zip directory
        is, then METADATA alone); the wheel, downloaded first.  Offline,
        only the first and the stored wheel.

        @raise UpstreamError: none worked.
        @raise InvalidInput: the wheel has no single METADATA or too large a one.
        """
        entry = releases.get_file(self._storage, path)
        if entry is None:
            raise UpstreamError(f"no file at {path}")
        digest = entry.get("core_metadata_sha256")
        if digest and self._files.exists(digest):
            return digest
        upstream = entry.get("upstream_metadata")
        data = None
        if self._offline and not self.is_stored(entry):
            raise UpstreamError(f"{path}: not cached and the server is offline")
        if upstream and not self._offline:
            response = await fetch_whole(
                self._http, "GET", entry["url"] + ".metadata", timeout=self._timeout, max_body=MAX_METADATA
            )
            url, body = response.url, response.body
            if response.code == 200:
                if isinstance(upstream, str) and hashlib.sha256(body).hexdigest() != upstream:
                    raise UpstreamError(f"{redact(url)}: metadata sha256 mismatch")
                data = body
                log.debug("core metadata of {path}: from upstream", path=path, source="upstream")
        if data is None:
            data = await self._metadata_from_wheel(path, entry)
        writer = self._files.writer()
        writer.write(data)
        digest = await self._run(writer.commit)
        async with self._storage.write() as tx:
            current = tx.get(releases.file_key(path)) or entry
            if current.get("core_metadata_sha256") != digest:
                tx.set(releases.file_key(path), dict(current, core_metadata_sha256=digest))
                tx.set(releases.blob_key(digest), (tx.get(releases.blob_key(digest)) or 0) + 1)
        return digest

    def _ranges_worth_it(self, url: str, size: int | None) -> bool:
        """
        Whether to read a wheel's METADATA with range requests rather than
        download the wheel.  Installers ask for a wheel right after its
        metadata unless their resolver moves on, so a small wheel is
        downloaded (and kept) whole; ranges pay off for large wheels, and
        not at all on a host that answered a range with the whole file.
        """
        if size is not None and size < self._range_threshold:
            return False
        host = urlsplit(url).netloc
        until = self._no_ranges.get(host)
        if until is not None and time.monotonic() < until:
            return False
        return True

    async def _metadata_from_wheel(self, path: str, entry: dict) -> bytes:
        """
        The METADATA of the wheel at C{path}: from the stored wheel if it
        is stored (no request upstream), else with range requests when they
        are worth it, else from the wheel downloaded in full.
        """
        basename = path.rsplit("/", 1)[1]
        size = entry.get("size")
        if self.is_stored(entry):
            source = "cache"
        elif not self._ranges_worth_it(entry["url"], size):
            entry = await self.ensure(path)
            source = "download"
        else:
            try:
                data = await fetch_wheel_metadata(
                    self._http,
                    entry["url"],
                    timeout=self._timeout,
                    basename=basename,
                    size=size,
                )
            except UpstreamError as exc:
                if isinstance(exc, RangeNotSupported):
                    self._no_ranges[urlsplit(entry["url"]).netloc] = time.monotonic() + NO_RANGES_TTL
                # RemoteZipError (no range support, an odd archive) or a
                # failed request: the download may still work, and is
                # checked against the wheel's sha256.
                log.info(
                    "core metadata of {path}: range requests failed ({error}), downloading the wheel",
                    path=path,
                    error=str(exc),
                )
                entry = await self.ensure(path)
                source = "download"
            else:
                log.info("core metadata of {path}: read with range requests", path=path, source="range")
                return data
        data = await self._run(_stored_wheel_metadata, self._files, entry["sha256"], basename)
        log.info("core metadata of {path}: taken from the wheel ({source})", path=path, source=source)
        return data

    async def head(self, entry: dict) -> dict[str, str]:
        """
        Ask upstream about a file without downloading it.
        """
        url, response = await ask_upstream(self._http, "HEAD", entry["url"], timeout=self._timeout)
        if response.code != 200:
            raise UpstreamError(f"{redact(url)}: upstream answered {response.code}")
        length = response.headers.getRawHeaders("content-length")
        return {"Content-Length": length[0]} if length else {}

    async def _run_download(self, path: str, entry: dict, download: Download) -> None:
        """
        Download C{path} and link it; whatever fails (upstream, the
        hash, the disk) ends the download with an L{UpstreamError} for
        everyone waiting on it and leaves no file, so that no request
        hangs and the next one tries again.
        """
        url = entry["url"]
        writer = download.writer
        try:
            current = await self._leased_fetch(path, entry, download)
        except Exception as exc:
            if not isinstance(exc, UpstreamError):
                log.failure("mirror download of {url} failed", url=redact(url))
                exc = UpstreamError(f"{redact(url)}: download failed: {exc.__class__.__name__}: {exc}")
            else:
                log.warn("mirror download failed: {error}", error=str(exc))
            writer.abort()  # nothing to do once committed
            self.downloads["error"] += 1
            self._downloads.pop(path, None)
            download.reached("started", False, exc)
            download.end(exc)
            download.reached("finished", False, exc)
            return
        del self._downloads[path]
        self.downloads["ok"] += 1
        self.download_bytes += writer.size
        if self.cache is not None:
            self.cache.stored(path, current)
        log.info("mirrored {url} ({size} bytes)", url=redact(url), size=writer.size)
        download.end(None)
        download.reached("finished", True, current)

    async def _leased_fetch(self, path: str, entry: dict, download: Download) -> dict:
        """
        L{_fetch_and_link}, unless another node sharing the state is
        downloading the file: then its entry once that node stored it.
        """
        if self.leases is None or not self.leases.shared:
            return await self._fetch_and_link(path, entry, download)

        def stored_elsewhere() -> dict | None:
            current = releases.get_file(self._storage, path)
            if current is None or not self.is_stored(current):
                return None
            download.writer.abort()
            download.committing = True  # its waiters serve the stored file
            download.reached("started", True, download)
            return current

        key = releases.file_key(path)
        return await self.leases.run(
            key, key, stored_elsewhere, lambda: self._fetch_and_link(path, entry, download)
        )

    async def _fetch_and_link(self, path: str, entry: dict, download: Download) -> dict:
        url = entry["url"]
        writer = download.writer
        _, response = await ask_upstream(self._http, "GET", url, timeout=self._timeout)
        if response.code != 200:
            raise UpstreamError(f"{redact(url)}: upstream answered {response.code}")
        # An answer delimited by the end of the connection (HTTP/1.0 style)
        # has UNKNOWN_LENGTH, a string.
        if isinstance(response.length, int) and response.length >= 0:
            download.total = response.length
        download.reached("started", True, download)
        # Without a sha256 upstream, the hash it gave instead (md5, say).
        spec = None if entry.get("sha256") else entry.get("hash_spec")
        other = hashlib.new(spec.partition("=")[0]) if spec else None

        def collect(chunk: bytes) -> None:
            if other is not None:
                other.update(chunk)
            download.data(chunk)

        try:
            await collect_until_idle(self._http, response, collect, idle=self._timeout, url=url)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(f"{redact(url)}: download failed: {exc.__class__.__name__}") from None
        digest = writer.hexdigest()
        if entry.get("sha256") and digest != entry["sha256"]:
            raise UpstreamError(f"{redact(url)}: sha256 mismatch, expected {entry['sha256']}, got {digest}")
        if other is not None and f"{other.name}={other.hexdigest()}" != spec:
            raise UpstreamError(
                f"{redact(url)}: {other.name} mismatch, expected {spec}, got {other.hexdigest()}"
            )
        download.committing = True
        if self._blobs is not None:
            self._blobs.hold(digest)
        try:
            sha256 = await self._run(writer.commit)
            async with self._storage.write() as tx:
                current = tx.get(releases.file_key(path)) or entry
                was_stored = current.get("stored")
                current = dict(
                    current, sha256=sha256, size=writer.size, last_modified=time.time(), stored=True
                )
                tx.set(releases.file_key(path), current)
                if not was_stored:
                    tx.set(releases.blob_key(sha256), (tx.get(releases.blob_key(sha256)) or 0) + 1)
        finally:
            if self._blobs is not None:
                self._blobs.release(digest)
        return current


def _stored_wheel_metadata(files: IFileStore, sha256: str, basename: str) -> bytes:
    """
    (In a thread.)  The METADATA of a stored wheel, read through the store
    (which may be remote).
    """
    with files.open(sha256) as wheel:
        return wheel_metadata(wheel, basename)

"""
A bound on the disk the mirrored files take (C{--mirror-cache-size},
beyond devpi): past it, the least recently used are evicted, in the
background, and fetched again when next asked for.

L{MirrorCache} knows every stored mirrored file (its entry in the state
says C{"stored": true}), least recently used first.  Recency is kept in
memory only: a file counts as used when it is downloaded and each time it
is served.  After a restart the order is that of the downloads (each
entry's C{last_modified}), as read from the state when the service starts
(a range scan of each mirror index's file entries).

An eviction (L{MirrorCache.evict}, run by L{MirrorCacheService} when a
download takes the size past the bound, and every minute) works on the
reactor only for what is quick: it picks blobs least recently used first
until the size would be 90 % of the bound (at most L{BATCH} at a time,
each batch followed by a pause L{PACE} times as long as it took),
commits their entries back to "not stored" and their blobs' reference
counts down in one non-durable transaction (an evicted file is one that
can be fetched again), and then removes the files in a worker thread.  A blob is never evicted while
anything else links it (a private upload of the same bytes: blobs are
shared by content, and their C{blob/} count is then higher than the
mirror entries that use it) or while an upload or a download holds it in
the L{BlobLedger}; those stay and go to the back of the queue.

A file is removed in two steps, for writers that meet it meanwhile (an
upload of the same bytes finds the blob there and keeps it without
writing it again): a thread renames it away (under a C{.tmp-} name in
the store, which the store sweeps at start); back on the reactor, a blob
that has become wanted again (held or linked) is renamed back, the
others are deleted by a thread.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall

from ..customizers import BUILTIN
from ..logs import logger
from ..model import releases
from ..model.blobs import BlobLedger
from ..sizes import format_size

log = logger("devpi_tx.mirror.cache")

#: An eviction frees blobs until the size is this share of the bound.
LOW_WATER = 0.9
#: Blobs evicted per transaction (and per turn of the reactor).
BATCH = 100
#: After each batch an eviction waits this many times as long as the
#: batch took, so that evicting never takes more than a tenth of the
#: process's time from the requests (a batch of 100 takes about 10 ms).
PACE = 9.0
#: How often the service checks the bound besides after downloads.
INTERVAL = 60.0
#: The names blobs are renamed to while being removed (the store
#: removes C{.tmp-} files when it opens).
_CLAIM_PREFIX = ".tmp-evict-"


def _stored_mirror_file(entry: object) -> bool:
    return isinstance(entry, dict) and bool(
        entry.get("mirror") and entry.get("stored") and entry.get("sha256")
    )


def mirror_stages(reader, is_mirror: Callable[[dict], bool] = BUILTIN.is_mirror) -> list[str]:
    """
    The indexes served by the mirror machinery, by their index type.
    """
    stages = []
    for key in reader.keys("user/"):
        record = reader.get(key) or {}
        for name, config in (record.get("indexes") or {}).items():
            if is_mirror(config):
                stages.append(f"{key[len('user/') :]}/{name}")
    return stages


class MirrorCache:
    """
    The stored mirrored files in least recently used order, their size,
    and their eviction past L{limit} bytes.

    @ivar size: bytes of the blobs of stored mirrored files (each blob
        once, whatever the number of entries linking it).
    @ivar evictions: entries evicted since the start.
    @ivar evicted_bytes: bytes of blobs removed by evictions.
    """

    def __init__(
        self,
        storage,
        files,
        blobs: BlobLedger,
        *,
        limit: int,
        clock,
        run_in_thread: Callable,
        low_water: float = LOW_WATER,
        batch: int = BATCH,
        pace: float = PACE,
        is_mirror: Callable[[dict], bool] = BUILTIN.is_mirror,
    ) -> None:
        self._is_mirror = is_mirror
        self._storage = storage
        self._files = files
        self._ledger = blobs
        self.limit = limit
        self._clock = clock
        self._run = run_in_thread
        self._low_water = low_water
        self._batch = batch
        self._pace = pace
        self._pause = None
        #: State key of each stored mirrored file -> its blob, least recently used first.
        self._entries: collections.OrderedDict[str, str] = collections.OrderedDict()
        #: Blob -> the keys of the tracked entries linking it.
        self._keys: dict[str, set[str]] = {}
        self._sizes: dict[str, int] = {}
        self.size = 0
        self.evictions = 0
        self.evicted_bytes = 0
        #: Who waits for the eviction running (L{None}: none runs).
        self._waiters: list[Deferred[int]] | None = None
        self._soon = None
        self._stopped = False
        storage.subscribe(self._changed)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: str) -> bool:
        return releases.file_key(path) in self._entries

    def paths(self) -> list[str]:
        """
        The stored mirrored files' paths, least recently used first.
        """
        return [key[len("file/") :] for key in self._entries]

    def status(self) -> dict:
        """
        What C{/+status} shows of the cache.
        """
        return {
            "size": self.size,
            "limit": self.limit,
            "files": len(self._entries),
            "evictions": self.evictions,
            "evicted-bytes": self.evicted_bytes,
        }

    # -- what is stored, and when it was used --------------------------------

    def load(self) -> None:
        """
        Read the stored mirrored files from the state, least recently
        downloaded first (what a restart knows of recency).
        """
        found = []
        for stage in mirror_stages(self._storage, self._is_mirror):
            for key in self._storage.keys(releases.file_key(stage + "/")):
                entry = self._storage.get(key)
                if _stored_mirror_file(entry):
                    found.append((entry.get("last_modified") or 0.0, key, entry))
        found.sort(key=lambda item: item[:2])
        for _, key, entry in found:
            self._track(key, entry)
        log.info(
            "mirror cache: {files} files, {size} of {limit}",
            files=len(self._entries),
            size=format_size(self.size),
            limit=format_size(self.limit),
        )

    def stored(self, path: str, entry: dict) -> None:
        """
        A mirrored file was downloaded and stored: the most recently used;
        an eviction follows soon if the bound is passed.
        """
        if _stored_mirror_file(entry):
            self._track(releases.file_key(path), entry)
        if self.size > self.limit and not self._stopped:
            self._evict_soon()

    def touch(self, path: str) -> None:
        """
        A stored mirrored file is being served: the most recently used.
        """
        key = releases.file_key(path)
        if key in self._entries:
            self._entries.move_to_end(key)

    def _track(self, key: str, entry: dict) -> None:
        sha256 = entry["sha256"]
        if self._entries.get(key, sha256) != sha256:
            self._untrack(key)
        self._entries[key] = sha256
        self._entries.move_to_end(key)
        keys = self._keys.setdefault(sha256, set())
        if not keys:
            self._sizes[sha256] = int(entry.get("size") or 0)
            self.size += self._sizes[sha256]
        keys.add(key)

    def _untrack(self, key: str) -> None:
        sha256 = self._entries.pop(key, None)
        if sha256 is None:
            return
        keys = self._keys[sha256]
        keys.discard(key)
        if not keys:
            del self._keys[sha256]
            self.size -= self._sizes.pop(sha256)

    def _changed(self, serial: int, keys: frozenset[str]) -> None:
        """
        After any commit: tracked entries that were removed (their index
        deleted, say) or are no longer stored are forgotten.  (A set lookup
        per changed key; a mirrored page's commit changes one per link.)
        """
        entries = self._entries
        for key in keys:
            if key in entries:
                entry = self._storage.get(key)
                if _stored_mirror_file(entry):
                    self._track(key, entry)
                else:
                    self._untrack(key)

    # -- eviction ----------------------------------------------------------------

    def _evict_soon(self) -> None:
        if self._soon is None or not self._soon.active():
            self._soon = self._clock.callLater(0, self.evict)

    def evict(self) -> Deferred[int]:
        """
        Evict least recently used files until the size is below the low
        water mark, one batch per turn; the Deferred fires with the number
        of entries evicted once their files are removed.  A call while an
        eviction runs gets that eviction's result.
        """
        d: Deferred[int] = Deferred()
        if self._waiters is not None:
            self._waiters.append(d)
            return d
        if self.size <= self.limit:
            d.callback(0)
            return d
        self._waiters = [d]

        def failed(failure):
            log.failure("mirror cache: eviction failed", failure)
            return 0

        def finished(count: int) -> None:
            waiters, self._waiters = self._waiters or [], None
            for waiter in waiters:
                waiter.callback(count)

        Deferred.fromCoroutine(self._evict()).addErrback(failed).addCallback(finished)
        return d

    @property
    def evicting(self) -> bool:
        return self._waiters is not None

    def stop(self) -> Deferred[None]:
        """
        No more evictions after downloads; fires once a running one has
        finished.
        """
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._stopped = True
        if self._pause is not None and self._pause.active():
            self._pause.reset(0)
        if self._waiters is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d.addCallback(lambda _: None)

    async def _evict(self) -> int:
        target = int(self.limit * self._low_water)
        evicted = 0
        while self.size > target:
            batch = self._pick(target)
            if not batch:
                log.warn(
                    "mirror cache: {size} stored, over the bound of {limit}, and nothing can be evicted "
                    "(the rest is linked by uploads or in use)",
                    size=format_size(self.size),
                    limit=format_size(self.limit),
                )
                break
            started = time.perf_counter()
            unlinked = await self._commit(batch)
            evicted += sum(len(keys) for keys in batch.values())
            await self._remove(unlinked)
            if self.size > target and not self._stopped:
                # The next batch later, paced by what this one took (its
                # time on the reactor and in a thread, and any wait for one).
                wait: Deferred[None] = Deferred()
                self._pause = self._clock.callLater(
                    (time.perf_counter() - started) * self._pace, wait.callback, None
                )
                await wait
            if self._stopped:
                break
        return evicted

    def _pick(self, target: int) -> dict[str, list[str]]:
        """
        Blobs to evict, least recently used first, with the keys of the
        entries linking them, until the size would reach C{target} (at
        most L{BATCH} blobs); blobs something else needs go to the back.
        """
        picked: dict[str, list[str]] = {}
        size = self.size
        kept = []
        for key, sha256 in self._entries.items():
            if size <= target or len(picked) >= self._batch:
                break
            if sha256 in picked:
                continue
            keys = self._keys[sha256]
            count = self._storage.get(releases.blob_key(sha256)) or 0
            if self._ledger.held[sha256] or count > len(keys):
                kept.append(key)
                continue
            picked[sha256] = sorted(keys)
            size -= self._sizes[sha256]
        for key in kept:
            self._entries.move_to_end(key)
        return picked

    async def _commit(self, batch: dict[str, list[str]]) -> dict[str, int]:
        """
        Mark the entries of C{batch} not stored and count their blobs'
        links down, in one non-durable transaction; return the blobs no
        longer linked, with their sizes.
        """
        unlinked = {}
        # As picked: a shared state's write may wait, and a commit meanwhile
        # may untrack a blob (its entries are checked again below).
        sizes = {sha256: self._sizes.get(sha256, 0) for sha256 in batch}
        async with self._storage.write(durable=False) as tx:
            for sha256, keys in batch.items():
                size = sizes[sha256]
                dropped = 0
                for key in keys:
                    self._untrack(key)
                    entry = tx.get(key)
                    if _stored_mirror_file(entry) and entry["sha256"] == sha256:
                        tx.set(key, {name: value for name, value in entry.items() if name != "stored"})
                        dropped += 1
                self.evictions += dropped
                count = (tx.get(releases.blob_key(sha256)) or 0) - dropped
                if count > 0:
                    tx.set(releases.blob_key(sha256), count)
                else:
                    tx.delete(releases.blob_key(sha256))
                    unlinked[sha256] = size
                log.debug("mirror cache: evicting {keys}", keys=keys)
        return unlinked

    async def _remove(self, digests: dict[str, int]) -> None:
        if not digests:
            return
        claimed = await self._run(self._claim, list(digests))
        doomed = []
        for sha256, path in claimed:
            if self._ledger.wanted(sha256):
                # Held or linked again since it was picked: it stays.
                self._restore(sha256, path)
            else:
                doomed.append(path)
                self.evicted_bytes += digests[sha256]
        if doomed:
            await self._run(_unlink, doomed)

    def _claim(self, digests: list[str]) -> list[tuple[str, str]]:
        """
        (In a thread.)  Rename each blob away; return those renamed, with
        their new paths.
        """
        claimed = []
        for sha256 in digests:
            path = os.path.join(self._files.tmpdir, _CLAIM_PREFIX + sha256)
            try:
                os.rename(self._files.local_path(sha256), path)
            except FileNotFoundError:
                continue
            claimed.append((sha256, path))
        return claimed

    def _restore(self, sha256: str, path: str) -> None:
        final = self._files.local_path(sha256)
        if os.path.exists(final):
            os.unlink(path)  # written again meanwhile
        else:
            os.rename(path, final)
        log.info("mirror cache: kept {sha256}, wanted again while it was evicted", sha256=sha256)


def _unlink(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class MirrorCacheService(Service):
    """
    Reads the cache's contents at start, and evicts in the background:
    soon after a download passes the bound (L{MirrorCache.stored}), and
    every L{INTERVAL} seconds on C{clock}.
    """

    def __init__(self, cache: MirrorCache, clock, interval: float = INTERVAL) -> None:
        self.setName("mirror-cache")
        self.cache = cache
        self._loop = LoopingCall(cache.evict)
        self._loop.clock = clock
        self._interval = interval

    def startService(self) -> None:
        super().startService()
        self.cache.load()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> Deferred[None]:
        """
        Stop evicting; fires once a running eviction has finished.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return self.cache.stop()

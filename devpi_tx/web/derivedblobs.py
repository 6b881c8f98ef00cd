"""
Blobs derived from uploads (a small wheel's METADATA), written in batches
off the upload's path.

Such a blob is stored without fsync and made again from its wheel when it
is missing (L{devpi_tx.model.metadata.repair_metadata}), and nobody needs
it at once: installers ask for it later, if ever.  Written by a worker thread
right after each upload was answered, it competed with the answer being
sent and the next upload arriving: sequential uploads ran about 4% slower.
Now the blobs of the last half second are written together by one job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ..interfaces import IFileStore
from ..logs import logger

log = logger("devpi_tx.blobs")


class DerivedBlobs:
    def __init__(
        self,
        files: IFileStore,
        run_in_thread: Callable,
        clock: IReactorTime,
        in_use: Callable[[str], bool],
        *,
        delay: float = 0.5,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        """
        @param in_use: whether a blob must stay (see
            L{devpi_tx.model.blobs.BlobLedger.wanted}); one whose last
            reference went before it was written is removed.
        @param delay: how long a blob may wait for others.
        @param max_bytes: how much may wait; more and they are written at
            the next turn of the reactor.
        """
        self._files = files
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._in_use = in_use
        self._delay = delay
        self._max_bytes = max_bytes
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._call: IDelayedCall | None = None
        #: Digests being written, and the job writing them.
        self._writing: dict[str, Deferred] = {}
        self._stopped = False

    def stop(self) -> None:
        """
        The server is stopping: blobs still waiting are not written (they
        are made again from their wheels when asked for).
        """
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._pending.clear()
        self._pending_bytes = 0

    def add(self, data: bytes) -> str:
        """
        Have C{data} stored as a blob soon; return its digest.
        """
        digest = hashlib.sha256(data).hexdigest()
        if self._stopped:
            return digest
        if digest not in self._pending and digest not in self._writing:
            self._pending[digest] = data
            self._pending_bytes += len(data)
        if self._pending_bytes >= self._max_bytes:
            self._schedule(0)
        elif self._call is None:
            self._schedule(self._delay)
        return digest

    def _schedule(self, delay: float) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = self._clock.callLater(delay, self.flush)

    def flush(self) -> Deferred[None]:
        """
        Write what is pending now; fires when it is written.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        batch, self._pending, self._pending_bytes = self._pending, {}, 0
        if not batch:
            return succeed(None)
        job = self._run_in_thread(self._write, list(batch.values()))
        for digest in batch:
            self._writing[digest] = job

        def written(result):
            for digest in batch:
                self._writing.pop(digest, None)
                if not self._stopped and not self._in_use(digest):
                    self._files.remove(digest)
            return None

        job.addErrback(lambda failure: log.failure("writing {count} blobs", failure, count=len(batch)))
        return job.addCallback(written)

    def _write(self, blobs: list[bytes]) -> None:
        """
        In a worker thread.
        """
        for data in blobs:
            writer = self._files.writer()
            writer.write(data)
            writer.commit(durable=False)

    def settled(self, digest: str) -> Deferred[None]:
        """
        Fires once C{digest} is no longer waiting to be written.
        """
        if digest in self._pending:
            return self.flush()
        writing = self._writing.get(digest)
        if writing is None:
            return succeed(None)
        waiting: Deferred[None] = Deferred()

        def done(result):
            waiting.callback(None)
            return result  # the job's own chain goes on as it was

        writing.addBoth(done)
        return waiting

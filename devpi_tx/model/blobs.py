"""
Which blobs of the file store must stay on disk.

A blob is wanted while a link in the state references it (its C{blob/}
count, see L{releases.blob_in_use}) or while an upload in flight holds
it: an upload's file gets its final name in a worker thread before the
transaction that links it commits, and a removal committing meanwhile
(of an older upload of the same file, say) must not take it away.  Whoever
drops links or gives up a held blob asks the ledger to remove what is no
longer wanted.  The holds are this process's alone, so they live in
memory; the references are in the state.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from ..interfaces import IFileStore
from ..logs import logger
from . import releases

log = logger("devpi_tx.blobs")

#: How many digests L{BlobLedger} remembers as found sound before it
#: forgets them all (each is checked again once, which is cheap).
MAX_SOUND = 100_000


class BlobLedger:
    """
    Blobs held by uploads in flight, the rule for which blobs are wanted,
    and the removal of those that are not.

    Also remembers which blobs stored without fsync (a wheel's METADATA)
    were found intact, so that each is checked once per process.
    """

    def __init__(self, reader, files: IFileStore) -> None:
        """
        @param reader: the committed state (an L{IStorage}).
        @param files: the store the blobs are in.
        """
        self._reader = reader
        self._files = files
        #: Digest -> number of holds; public for tests and diagnostics.
        self.held: collections.Counter[str] = collections.Counter()
        #: Digests of unsynced blobs found intact in this process.
        self.sound: set[str] = set()

    def hold(self, *digests: str | None) -> None:
        """
        Keep blobs safe from removal until L{release}d (as often as held).
        Empty digests (no METADATA, say) are ignored.
        """
        for digest in digests:
            if digest:
                self.held[digest] += 1

    def release(self, *digests: str | None) -> None:
        for digest in digests:
            if digest:
                self.held[digest] -= 1
                if self.held[digest] <= 0:
                    del self.held[digest]

    def wanted(self, digest: str) -> bool:
        """
        Whether a blob must stay on disk: an upload in flight holds it, or
        a link references it.
        """
        return bool(self.held[digest]) or releases.blob_in_use(self._reader, digest)

    def remove_unwanted(self, digests: Iterable[str | None]) -> list[str]:
        """
        Delete those of C{digests} that are not L{wanted} (after a commit
        that dropped links, or after an upload that failed once its file
        was written); return the ones deleted.
        """
        removed = []
        for digest in digests:
            if digest and not self.wanted(digest):
                try:
                    self._files.remove(digest)
                except Exception as e:
                    # Best effort: what committed stands (a blob left
                    # behind costs space, not correctness), and the rest
                    # are still tried.
                    error = f"{type(e).__name__}: {e}"
                    log.warn("blob {digest} not removed: {error}", digest=digest, error=error)
                    continue
                removed.append(digest)
        return removed

    def is_sound(self, digest: str) -> bool:
        """
        Whether an unsynced blob was already found intact in this process.
        """
        return digest in self.sound

    def mark_sound(self, digest: str) -> None:
        if len(self.sound) > MAX_SOUND:
            self.sound.clear()
        self.sound.add(digest)

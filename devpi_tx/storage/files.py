"""
The default file store: files on local disk, addressed by sha256.

A file is written to a temporary name in the store's own directory, hashed
while it is written, fsynced and then renamed into place, so that a file
under its final name is always complete and verified.  A crash leaves at
most a stray temporary file, which L{LocalFileStore} removes when opened.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from typing import IO

from zope.interface import implementer

from ..interfaces import IFileWriter, ILocalFileStore

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"


def _check_digest(sha256: str) -> str:
    """
    Refuse anything but a hex digest, so that no caller can turn a digest
    into a path outside the store.
    """
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


@implementer(IFileWriter)
class LocalFileWriter:
    """
    A file being written into a L{LocalFileStore}.

    With C{spool}, up to that many bytes are kept in memory and the
    temporary file is created only when more arrive, or at the commit
    (which runs in a worker thread): creating a file can wait on the
    filesystem's journal for as long as an fsync takes, and an upload's
    writer is made on the reactor thread.
    """

    def __init__(self, store: LocalFileStore, spool: int = 0) -> None:
        self._store = store
        self._spool = spool
        self._buffer: bytearray | None = bytearray() if spool > 0 else None
        self._file = None
        self._tmp_path: str | None = None
        if self._buffer is None:
            self._open()
        self._hash = hashlib.sha256()
        self.size = 0
        self._done = False

    def _open(self) -> None:
        fd, self._tmp_path = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self._store.tmpdir)
        self._file = os.fdopen(fd, "wb")
        if self._buffer:
            self._file.write(self._buffer)
        self._buffer = None

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def in_memory(self) -> bytes | None:
        """
        A copy of what was written while all of it is still in memory
        (spooled, not committed), else L{None}.
        """
        return None if self._buffer is None or self._done else bytes(self._buffer)

    def flush(self) -> None:
        """
        Push what was written into the file, for readers of the growing
        file (a mirror download served while it arrives).
        """
        if self._file is None:
            self._open()
        self._file.flush()

    @property
    def partial_path(self) -> str:
        """
        Where the file grows until it is committed.
        """
        if self._file is None:
            self._open()
        return self._tmp_path

    def write(self, data: bytes) -> None:
        if self._buffer is not None:
            self._buffer += data
            if len(self._buffer) > self._spool:
                self._open()
        else:
            self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def commit(self, durable: bool = True) -> str:
        if self._done:
            raise RuntimeError("file already committed or aborted")
        self._done = True
        digest = self._hash.hexdigest()
        try:
            if self._file is None:
                self._open()
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
            self._file.close()
            final = self._store.local_path(digest)
            self._store.make_directory(os.path.dirname(final))
            if os.path.exists(final):
                os.unlink(self._tmp_path)
            else:
                try:
                    os.replace(self._tmp_path, final)
                except FileNotFoundError:
                    # The directory went away behind our back.
                    self._store.make_directory(os.path.dirname(final), again=True)
                    os.replace(self._tmp_path, final)
                if durable:
                    _fsync_dir(os.path.dirname(final))
        except BaseException:
            self._discard()
            raise
        return digest

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._discard()

    def _discard(self) -> None:
        self._buffer = None
        if self._file is None:
            return
        self._file.close()
        try:
            os.unlink(self._tmp_path)
        except FileNotFoundError:
            pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@implementer(ILocalFileStore)
class LocalFileStore:
    """
    Files under C{<root>/<sha[:3]>/<sha[3:]>}, the same fan-out as the
    C{+f} URLs use.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.tmpdir = os.path.join(root, "tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        self._directories: set[str] = set()
        for name in os.listdir(self.tmpdir):
            if name.startswith(_TMP_PREFIX):
                os.unlink(os.path.join(self.tmpdir, name))

    def make_directory(self, path: str, again: bool = False) -> None:
        """
        Create one of the store's fan-out directories, unless this process
        already has: C{os.makedirs} costs a tenth of a millisecond even
        when the directory exists, on the path of every upload.  (There
        are at most 4,096 of them.)
        """
        if again or path not in self._directories:
            os.makedirs(path, exist_ok=True)
            self._directories.add(path)

    def writer(self, spool: int = 0) -> LocalFileWriter:
        return LocalFileWriter(self, spool)

    def local_path(self, sha256: str) -> str:
        _check_digest(sha256)
        return os.path.join(self.root, sha256[:3], sha256[3:])

    def exists(self, sha256: str) -> bool:
        return os.path.exists(self.local_path(sha256))

    def open(self, sha256: str) -> IO[bytes]:
        return open(self.local_path(sha256), "rb")

    def size(self, sha256: str) -> int:
        return os.path.getsize(self.local_path(sha256))

    def remove(self, sha256: str) -> None:
        try:
            os.unlink(self.local_path(sha256))
        except FileNotFoundError:
            pass

    def link(self, source: str, sha256: str) -> bool:
        """
        Store the file at C{source} (in another server directory on the
        same filesystem) by a hard link instead of a copy, if its content
        has digest C{sha256}; return whether it had.  Blocks (it reads the
        whole file).

        The link is made under a temporary name and hashed there, so what
        gets the final name is the content that was checked.

        @raise OSError: no hard link could be made (another filesystem,
            say): copy instead.
        """
        final = self.local_path(sha256)
        tmp = os.path.join(self.tmpdir, f"{_TMP_PREFIX}{os.urandom(8).hex()}")
        os.link(source, tmp)
        try:
            digest = hashlib.sha256()
            with open(tmp, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                return False
            self.make_directory(os.path.dirname(final))
            if not os.path.exists(final):
                os.replace(tmp, final)
                _fsync_dir(os.path.dirname(final))
            return True
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

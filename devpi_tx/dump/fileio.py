"""
Moving files between a dump and a file store: copied or hard-linked,
hashed on the way in, made durable with one filesystem sync rather than
one fsync per file.

An import stores every file before it writes any state, so one
C{syncfs(2)} of the store's filesystem before the first commit gives the
same guarantee as the upload path's fsync per file (no link in the state
to a file that a power loss could take) at a fraction of the cost: a
thousand fsyncs cost seconds, where copying the same thousand files of
100 KB costs a tenth of one.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import os
import shutil
from collections.abc import Iterable

from ..storage.files import LocalFileStore

_counter = itertools.count()
CHUNK = 1 << 20
#: The largest file whose content L{store_file} hands back.
KEEP_AT_MOST = 64 << 20


def _hashers(algorithms: Iterable[str]) -> dict[str, object]:
    hashers: dict[str, object] = {"sha256": hashlib.sha256()}
    for name in algorithms:
        if name not in hashers and name in hashlib.algorithms_available:
            hashers[name] = hashlib.new(name)
    return hashers


def _temp_name(store: LocalFileStore) -> str:
    # The store removes names with this prefix when it is opened, so an
    # import that dies leaves nothing behind there.
    return os.path.join(store.tmpdir, f".tmp-import-{os.getpid()}-{next(_counter)}")


def _into_place(store: LocalFileStore, tmp: str, digest: str) -> None:
    # A file already there under the name has the same content: replacing
    # it costs less than asking first.
    final = store.local_path(digest)
    store.make_directory(os.path.dirname(final))
    os.replace(tmp, final)


def store_file(
    store: LocalFileStore,
    source: str,
    algorithms: Iterable[str] = (),
    *,
    hard_link: bool = False,
    keep: list[bytes] | None = None,
) -> tuple[dict[str, str], int]:
    """
    Store the file at C{source} by its sha256, by a copy or (with
    C{hard_link}) a hard link, hashing it on the way; nothing is synced
    (see L{sync_filesystem}).

    @param algorithms: hashes to compute besides sha256 (those the dump
        gives for the file; unknown names are left out).
    @param keep: gets the file's chunks, if it is not larger than
        L{KEEP_AT_MOST} (a wheel, whose METADATA is read next).
    @return: the hex digests by algorithm and the size.
    @raise OSError: the file could not be read or stored; for a hard link,
        C{EXDEV} and the like mean: copy instead.
    """
    hashers = _hashers(algorithms)
    tmp = _temp_name(store)
    size = 0
    try:
        if hard_link:
            # Hashed as linked: what gets the final name is what was read.
            os.link(source, tmp)
        with open(tmp if hard_link else source, "rb") as src:
            dst = None if hard_link else open(tmp, "wb")
            try:
                while chunk := src.read(CHUNK):
                    size += len(chunk)
                    for hasher in hashers.values():
                        hasher.update(chunk)  # type: ignore[attr-defined]
                    if dst is not None:
                        dst.write(chunk)
                    _keep(keep, chunk, size)
            finally:
                if dst is not None:
                    dst.close()
        digests = {name: hasher.hexdigest() for name, hasher in hashers.items()}  # type: ignore[attr-defined]
        _into_place(store, tmp, digests["sha256"])
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return digests, size


def _keep(keep: list[bytes] | None, chunk: bytes, size: int) -> None:
    if keep is None:
        return
    if size > KEEP_AT_MOST:
        keep.clear()
    else:
        keep.append(chunk)


def store_derived(store: LocalFileStore, data: bytes) -> str:
    """
    Store C{data} (a wheel's METADATA) unsynced, straight under its final
    name; return its sha256.  Derived data: one cut short by a crash is
    found by its digest before it is served and made again from the wheel
    (L{devpi_tx.model.metadata.repair_metadata}), so it needs no
    temporary name (a file created and renamed is a third dearer than one
    created, and an import stores one per wheel).
    """
    digest = hashlib.sha256(data).hexdigest()
    final = store.local_path(digest)
    store.make_directory(os.path.dirname(final))
    try:
        with open(final, "xb") as f:
            f.write(data)
    except FileExistsError:
        pass  # the same METADATA, stored for an earlier wheel
    return digest


def export_file(source: str, target: str, *, hard_link: bool) -> bool:
    """
    Put the stored file C{source} at C{target} in a dump; return whether
    it was hard-linked (C{False}: copied, also when a link was asked for
    but the two are on different filesystems).
    """
    if hard_link:
        try:
            os.link(source, target)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copyfile(source, target)
    return False


def sync_filesystem(path: str) -> None:
    """
    Write everything cached for the filesystem holding C{path} to disk
    (C{syncfs(2)}; C{sync(2)} where it is missing).
    """
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)

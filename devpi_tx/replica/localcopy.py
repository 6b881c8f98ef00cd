"""
Blobs a replica can have without asking its primary: a copy of the file
in another server directory on this machine (C{--replica-file-search-path}),
and a wheel's METADATA, made from the stored wheel.  The functions block on
the disk: they run in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from ..interfaces import IFileStore, ILocalFileStore
from ..model.errors import InvalidInput
from ..model.metadata import wheel_metadata


def check_relpath(relpath: str) -> None:
    """
    A relpath from the primary becomes a path below the search paths:
    none that leaves them.

    @raise InvalidInput: C{relpath} is absolute or has empty, C{.} or
        C{..} segments.
    """
    parts = relpath.split("/")
    if relpath.startswith("/") or "\\" in relpath or any(part in ("", ".", "..") for part in parts):
        raise InvalidInput(f"refused file path {relpath!r}")


def candidates(search_paths: Iterable[str], relpath: str, sha256: str, *, by_name: bool) -> Iterator[str]:
    """
    Where a search path may hold a blob: laid out as devpi-tx's file store
    (by digest), in its C{+files} or in a server directory, and (with
    C{by_name}: a release file, not a derived blob) as devpi-server's
    C{+files} (by relpath), in it or in a server directory.
    """
    parts = relpath.split("/")
    for root in search_paths:
        yield os.path.join(root, sha256[:3], sha256[3:])
        yield os.path.join(root, "+files", sha256[:3], sha256[3:])
        if by_name:
            yield os.path.join(root, *parts)
            yield os.path.join(root, "+files", *parts)


def take_local_copy(
    files: IFileStore, sources: Iterable[str], sha256: str, hard_links: bool
) -> tuple[str | None, list[str]]:
    """
    Store the first of C{sources} that exists and has digest C{sha256}, by
    a hard link if asked for and possible (the store has C{link}, the same
    filesystem), else by a copy; either is hashed before it gets its final
    name.

    @return: the source used (or L{None}), and the sources found with
        other content.
    """
    wrong = []
    # Hard links only into a store on this disk; any other gets a copy.
    link = getattr(files, "link", None) if hard_links and ILocalFileStore.providedBy(files) else None
    for source in sources:
        if not os.path.isfile(source):
            continue
        if link is not None:
            try:
                if link(source, sha256):
                    return source, wrong
                wrong.append(source)
                continue
            except OSError:
                pass  # another filesystem, say: copied instead
        if _copy(files, source, sha256):
            return source, wrong
        wrong.append(source)
    return None, wrong


def _copy(files: IFileStore, source: str, sha256: str) -> bool:
    writer = files.writer()
    try:
        with open(source, "rb") as f:
            while chunk := f.read(1 << 20):
                writer.write(chunk)
    except OSError:
        writer.abort()
        return False
    if writer.hexdigest() != sha256:
        writer.abort()
        return False
    writer.commit()
    return True


def derive_metadata(files: IFileStore, wheel_sha256: str, basename: str, sha256: str) -> bool:
    """
    Store a wheel's METADATA blob, made from the stored wheel, if it has
    the digest wanted: the primary made it the same way from an upload (a
    mirrored wheel's may come from upstream, and differ).
    """
    try:
        with files.open(wheel_sha256) as wheel:
            data = wheel_metadata(wheel, basename)
    except InvalidInput:
        return False
    writer = files.writer()
    writer.write(data)
    if writer.hexdigest() != sha256:
        writer.abort()
        return False
    writer.commit()
    return True

"""
Core metadata inside distribution files (PEP 658 serves it beside wheels).

An uploaded wheel's METADATA is kept as a blob of its own, stored without
fsync: it is derived from the durable wheel, so it is checked against its
recorded digest before it is first served and made again from the wheel
when a power loss left it missing or short.  The functions that touch the
file store block; the web layer runs them in a worker thread.
"""

from __future__ import annotations

import hashlib
import zipfile
from typing import IO

from ..interfaces import IFileStore, IFileWriter
from .errors import InvalidInput

#: A METADATA file larger than this is refused rather than served.
MAX_METADATA = 16 * 1024 * 1024


def wheel_metadata(path: str | IO[bytes], basename: str) -> bytes:
    """
    The C{.dist-info/METADATA} of a wheel (on disk, or a file object).

    @raise InvalidInput: the file is no zip or has no such member.
    """
    try:
        with zipfile.ZipFile(path) as wheel:
            candidates = [
                info
                for info in wheel.infolist()
                if info.filename.count("/") == 1
                and info.filename.split("/")[0].endswith(".dist-info")
                and info.filename.endswith("/METADATA")
            ]
            if len(candidates) != 1:
                raise InvalidInput(f"{basename!r} is not a valid wheel: no single .dist-info/METADATA")
            if candidates[0].file_size > MAX_METADATA:
                raise InvalidInput(f"{basename!r}: METADATA is too large")
            return wheel.read(candidates[0])
    except (zipfile.BadZipFile, OSError, EOFError):
        raise InvalidInput(f"{basename!r} is not a valid wheel: not a zip file") from None


def stored_is_zip(files: IFileStore, sha256: str) -> bool:
    """
    Whether a stored file is a zip archive.  Blocks.
    """
    with files.open(sha256) as file:
        return zipfile.is_zipfile(file)


def store_metadata(files: IFileStore, data: bytes) -> str:
    """
    Store a wheel's METADATA as a blob, unsynced; return its digest.
    """
    writer = files.writer()
    writer.write(data)
    return writer.commit(durable=False)


def commit_upload(
    files: IFileStore, writer: IFileWriter, wheel_basename: str | None
) -> tuple[str, int, str | None]:
    """
    Make an uploaded file durable and, for a wheel (C{wheel_basename}
    given), store its METADATA as a blob of its own.  Blocks.

    @return: the file's digest and size, and the METADATA's digest.
    @raise InvalidInput: the wheel is broken (its file is stored all the
        same; the caller removes it if nothing else wants it).
    """
    sha256 = writer.commit()
    meta_sha = None
    if wheel_basename is not None:
        with files.open(sha256) as wheel:
            meta_sha = store_metadata(files, wheel_metadata(wheel, wheel_basename))
    return sha256, writer.size, meta_sha


def _intact(files: IFileStore, digest: str) -> bool:
    try:
        with files.open(digest) as blob:
            return hashlib.sha256(blob.read()).hexdigest() == digest
    except FileNotFoundError:
        return False


def repair_metadata(files: IFileStore, wheel_sha256: str, digest: str, basename: str) -> bool:
    """
    Make sure the METADATA blob C{digest} of a stored wheel is intact,
    making it again from the wheel if it is missing or damaged.  Blocks.

    @return: whether it had to be made again.
    @raise InvalidInput: the wheel's METADATA no longer has that digest.
    """
    if _intact(files, digest):
        return False
    with files.open(wheel_sha256) as wheel:
        data = wheel_metadata(wheel, basename)
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidInput(f"the METADATA of {basename} no longer matches its recorded digest")
    # A short file under the final name would be kept as it is.
    files.remove(digest)
    store_metadata(files, data)
    return True

"""
Core metadata inside distribution files (PEP 658 serves it beside wheels).
"""

from __future__ import annotations

import zipfile
from typing import IO

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


def is_zip(path: str) -> bool:
    return zipfile.is_zipfile(path)

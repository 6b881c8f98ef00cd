"""
Which file store a server uses: C{--files} (L{ServerConfig.files}).
"""

from __future__ import annotations

import os

from ..interfaces import IFileStore
from .files import LocalFileStore

#: Where an S3 store's writers spool, in the server directory; its being
#: there tells the offline commands (fsck, export, import), which get no
#: --files, that the files are not in +files.
REMOTE_SPOOL = "+files-tmp"


def check_local_files(serverdir: str, files: str | None, what: str) -> None:
    """
    Refuse C{what} (a command that reads or writes +files on disk) for a
    server whose files are in object storage.

    @raise ValueError: they are (C{files} given, or the server directory
        has an S3 store's spool).
    """
    if files is not None or os.path.isdir(os.path.join(serverdir, REMOTE_SPOOL)):
        raise ValueError(
            f"{what} works on files in the server directory's +files, and this server keeps them in "
            f"object storage (--files s3://...; remove {REMOTE_SPOOL} if it no longer does)"
        )


def open_file_store(config) -> IFileStore:
    """
    The store C{config} asks for: C{+files} in the server directory by
    default, or an S3 bucket (C{s3://bucket/prefix}), whose writers spool
    in the server directory's C{+files-tmp}.
    """
    if config.files is None:
        return LocalFileStore(os.path.join(config.serverdir, "+files"))
    from ..config import ConfigError
    from .s3 import S3FileStore, make_client, parse_files_url

    try:
        import botocore  # noqa: F401
    except ImportError as e:
        from .backends import needs_extra

        raise ConfigError(f"option files: {needs_extra(e)}") from None
    bucket, prefix = parse_files_url(config.files)

    try:
        client = make_client(config.files_endpoint, config.files_region)
    except ValueError as exc:
        raise ConfigError(f"option files: {exc}") from None
    check_bucket(client, bucket)
    return S3FileStore(client, bucket, prefix, os.path.join(config.serverdir, REMOTE_SPOOL))


def check_bucket(client, bucket: str) -> None:
    """
    Fail at start-up, in one line, rather than at the first upload: a
    bucket that cannot be reached (or that these credentials may not use).
    Blocks.

    @raise ConfigError: it cannot.
    """
    from ..config import ConfigError

    try:
        client.head_bucket(Bucket=bucket)
    except Exception as exc:
        status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason = f"answered {status}" if status else str(exc).splitlines()[0]
        raise ConfigError(f"option files: bucket {bucket} at {client.meta.endpoint_url}: {reason}") from None

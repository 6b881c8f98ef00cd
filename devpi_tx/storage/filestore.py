"""
Which file store a server uses: C{--files} (L{ServerConfig.files}).
"""

from __future__ import annotations

import os

from ..interfaces import IFileStore
from .files import LocalFileStore


def open_file_store(config) -> IFileStore:
    """
    The store C{config} asks for: C{+files} in the server directory by
    default, or an S3 bucket (C{s3://bucket/prefix}), whose writers spool
    in the server directory's C{+files-tmp}.
    """
    if config.files is None:
        return LocalFileStore(os.path.join(config.serverdir, "+files"))
    from .s3 import S3FileStore, make_client, parse_files_url

    bucket, prefix = parse_files_url(config.files)
    client = make_client(config.files_endpoint, config.files_region)
    return S3FileStore(client, bucket, prefix, os.path.join(config.serverdir, "+files-tmp"))

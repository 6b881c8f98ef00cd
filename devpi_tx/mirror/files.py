"""
Mirrored files: downloaded from upstream on first request (one download
however many clients ask at once), checked against the upstream sha256,
then stored like any other file and linked in the state.
"""

from __future__ import annotations

import time

import treq
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..model import releases
from .client import UpstreamError, redact, split_credentials

log = Logger(namespace="devpi_tx.mirror")


class MirrorFiles:
    def __init__(self, storage, files, http, *, timeout: float, run_in_thread) -> None:
        self._storage = storage
        self._files = files
        self._http = http
        self._timeout = timeout
        self._run = run_in_thread
        self._inflight: dict[str, list[Deferred]] = {}

    def is_stored(self, entry: dict) -> bool:
        return bool(entry.get("stored")) and self._files.exists(entry["sha256"])

    async def ensure(self, path: str) -> dict:
        """
        Make sure the mirrored file at C{path} is stored; return its entry.

        @raise UpstreamError: the download failed or did not match.
        """
        entry = releases.get_file(self._storage, path)
        if entry is not None and self.is_stored(entry):
            return entry
        if path in self._inflight:
            waiter: Deferred = Deferred()
            self._inflight[path].append(waiter)
            return await waiter
        self._inflight[path] = []
        try:
            result = await self._download(path, entry)
        except BaseException as exc:
            for waiter in self._inflight.pop(path):
                waiter.errback(exc)
            raise
        for waiter in self._inflight.pop(path):
            waiter.callback(result)
        return result

    async def head(self, entry: dict) -> dict[str, str]:
        """
        Ask upstream about a file without downloading it.
        """
        url, auth = split_credentials(entry["url"])
        try:
            response = await self._http.head(url, headers=auth, timeout=self._timeout)
        except Exception as exc:
            raise UpstreamError(f"{redact(url)}: {exc}") from None
        if response.code != 200:
            raise UpstreamError(f"{redact(url)}: upstream answered {response.code}")
        return {
            name: value[0].decode("latin-1") if isinstance(value[0], bytes) else value[0]
            for name in ("Content-Length",)
            if (value := response.headers.getRawHeaders(name))
        }

    async def _download(self, path: str, entry: dict) -> dict:
        url, auth = split_credentials(entry["url"])
        writer = self._files.writer()
        try:
            response = await self._http.get(url, headers=auth, timeout=self._timeout, unbuffered=True)
            if response.code != 200:
                raise UpstreamError(f"{redact(url)}: upstream answered {response.code}")
            await treq.collect(response, writer.write)
            digest = writer.hexdigest()
            if entry.get("sha256") and digest != entry["sha256"]:
                raise UpstreamError(
                    f"{redact(url)}: sha256 mismatch, expected {entry['sha256']}, got {digest}"
                )
        except UpstreamError:
            writer.abort()
            raise
        except Exception as exc:
            writer.abort()
            raise UpstreamError(f"{redact(url)}: download failed: {exc.__class__.__name__}: {exc}") from None
        sha256 = await self._run(writer.commit)
        with self._storage.transaction() as tx:
            current = tx.get(releases.file_key(path)) or entry
            current = dict(current, sha256=sha256, size=writer.size, last_modified=time.time(), stored=True)
            tx.set(releases.file_key(path), current)
            if not entry.get("stored"):
                tx.set(releases.blob_key(sha256), (tx.get(releases.blob_key(sha256)) or 0) + 1)
        log.info("mirrored {url} ({size} bytes)", url=redact(url), size=writer.size)
        return current

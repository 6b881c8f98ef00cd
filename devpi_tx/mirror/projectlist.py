"""
The upstream project list of each mirror, fetched in the background (never
on a request's path), parsed while it streams in, and kept on disk: for a
public index it is tens of megabytes, too much to hold in memory or to put
into the state.

Files: C{<serverdir>/+mirrorlists/<user>+<index>.txt}, one name a line,
replaced atomically after each complete fetch, and beside it C{.json}: the
URL it came from, when upstream was last asked, and upstream's ETag,
Last-Modified and serial.  A list is kept across restarts and asked for
again only once older than its mirror's C{mirror_cache_expiry}, with
C{If-None-Match}/C{If-Modified-Since}: a start, or a test's throwaway
server, does not download a public index's list (about 930,000 names)
again; a 304 only notes the time.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable

import treq
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from ..customizers import BUILTIN
from ..logs import logger
from ..model.stages import Stage
from .client import ACCEPT, JSON_V1, ask_upstream, collect_until_idle, redact

log = logger("devpi_tx.mirror")

_JSON_NAME = re.compile(rb'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_HTML_NAME = re.compile(rb"<a\b[^>]*>([^<]*)</a>", re.I)


class NameScanner:
    """
    Pull project names out of a simple index root as its bytes arrive,
    holding only the unfinished tail of the last chunk.
    """

    def __init__(self, content_type: str, out) -> None:
        self._pattern = _JSON_NAME if content_type.startswith(JSON_V1) else _HTML_NAME
        self._json = self._pattern is _JSON_NAME
        self._buffer = b""
        self._out = out
        self.count = 0

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        end = 0
        for match in self._pattern.finditer(self._buffer):
            raw = match.group(1)
            name = json.loads(b'"' + raw + b'"') if self._json else raw.decode("utf-8", "replace").strip()
            if name:
                self._out.write(name + "\n")
                self.count += 1
            end = match.end()
        # Keep what may be the start of a name cut by the chunk boundary.
        self._buffer = self._buffer[end:][-4096:]


class ProjectLists:
    def __init__(
        self,
        storage,
        http,
        serverdir: str,
        *,
        timeout: float,
        on_change=lambda: None,
        default_expiry: float = 1800.0,
        clock: Callable[[], float] = time.time,
        is_mirror: Callable[[dict], bool] = BUILTIN.is_mirror,
    ) -> None:
        """
        @param clock: wall-clock time, which the record of a list's last
            check keeps across restarts.
        @param is_mirror: whether an index (by its configuration) is a
            mirror: its index type's C{is_mirror}.
        """
        self._is_mirror = is_mirror
        self._default_expiry = default_expiry
        self._clock = clock
        self._storage = storage
        self._on_change = on_change
        self._http = http
        self._dir = os.path.join(serverdir, "+mirrorlists")
        self._timeout = timeout
        self._running: set[str] = set()

    def path(self, stage: str) -> str:
        return os.path.join(self._dir, stage.replace("/", "+") + ".txt")

    def has_list(self, stage: str) -> bool:
        return os.path.exists(self.path(stage))

    def _record_path(self, stage: str) -> str:
        return self.path(stage)[: -len(".txt")] + ".json"

    def record(self, stage: str) -> dict:
        """
        What is known of the list's fetch (empty if nothing is).
        """
        try:
            with open(self._record_path(stage), encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _write_record(self, stage: str, record: dict) -> None:
        tmp = self._record_path(stage) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, self._record_path(stage))

    def is_fresh(self, stage: Stage) -> bool:
        """
        Whether the stored list was checked upstream (at its URL) within
        the mirror's expiry.
        """
        record = self.record(stage.name)
        url = stage.config.get("mirror_url", "").rstrip("/") + "/"
        if not self.has_list(stage.name) or record.get("url") != url:
            return False
        expiry = stage.config.get("mirror_cache_expiry", self._default_expiry)
        return 0 <= self._clock() - record.get("checked", 0) < expiry

    def mirrors(self) -> list[Stage]:
        """
        The mirror indexes whose upstream list is wanted.
        """
        found = []
        for key in self._storage.keys("user/"):
            user = key[len("user/") :]
            for name, config in self._storage.get(key).get("indexes", {}).items():
                if self._is_mirror(config) and not config.get("mirror_no_project_list"):
                    found.append(Stage(f"{user}/{name}", config, is_mirror=True))
        return found

    def refresh_all(self):
        return ensureDeferred(self._refresh_all())

    async def _refresh_all(self) -> None:
        for stage in self.mirrors():
            if stage.name not in self._running:
                await self.refresh(stage)

    async def refresh(self, stage: Stage, force: bool = False) -> int | None:
        """
        Fetch one mirror's list unless it is fresh (or C{force}); return how
        many names it had, L{None} if no new list was stored.
        """
        if not force and self.is_fresh(stage):
            return None
        self._running.add(stage.name)
        url = stage.config.get("mirror_url", "").rstrip("/") + "/"
        os.makedirs(self._dir, exist_ok=True)
        tmp = self.path(stage.name) + ".tmp"
        record = self.record(stage.name)
        headers = {"Accept": ACCEPT}
        if self.has_list(stage.name) and record.get("url") == url:
            if record.get("etag"):
                headers["If-None-Match"] = record["etag"]
            if record.get("last_modified"):
                headers["If-Modified-Since"] = record["last_modified"]
        checked = self._clock()
        try:
            plain, response = await ask_upstream(
                self._http, "GET", url, headers=headers, timeout=self._timeout
            )
            if response.code == 304:
                await treq.content(response)
                self._write_record(stage.name, dict(record, checked=checked))
                log.debug("project list of {stage}: not modified", stage=stage.name)
                return None
            if response.code != 200:
                log.warn(
                    "project list of {url}: upstream answered {code}", url=redact(plain), code=response.code
                )
                await treq.content(response)
                return None
            content_type = (response.headers.getRawHeaders("content-type") or [""])[0]
            with open(tmp, "w", encoding="utf-8") as out:
                scanner = NameScanner(content_type, out)
                await collect_until_idle(self._http, response, scanner.feed, idle=self._timeout, url=plain)
            os.replace(tmp, self.path(stage.name))
            self._write_record(
                stage.name,
                {
                    "url": url,
                    "checked": checked,
                    "etag": _header(response, "etag"),
                    "last_modified": _header(response, "last-modified"),
                    "serial": _header(response, "x-pypi-last-serial"),
                    "count": scanner.count,
                },
            )
            self._on_change()
            log.info("project list of {stage}: {count} names", stage=stage.name, count=scanner.count)
            return scanner.count
        except (Exception, CancelledError) as exc:
            if not isinstance(exc, CancelledError):
                log.warn("project list of {url} failed: {error}", url=redact(url), error=str(exc))
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(exc, CancelledError):
                raise
            return None
        finally:
            self._running.discard(stage.name)


def _header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


class ProjectListService(Service):
    """
    Look at every mirror's list at start and then every C{interval}
    seconds, fetching those no longer fresh (L{ProjectLists.is_fresh}).
    Stopping cancels a refresh under way (its temporary file is removed),
    so that a slow upstream never holds up shutdown.
    """

    def __init__(self, lists: ProjectLists, interval: float, clock: IReactorTime) -> None:
        self.setName("project-lists")
        self._lists = lists
        self._loop = LoopingCall(self._refresh)
        self._loop.clock = clock
        self._interval = interval
        self._current: Deferred | None = None

    def _refresh(self) -> None:
        # Never returns the refresh: the loop goes on even if one fails.
        if self._current is None:
            self._current = self._lists.refresh_all()
            self._current.addBoth(self._done)

    def _done(self, result) -> None:
        self._current = None

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._current is not None:
            self._current.cancel()

"""
Mirrored project pages: fetched on first request and whenever older than
the index's C{mirror_cache_expiry}, one upstream fetch per project however
many requests wait for it, kept in the state so that they survive
restarts and serve while upstream is down.

State keys::

    mirror/<user>/<index>/<project>   {"links": [...], "versions": [...],
                                       "etag": ..., "serial": ...}
    file/<user>/<index>/+f/<h>/<name> what a mirrored file's URL points to
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from ..logs import logger
from ..model import releases
from ..model.archives import version_of
from ..model.stages import Stage
from ..singleflight import SingleFlight
from .client import NotFoundUpstream, NotModified, UpstreamClient, UpstreamError, gateway_status, redact

log = logger("devpi_tx.mirror")

#: How long an upstream 404 is remembered, in seconds.
NOT_FOUND_TTL = 60.0

#: Wheels at least this large (by upstream's PEP 700 size) have their core
#: metadata advertised even when upstream offers none: it is read from the
#: wheel's zip directory with range requests, which spares an installer
#: whose resolver passes the wheel over a large download.  For smaller
#: wheels the download costs about what the extra request does, so their
#: pages say nothing (their .metadata is still served when asked for).
SYNTHESIZED_METADATA_MIN_SIZE = 8 * 1024 * 1024


#: On a replica: ask the primary to bring a page up to date and wait until
#: the replica has applied what it committed; whether upstream has the
#: project.  Raises L{UpstreamError} when the primary fails.
ViaPrimary = Callable[[Stage, str], Awaitable[bool]]


#: How many projects' freshness (and upstream 404s) are remembered per
#: mirror set; past it the least recently checked are forgotten (and
#: revalidated when next asked for, a 304 at most).
MAX_REMEMBERED = 100_000


class _Recent:
    """
    A map of at most C{size} entries; setting one makes it the newest,
    and past the size the oldest is dropped.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._items

    def get(self, key: tuple[str, str]) -> float | None:
        return self._items.get(key)

    def __setitem__(self, key: tuple[str, str], value: float) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: tuple[str, str], default=None):
        return self._items.pop(key, default)


class MirrorUnavailable(Exception):
    """
    Upstream failed and nothing is cached: the caller answers C{status}
    (L{gateway_status}: 504 when upstream did not answer in time, else 502).
    """

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def mirror_key(stage: str, project: str) -> str:
    return f"mirror/{stage}/{project}"


def link_relpath(stage: str, link: dict) -> str:
    if link.get("sha256"):
        return releases.relpath(stage, link["sha256"], link["filename"])
    # No hash upstream: an address of its own, derived from the URL.
    mangled = hashlib.sha256(link["url"].encode()).hexdigest()[:16]
    return f"{stage}/+e/{mangled}/{link['filename']}"


#: How a page asked for upstream turned out (the metrics' results).
FETCH_RESULTS = ("changed", "unchanged", "not_modified", "not_found", "error", "older_serial", "via_primary")


class MirrorPages:
    def __init__(
        self,
        storage,
        client: UpstreamClient,
        *,
        default_expiry: int,
        offline: bool = False,
        clock: Callable[[], float] = time.monotonic,
        metadata_min_size: int = SYNTHESIZED_METADATA_MIN_SIZE,
        max_remembered: int = MAX_REMEMBERED,
        via_primary: ViaPrimary | None = None,
        leases=None,
    ) -> None:
        """
        @param leases: with nodes sharing the state, the L{FetchLeases} that
            make one node fetch a page the others then read from the state.
        @param via_primary: on a replica, how a page is brought up to date:
            the primary is asked (it fetches upstream and commits), and the
            replica waits until it has applied that commit; a replica never
            commits a page itself, as its serials are the primary's.
        """
        self._storage = storage
        self._via_primary = via_primary
        self.leases = leases
        self._metadata_min_size = metadata_min_size
        self._client = client
        self._default_expiry = default_expiry
        self._offline = offline
        self._clock = clock
        #: When each (stage, project) page was last found current upstream.
        self._checked = _Recent(max_remembered)
        #: Until when each (stage, project) upstream answered 404 for is taken as absent.
        self._missing = _Recent(max_remembered)
        self._fetches: SingleFlight[str | None] = SingleFlight()
        #: Pages asked for upstream (or through the primary), by result (metrics).
        self.fetches: collections.Counter[str] = collections.Counter(dict.fromkeys(FETCH_RESULTS, 0))

    def forget(self, stage: str, project: str) -> None:
        """
        Make the next request fetch the project again (devpi refresh).
        """
        self._checked.pop((stage, project), None)
        self._missing.pop((stage, project), None)

    def cached(self, stage: str, project: str) -> dict | None:
        return self._storage.get(mirror_key(stage, project))

    def cached_projects(self, stage: str) -> list[str]:
        prefix = f"mirror/{stage}/"
        return [key[len(prefix) :] for key in self._storage.keys(prefix)]

    def is_fresh(self, stage: Stage, project: str) -> bool:
        """
        Whether the cached page of C{project} (or the memory that upstream
        has no such project) is recent enough to answer from without asking
        upstream; offline, everything is.
        """
        if self._offline:
            return True
        key = (stage.name, project)
        now = self._clock()
        expiry = stage.config.get("mirror_cache_expiry", self._default_expiry)
        checked = self._checked.get(key)
        if checked is not None and now - checked < expiry:
            return True
        missing_until = self._missing.get(key)
        return missing_until is not None and now < missing_until

    async def ensure(self, stage: Stage, project: str) -> str | None:
        """
        Make the cached page of C{project} fresh enough.

        @return: a warning when a stale page is served because upstream
            failed, else L{None}.
        @raise MirrorUnavailable: upstream failed and nothing is cached.
        """
        key = (stage.name, project)
        if self.is_fresh(stage, project):
            return None
        return await self._fetches.run(key, lambda: self._refresh(stage, project))

    async def _refresh(self, stage: Stage, project: str) -> str | None:
        if self._via_primary is not None:
            return await self._refresh_via_primary(stage, project)
        if self.leases is not None and self.leases.shared:
            name = mirror_key(stage.name, project)
            elsewhere = lambda: self._fetched_elsewhere(stage, project)  # noqa: E731
            return await self.leases.run(name, name, elsewhere, lambda: self._fetch(stage, project)) or None
        return await self._fetch(stage, project)

    def _fetched_elsewhere(self, stage: Stage, project: str) -> str:
        """
        Another node committed the page it fetched (or removed it, upstream
        not having the project): as fresh as if fetched here.
        """
        key = (stage.name, project)
        if self.cached(stage.name, project) is None:
            self._missing[key] = self._clock() + NOT_FOUND_TTL
        else:
            self._checked[key] = self._clock()
            self._missing.pop(key, None)
        return ""

    async def _fetch(self, stage: Stage, project: str) -> str | None:
        key = (stage.name, project)
        stored = self.cached(stage.name, project)
        url = stage.config.get("mirror_url", "")
        try:
            fetched = await self._client.project_page(url, project, etag=(stored or {}).get("etag"))
        except NotModified:
            self.fetches["not_modified"] += 1
            self._checked[key] = self._clock()
            return None
        except NotFoundUpstream:
            self.fetches["not_found"] += 1
            if stored is not None:
                async with self._storage.write(durable=False) as tx:
                    tx.delete(mirror_key(stage.name, project))
            # Only once the state says so: until then a request that finds
            # the project missing would not wait for this fetch.
            self._missing[key] = self._clock() + NOT_FOUND_TTL
            return None
        except UpstreamError as exc:
            self.fetches["error"] += 1
            log.warn("mirror {stage}: {error}", stage=stage.name, error=str(exc))
            if stored is None:
                raise MirrorUnavailable(
                    f"upstream {redact(url)} failed: {exc}", status=gateway_status(exc)
                ) from None
            return f"upstream failed, serving the cached page ({exc})"
        checked = self._clock()
        if (
            stored is not None
            and fetched.serial is not None
            and stored.get("serial") is not None
            and fetched.serial < stored["serial"]
            and not stage.config.get("mirror_ignore_serial_header", False)
        ):
            self._fresh(key, checked)
            self.fetches["older_serial"] += 1
            log.warn(
                "mirror {stage}: upstream serial {new} for {project} is older than "
                "the cached {old}; keeping the cached page",
                stage=stage.name,
                project=project,
                new=fetched.serial,
                old=stored["serial"],
            )
            return None
        page = {
            "links": [link.to_json() for link in fetched.links],
            "versions": fetched.versions,
            "etag": fetched.etag,
            "serial": fetched.serial,
        }
        if stored == page:
            self._fresh(key, checked)
            self.fetches["unchanged"] += 1
            return None
        self.fetches["changed"] += 1
        await self._store(stage.name, project, page, stored)
        # Fresh only once committed: a request meanwhile (a write waits for
        # the state's lock on PostgreSQL) joins this fetch rather than read
        # a page that is not there yet.
        self._fresh(key, checked)
        return None

    def _fresh(self, key: tuple[str, str], checked: float) -> None:
        self._checked[key] = checked
        self._missing.pop(key, None)

    async def _refresh_via_primary(self, stage: Stage, project: str) -> str | None:
        key = (stage.name, project)
        assert self._via_primary is not None
        self.fetches["via_primary"] += 1
        try:
            found = await self._via_primary(stage, project)
        except UpstreamError as exc:
            self.fetches["error"] += 1
            log.warn("mirror {stage} through the primary: {error}", stage=stage.name, error=str(exc))
            if self.cached(stage.name, project) is None:
                raise MirrorUnavailable(
                    f"the primary failed to answer for {stage.name}/{project}: {exc}",
                    status=gateway_status(exc),
                ) from None
            return f"the primary failed, serving the cached page ({exc})"
        if found:
            self._checked[key] = self._clock()
            self._missing.pop(key, None)
        else:
            self._missing[key] = self._clock() + NOT_FOUND_TTL
        return None

    async def _store(self, stage: str, project: str, page: dict, stored: dict | None) -> None:
        old = {link_relpath(stage, link): link for link in (stored or {}).get("links", [])}
        # A cached page can be fetched again: no fsync for it (the next
        # durable commit makes it durable too).
        async with self._storage.write(durable=False) as tx:
            tx.set(mirror_key(stage, project), page)
            for link in page["links"]:
                path = link_relpath(stage, link)
                old.pop(path, None)
                entry = tx.get(releases.file_key(path)) or {}
                wanted = {
                    "rel": "releasefile",
                    "project": project,
                    "version": None,
                    "url": link["url"],
                    "sha256": link.get("sha256") or entry.get("sha256"),
                    # Known once stored; until then, what upstream says (PEP 700).
                    "size": entry.get("size") if entry.get("stored") else link.get("size"),
                    "last_modified": entry.get("last_modified", time.time()),
                    "mirror": True,
                }
                if link.get("hash_spec") and not wanted["sha256"]:
                    wanted["hash_spec"] = link["hash_spec"]
                if link.get("core_metadata"):
                    wanted["upstream_metadata"] = link["core_metadata"]
                for kept in ("stored", "core_metadata_sha256"):
                    if entry.get(kept):
                        wanted[kept] = entry[kept]
                if entry != wanted:
                    tx.set(releases.file_key(path), wanted)
            for path in old:
                entry = tx.get(releases.file_key(path))
                if entry is not None and not entry.get("stored"):
                    tx.delete(releases.file_key(path))

    def links(self, stage: Stage, project: str) -> tuple[list[dict], list[str]]:
        """
        The links of the cached page, shaped like private links, pointing
        to this server.
        """
        page = self.cached(stage.name, project)
        if page is None:
            return [], []
        versions = list(page.get("versions", []))
        if not versions:
            # An upstream that gives no PEP 700 versions (HTML, or JSON of
            # API 1.0): the versions its files show, as API 1.1 requires.
            found = (version_of(link["filename"]) for link in page["links"])
            versions = list(dict.fromkeys(v for v in found if v))
        return self._shown(stage, page), versions

    def _shown(self, stage: Stage, page: dict) -> list[dict]:
        links = []
        for link in page["links"]:
            shown = {
                "rel": "releasefile",
                "basename": link["filename"],
                "relpath": link_relpath(stage.name, link),
                "sha256": link.get("sha256"),
            }
            if link.get("hash_spec"):
                shown["hash_spec"] = link["hash_spec"]
            meta = link.get("core_metadata")
            size = link.get("size")
            if isinstance(meta, str):
                shown["core_metadata_sha256"] = meta
            elif meta or (
                link["filename"].endswith(".whl")
                and isinstance(size, int)
                and size >= self._metadata_min_size
            ):
                # Upstream has it without a hash, or devpi-tx reads it from
                # the large wheel itself when asked.
                shown["core_metadata"] = True
            for source, target in (
                ("requires_python", "requires_python"),
                ("yanked", "yanked"),
                ("size", "size"),
                ("upload_time", "upload_time"),
            ):
                if link.get(source) is not None:
                    shown[target] = link[source]
            links.append(shown)
        return links

    def version_records(self, stage: Stage, project: str) -> dict[str, dict] | None:
        """
        The cached page as version records, shaped as devpi shows a
        mirror's: C{name}, C{version}, C{requires_python} when known,
        C{yanked} when every file of the version is, and C{+links} (without
        a log); L{None} when nothing is cached.  Files whose name shows no
        version are left out, as devpi leaves them out.
        """
        page = self.cached(stage.name, project)
        if page is None:
            return None
        records: dict[str, dict] = {}
        for link in self._shown(stage, page):
            version = version_of(link["basename"])
            if version is None:
                continue
            record = records.setdefault(version, {"name": project, "version": version, "+links": []})
            record["+links"].append(link)
        for record in records.values():
            links = record["+links"]
            requires = next((x["requires_python"] for x in links if x.get("requires_python")), None)
            if requires:
                record["requires_python"] = requires
            if all(x.get("yanked") not in (None, False) for x in links):
                record["yanked"] = links[0]["yanked"]
        return records

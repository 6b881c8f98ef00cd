"""
The version records of private projects, decoded once and kept from the
commits: a project of 4,000 versions took 110-130 ms to read (8,000 keys
decoded from JSON) for every page made after an upload; with this memo a
commit that touches one version makes only that version be read again.

Only what has been committed is here: a transaction reads the state itself.
Each version comes with a slot for what callers derive from it (the lines
of its files on a project page), emptied when the version changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from packaging.utils import canonicalize_name

from . import releases


class VersionEntry:
    """
    One version as readers see it, and what callers made from it.
    """

    __slots__ = ("derived", "links", "record")

    def __init__(self, record: dict) -> None:
        #: The version record with its links under C{"+links"}.
        self.record = record
        #: Its release files as a project page shows them: with the
        #: version's C{requires_python}.
        self.links = shown_links(record)
        #: Whatever callers derive from it; gone with the entry.
        self.derived: dict = {}


#: What a version keeps of the pages it is part of (formats, paths,
#: absolute bases): the common few.
MAX_DERIVED = 8


def derived(slot: dict | None, key: tuple, make: Callable[[], bytes]) -> bytes:
    """
    What C{make} makes, kept in a version's C{derived} C{slot} under C{key}
    (made every time without a slot: a version not from the memo).
    """
    if slot is None:
        return make()
    found = slot.get(key)
    if found is None:
        if len(slot) >= MAX_DERIVED:
            slot.clear()  # pages of other paths or bases: keep a few
        found = slot[key] = make()
    return found


def shown_links(record: dict) -> list[dict]:
    """
    The release files of a version as a project page shows them, oldest
    first, each with the version's C{requires_python}.
    """
    links = []
    for link in record.get("+links", []):
        if link["rel"] != "releasefile":
            continue
        shown = dict(link)
        if record.get("requires_python"):
            shown["requires_python"] = record["requires_python"]
        links.append(shown)
    return links


class _Project:
    __slots__ = ("entries", "stale")

    def __init__(self, entries: dict[str, VersionEntry]) -> None:
        self.entries = entries
        #: Versions a commit touched since they were read.
        self.stale: set[str] = set()


class VersionsMemo:
    """
    Per (stage, project): its versions in key order, as L{VersionEntry}s.
    """

    def __init__(self, storage, max_versions: int = 100_000) -> None:
        self._storage = storage
        self._projects: OrderedDict[tuple[str, str], _Project] = OrderedDict()
        self._count = 0
        self._max_versions = max_versions
        storage.subscribe(self.changed)

    def entries(self, stage: str, project: str) -> dict[str, VersionEntry]:
        """
        The committed versions of C{project} on C{stage} (read-only to
        callers, but for each entry's C{derived}).
        """
        key = (stage, canonicalize_name(project))
        memo = self._projects.get(key)
        if memo is None:
            records = releases.version_records(self._storage, *key)
            memo = _Project({version: VersionEntry(record) for version, record in records.items()})
            self._projects[key] = memo
            self._count += len(memo.entries)
            self._bound(key)
        else:
            self._projects.move_to_end(key)
            if memo.stale:
                self._refresh(key, memo)
        return memo.entries

    def _refresh(self, key: tuple[str, str], memo: _Project) -> None:
        entries = memo.entries
        before = len(entries)
        added = False
        for version in memo.stale:
            record = releases.get_version(self._storage, key[0], key[1], version)
            if record is None:
                entries.pop(version, None)
            else:
                added = added or version not in entries
                entries[version] = VersionEntry(record)
        memo.stale.clear()
        if added:
            # In key order, as a range scan reads them.
            memo.entries = dict(sorted(entries.items()))
        self._count += len(memo.entries) - before

    def _bound(self, keep: tuple[str, str]) -> None:
        while self._count > self._max_versions and len(self._projects) > 1:
            oldest = next(iter(self._projects))
            if oldest == keep:
                self._projects.move_to_end(oldest)
                continue
            self._count -= len(self._projects.pop(oldest).entries)

    def changed(self, serial: int, keys: frozenset[str]) -> None:
        """
        A storage commit listener.
        """
        if not self._projects:
            return
        for key in keys:
            kind, _, rest = key.partition("/")
            if kind == "user":
                self._projects.clear()
                self._count = 0
                return
            if kind not in ("version", "link", "project"):
                continue
            parts = rest.split("/", 4)
            if len(parts) < 3:
                continue
            memo = self._projects.get((f"{parts[0]}/{parts[1]}", parts[2]))
            if memo is None:
                continue
            if kind == "project":
                # A project deleted or made anew: read it whole next time.
                self._count -= len(memo.entries)
                del self._projects[(f"{parts[0]}/{parts[1]}", parts[2])]
            elif len(parts) >= 4:
                memo.stale.add(parts[3])

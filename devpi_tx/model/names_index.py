"""
The project names of each private index, kept in memory and kept exact
from the commits, so that an index's listing or JSON does not scan the
state's keys (about 30 ms at 100,000 projects) every time a project
appears.

A stage's names are read from the state the first time they are asked for;
then each commit that writes a C{project/} key adds or removes that name
(the key's value says which), and a commit that touches a C{user/} key
(an index created, deleted or reconfigured) forgets everything.

The names are kept in chunks of a few hundred, each with a slot for what
callers derive from it (a rendered piece of a page), emptied when the
chunk changes: a project that appears among 100,000 changes one chunk, so
a listing is put together again from 199 pieces kept and one made anew,
instead of rendering 100,000 names.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from . import releases

#: Names per chunk: a chunk is split in two when it holds twice as many.
CHUNK = 512


class NameChunk:
    """
    A run of consecutive names, and what callers made from them.
    """

    __slots__ = ("derived", "names")

    def __init__(self, names: list[str]) -> None:
        self.names = names
        #: Whatever callers derive from C{names} (rendered bytes, by
        #: format); emptied whenever C{names} changes.
        self.derived: dict = {}


class SortedNames:
    """
    The sorted names of one stage, in L{NameChunk}s (read-only to callers
    but for the chunks' C{derived}).
    """

    def __init__(self, names: list[str], chunk: int = CHUNK) -> None:
        self._chunk = chunk
        self.chunks = [NameChunk(names[at : at + chunk]) for at in range(0, len(names), chunk)]
        self._len = len(names)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for chunk in self.chunks:
            yield from chunk.names

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SortedNames | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"SortedNames({list(self)!r})"

    def _locate(self, name: str) -> int:
        """
        The index of the chunk where C{name} is or would go.
        """
        lo, hi = 0, len(self.chunks) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.chunks[mid].names[-1] < name:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def add(self, name: str) -> bool:
        """
        Add C{name}; return whether it was new.
        """
        if not self.chunks:
            self.chunks.append(NameChunk([name]))
            self._len = 1
            return True
        chunk = self.chunks[self._locate(name)]
        at = bisect.bisect_left(chunk.names, name)
        if at < len(chunk.names) and chunk.names[at] == name:
            return False
        chunk.names.insert(at, name)
        chunk.derived.clear()
        self._len += 1
        if len(chunk.names) >= 2 * self._chunk:
            position = self.chunks.index(chunk)
            half = len(chunk.names) // 2
            self.chunks[position : position + 1] = [
                NameChunk(chunk.names[:half]),
                NameChunk(chunk.names[half:]),
            ]
        return True

    def discard(self, name: str) -> bool:
        """
        Remove C{name}; return whether it was there.
        """
        if not self.chunks:
            return False
        position = self._locate(name)
        chunk = self.chunks[position]
        at = bisect.bisect_left(chunk.names, name)
        if at == len(chunk.names) or chunk.names[at] != name:
            return False
        del chunk.names[at]
        chunk.derived.clear()
        self._len -= 1
        if not chunk.names:
            del self.chunks[position]
        return True


class ProjectNames:
    """
    Sorted project names per stage, shared with callers (read-only).
    """

    def __init__(self, storage, max_stages: int = 1024, chunk: int = CHUNK) -> None:
        self._storage = storage
        self._names: dict[str, SortedNames] = {}
        self._max_stages = max_stages
        self._chunk = chunk
        storage.subscribe(self.changed)

    def get(self, stage: str) -> SortedNames:
        names = self._names.get(stage)
        if names is None:
            if len(self._names) >= self._max_stages:
                self._names.clear()
            names = SortedNames(releases.project_names(self._storage, stage), self._chunk)
            self._names[stage] = names
        return names

    def changed(self, serial: int, keys: frozenset[str]) -> None:
        """
        A storage commit listener.
        """
        if not self._names:
            return
        for key in keys:
            kind, _, rest = key.partition("/")
            if kind == "user":
                self._names.clear()
                return
            if kind != "project":
                continue
            user, index, name = rest.split("/", 2)
            names = self._names.get(f"{user}/{index}")
            if names is None:
                continue
            if self._storage.get(key) is None:
                names.discard(name)
            else:
                names.add(name)

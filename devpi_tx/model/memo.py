"""
Results of pure functions of the index structure, kept until a commit
changes that structure.

Every request to an index reads the index's configuration and, for a
project page, works out which stages of the chain serve the project.
Both depend only on the index configurations (C{user/} keys) and on which
projects the private indexes have (C{project/} keys), so they are computed
once per change of those: the memo forgets everything when a commit
touches such a key.  Commits of anything else, such as the pages and file
entries a mirror caches (dozens a second while installers resolve), leave
the memo alone.

Values handed out are shared between callers and must be treated as
read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")

#: The key prefixes that memoized values may be computed from.
STRUCTURE = ("user/", "project/")


class StateMemo:
    def __init__(self, storage, max_entries: int = 4096, depends_on: tuple[str, ...] = STRUCTURE) -> None:
        self._values: dict[Hashable, object] = {}
        self._max_entries = max_entries
        self._depends_on = depends_on
        storage.subscribe(self.changed)

    def changed(self, serial: int, keys: frozenset[str]) -> None:
        """
        A storage commit listener.
        """
        if self._values and any(key.startswith(self._depends_on) for key in keys):
            self._values.clear()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        try:
            return self._values[key]  # type: ignore[return-value]
        except KeyError:
            pass
        value = compute()
        if len(self._values) >= self._max_entries:
            # Made-up names must not grow the memo without bound.
            self._values.clear()
        self._values[key] = value
        return value

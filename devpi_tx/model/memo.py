"""
Results of pure functions of the state, kept until the next commit.

Every request to an index reads the index's configuration and, for a
project page, works out which stages of the chain serve the project.
Both depend only on the state, so between two commits they are computed
once: the memo forgets everything when the storage's serial moves.

Values handed out are shared between callers and must be treated as
read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


class StateMemo:
    def __init__(self, storage, max_entries: int = 4096) -> None:
        self._storage = storage
        self._serial = storage.serial
        self._values: dict[Hashable, object] = {}
        self._max_entries = max_entries

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        serial = self._storage.serial
        if serial != self._serial:
            self._values.clear()
            self._serial = serial
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

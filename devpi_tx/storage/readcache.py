"""
The read cache every L{devpi_tx.interfaces.IStorage} provider keeps in
front of its database: the encoded values of recently used keys, and,
bounded apart, keys known not to exist.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class ReadCache:
    """
    Encoded values by key, least recently used first out, at most C{size}
    of them (devpi's C{--keyfs-cache-size}); and at most C{size} keys known
    to be absent, in a set of their own, so that lookups of made-up names
    (a cold mirrored page asks for several keys that do not exist yet)
    cannot push values out.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: OrderedDict[str, str] = OrderedDict()
        self.absent: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, key: str, load: Callable[[str], str | None]) -> str | None:
        """
        The encoded value of C{key}, from memory or else from C{load} (the
        database), remembered either way; L{None} if there is none.
        """
        try:
            encoded = self.values[key]
            self.values.move_to_end(key)
            return encoded
        except KeyError:
            pass
        if key in self.absent:
            return None
        encoded = load(key)
        if encoded is None:
            self.absent[key] = None
            if len(self.absent) > self.size:
                self.absent.popitem(last=False)
        else:
            self.remember(key, encoded)
        return encoded

    def remember(self, key: str, encoded: str) -> None:
        self.absent.pop(key, None)
        self.values[key] = encoded
        self.values.move_to_end(key)
        if len(self.values) > self.size:
            self.values.popitem(last=False)

    def apply(self, changes: dict[str, str | None]) -> None:
        """
        What a commit wrote: new values remembered, deleted keys forgotten.
        """
        for key, encoded in changes.items():
            if encoded is None:
                self.values.pop(key, None)
            else:
                self.remember(key, encoded)

    def clear(self) -> None:
        self.values.clear()
        self.absent.clear()

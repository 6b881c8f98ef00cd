"""
The text of the state, shared by every L{devpi_tx.interfaces.IStorage}
provider: how a value is encoded and how a changelog entry is written.
Keeping it in one place is what makes a changelog the same bytes whichever
database holds it, so that replicas, dumps and nodes agree.
"""

from __future__ import annotations

import json

from zope.interface import implementer

from ..interfaces import ITransaction

#: Marks "not among a transaction's writes" (L{None} there is a deletion).
MISSING = object()


def encode(value: object) -> str:
    """
    The stored text of a JSON-compatible value: keys sorted, no spaces, so
    that equal values have equal text.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def overlaid(found: list[str], writes: dict[str, str | None], prefix: str) -> list[str]:
    """
    The sorted keys starting with C{prefix}: C{found} (sorted) as changed
    by C{writes} not yet in the database (L{None} for a deletion).
    """
    if not any(key.startswith(prefix) for key in writes):
        return found
    keys = set(found)
    for key, encoded in writes.items():
        if key.startswith(prefix):
            if encoded is None:
                keys.discard(key)
            else:
                keys.add(key)
    return sorted(keys)


def entry_text(changes: dict[str, str | None]) -> str:
    """
    The JSON text of a changelog entry: its keys sorted, each with its new
    value as encoded (C{null} for a deletion).
    """
    items = sorted(changes.items())
    return "{" + ",".join(f"{json.dumps(key)}:{'null' if enc is None else enc}" for key, enc in items) + "}"


def prefix_upper(prefix: str) -> str:
    """
    The exclusive upper bound of a range scan for the keys starting with
    C{prefix} (no LIKE, so no escaping issues).
    """
    return prefix + "\U0010ffff"


@implementer(ITransaction)
class OverlayTransaction:
    """
    The pending writes of one transaction, read over the committed state:
    what both providers' C{transaction()} yields.  The storage gives
    C{_encoded(key)} (a committed value's text, or L{None}) and C{keys}.
    """

    def __init__(self, storage) -> None:
        self._storage = storage
        self.changes: dict[str, str | None] = {}

    def get(self, key: str) -> object:
        encoded = self.changes.get(key, MISSING)
        if encoded is MISSING:
            encoded = self._storage._encoded(key)
        return None if encoded is None else json.loads(encoded)  # type: ignore[arg-type]

    def set(self, key: str, value: object) -> None:
        self.changes[key] = encode(value)

    def delete(self, key: str) -> None:
        self.changes[key] = None

    def keys(self, prefix: str) -> list[str]:
        return overlaid(self._storage.keys(prefix), self.changes, prefix)

"""
Index types of installed distributions, found through the entry points of
group C{devpi_tx.indexes} (docs/index-types.md says why entry points).

An entry point names an L{IStageCustomizer} provider, or a class or factory
called without arguments that returns one.  Anything wrong with one (it
does not import, does not provide the interface, has no C{type} name or
one already taken) stops the start with a L{PluginError} naming the entry
point and its distribution.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable

import attrs

from ..interfaces import IStageCustomizer
from ..plugins import FoundPlugin, PluginError, find_plugins
from . import BUILTIN_TYPES

#: The entry point group of index types.
GROUP = "devpi_tx.indexes"

__all__ = ["GROUP", "FoundType", "PluginError", "find_index_types"]


@attrs.frozen
class FoundType(FoundPlugin):
    """
    An index type of an installed distribution: a L{FoundPlugin} whose
    provider is an L{IStageCustomizer}.
    """

    @property
    def customizer(self) -> IStageCustomizer:
        return self.provider  # type: ignore[return-value]

    @property
    def type_name(self) -> str:
        return self.customizer.type_name


def find_index_types(
    entry_points: Callable[..., Iterable] = importlib.metadata.entry_points,
    taken: Iterable[str] = BUILTIN_TYPES,
) -> list[FoundType]:
    """
    Load the index types of every installed distribution, in the order of
    their entry points' names (L{find_plugins}), and check their names.

    @raise PluginError: one is broken, or its type name is empty or taken.
    """
    names = set(taken)
    found = []
    for plugin in find_plugins(GROUP, IStageCustomizer, "index type", entry_points):
        where = (
            f"index type plugin {plugin.entry_point!r} "
            f"({plugin.target}, from {plugin.distribution} {plugin.version})"
        )
        type_name = plugin.provider.type_name
        if not isinstance(type_name, str) or not type_name:
            raise PluginError(f"{where}: its type_name must be a non-empty string, got {type_name!r}")
        if type_name in names:
            raise PluginError(f"{where}: index type {type_name!r} is already defined")
        names.add(type_name)
        found.append(FoundType(**attrs.asdict(plugin, recurse=False)))
    return found

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
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from ..config import ConfigError
from ..interfaces import IStageCustomizer
from . import BUILTIN_TYPES

#: The entry point group of index types.
GROUP = "devpi_tx.indexes"


class PluginError(ConfigError):
    """
    An index type plugin could not be loaded; the message names it.
    """


@attrs.frozen
class FoundType:
    """
    An index type of an installed distribution.
    """

    customizer: IStageCustomizer
    entry_point: str
    distribution: str
    version: str

    @property
    def type_name(self) -> str:
        return self.customizer.type_name


def _origin(entry_point) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "an unknown distribution", "?"
    return dist.metadata["Name"] or dist.name, dist.version or "?"


def _load(entry_point) -> IStageCustomizer:
    loaded = entry_point.load()
    if IStageCustomizer.providedBy(loaded):
        return loaded
    if not callable(loaded):
        raise TypeError(f"{entry_point.value} is neither an IStageCustomizer nor a factory of one")
    return loaded()


def find_index_types(
    entry_points: Callable[..., Iterable] = importlib.metadata.entry_points,
    taken: Iterable[str] = BUILTIN_TYPES,
) -> list[FoundType]:
    """
    Load the index types of every installed distribution, in the order of
    their entry points' names.

    @raise PluginError: one is broken.
    """
    names = set(taken)
    found = []
    for entry_point in sorted(entry_points(group=GROUP), key=lambda ep: (ep.name, ep.value)):
        distribution, version = _origin(entry_point)
        where = f"index type plugin {entry_point.name!r} ({entry_point.value}, from {distribution} {version})"
        try:
            customizer = _load(entry_point)
            verifyObject(IStageCustomizer, customizer)
        except Invalid as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PluginError(f"{where}: does not provide IStageCustomizer: {first}") from None
        except Exception as e:
            raise PluginError(f"{where}: {type(e).__name__}: {e}") from None
        type_name = customizer.type_name
        if not isinstance(type_name, str) or not type_name:
            raise PluginError(f"{where}: its type_name must be a non-empty string, got {type_name!r}")
        if type_name in names:
            raise PluginError(f"{where}: index type {type_name!r} is already defined")
        names.add(type_name)
        found.append(FoundType(customizer, entry_point.name, distribution, version))
    return found

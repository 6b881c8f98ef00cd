"""
Plugins, found through entry points (docs/plugins.md): authenticators
(group C{devpi_tx.authenticators}, L{IAuthenticator}), event listeners
(group C{devpi_tx.events}, L{IEventListener}), and, with the checks of
their own, index types (L{devpi_tx.customizers.plugins}).

An entry point names a provider, or a class or factory called without
arguments that returns one.  One that does not import, does not provide
its interface (L{verifyObject}) or fails to build stops the start with a
L{PluginError} naming it and its distribution.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable

import attrs
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from .config import ConfigError
from .interfaces import IAuthenticator, IEventListener

AUTHENTICATORS = "devpi_tx.authenticators"
EVENTS = "devpi_tx.events"

__all__ = [
    "AUTHENTICATORS",
    "EVENTS",
    "FoundPlugin",
    "PluginError",
    "find_authenticators",
    "find_event_listeners",
    "find_plugins",
]


class PluginError(ConfigError):
    """
    A plugin could not be loaded; the message names it.
    """


@attrs.frozen
class FoundPlugin:
    """
    A plugin of an installed distribution.
    """

    provider: object
    entry_point: str
    distribution: str
    version: str
    #: What the entry point names (C{module:attribute}).
    target: str = ""


def _origin(entry_point) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "an unknown distribution", "?"
    return dist.metadata["Name"] or dist.name, dist.version or "?"


def _load(entry_point, interface: InterfaceClass):
    loaded = entry_point.load()
    if interface.providedBy(loaded):
        return loaded
    if not callable(loaded):
        raise TypeError(f"{entry_point.value} is neither an {interface.__name__} nor a factory of one")
    return loaded()


def find_plugins(
    group: str,
    interface: InterfaceClass,
    kind: str,
    entry_points: Callable[..., Iterable] = importlib.metadata.entry_points,
) -> list[FoundPlugin]:
    """
    Load the providers of C{interface} named by the entry points of
    C{group}, in the order of their names.

    @param kind: what to call one in an error (C{"authenticator"}).
    @raise PluginError: one is broken.
    """
    found = []
    for entry_point in sorted(entry_points(group=group), key=lambda ep: (ep.name, ep.value)):
        distribution, version = _origin(entry_point)
        where = f"{kind} plugin {entry_point.name!r} ({entry_point.value}, from {distribution} {version})"
        try:
            provider = _load(entry_point, interface)
            verifyObject(interface, provider)
        except Invalid as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PluginError(f"{where}: does not provide {interface.__name__}: {first}") from None
        except Exception as e:
            raise PluginError(f"{where}: {type(e).__name__}: {e}") from None
        found.append(FoundPlugin(provider, entry_point.name, distribution, version, entry_point.value))
    return found


def find_authenticators(entry_points=importlib.metadata.entry_points) -> list[FoundPlugin]:
    return find_plugins(AUTHENTICATORS, IAuthenticator, "authenticator", entry_points)


def find_event_listeners(entry_points=importlib.metadata.entry_points) -> list[FoundPlugin]:
    return find_plugins(EVENTS, IEventListener, "event listener", entry_points)

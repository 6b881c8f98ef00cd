"""
Index types.  Each is an L{devpi_tx.interfaces.IStageCustomizer}; the
L{CustomizerRegistry} maps C{type} values to them.
"""

from __future__ import annotations

from zope.interface.verify import verifyObject

from ..interfaces import IStageCustomizer
from ..logs import logger
from ..model.errors import InvalidInput
from .base import BaseStageCustomizer
from .constrained import ConstrainedCustomizer
from .mirror import MirrorCustomizer
from .stage import StageCustomizer
from .timed import CutoffCustomizer, MinAgeCustomizer

log = logger("devpi_tx.customizers")
_KEEP_ALL = BaseStageCustomizer()


def run_hook(customizer: IStageCustomizer, hook: str, *args) -> None:
    """
    Call one of a customizer's C{on_*} hooks after a commit: a failure is
    logged, never the request's (what it followed is committed).
    """
    try:
        getattr(customizer, hook)(*args)
    except Exception:
        log.failure("index type {type!r}: {hook} failed", type=customizer.type_name, hook=hook)


class CustomizerRegistry:
    """
    The index types a server knows.
    """

    def __init__(self, customizers=()) -> None:
        self._by_type: dict[str, IStageCustomizer] = {}
        for customizer in customizers:
            self.register(customizer)

    def register(self, customizer: IStageCustomizer, replace: bool = False) -> None:
        """
        @param replace: put C{customizer} in place of the type of its name
            (a test's, with its own clock).
        @raise ValueError: the type's name is taken (a plugin may not
            replace a built-in type, nor another plugin's).
        """
        verifyObject(IStageCustomizer, customizer)
        if customizer.type_name in self._by_type and not replace:
            raise ValueError(f"index type {customizer.type_name!r} is registered already")
        self._by_type[customizer.type_name] = customizer

    def get(self, type_name: str) -> IStageCustomizer:
        try:
            return self._by_type[type_name]
        except (KeyError, TypeError):
            raise InvalidInput(f"unknown index type {type_name!r}") from None

    def for_config(self, config: dict) -> IStageCustomizer:
        """
        The customizer of an index, by its stored configuration.
        """
        return self.get(config.get("type", "stage"))

    def shown_by(self, config: dict) -> IStageCustomizer:
        """
        The customizer whose filters apply to an index: that of its type,
        or, for a type no longer installed, one that keeps everything.
        """
        return self._by_type.get(config.get("type", "stage"), _KEEP_ALL)

    def is_mirror(self, config: dict) -> bool:
        """
        Whether an index (by its configuration) is served by the mirror
        machinery; an index of a type no longer installed is not.
        """
        customizer = self._by_type.get(config.get("type", "stage"))
        return customizer is not None and customizer.is_mirror

    def types(self) -> list[str]:
        return sorted(self._by_type)


#: The index types devpi-tx ships.
BUILTIN_CLASSES = (
    StageCustomizer,
    MirrorCustomizer,
    ConstrainedCustomizer,
    MinAgeCustomizer,
    CutoffCustomizer,
)
#: Their names, which no plugin may take.
BUILTIN_TYPES = frozenset(cls.type_name for cls in BUILTIN_CLASSES)


def default_registry(default_mirror_url: str | None = None, plugins=()) -> CustomizerRegistry:
    """
    The built-in types, and those of C{plugins} (L{plugins.FoundType}s).
    """
    mirror = MirrorCustomizer(default_mirror_url=default_mirror_url)
    registry = CustomizerRegistry(
        [cls() for cls in BUILTIN_CLASSES if cls is not MirrorCustomizer] + [mirror]
    )
    for found in plugins:
        registry.register(found.customizer)
    return registry


__all__ = [
    "BaseStageCustomizer",
    "ConstrainedCustomizer",
    "CustomizerRegistry",
    "CutoffCustomizer",
    "MinAgeCustomizer",
    "MirrorCustomizer",
    "StageCustomizer",
    "default_registry",
    "run_hook",
]


#: The built-in types, for callers not handed a server's registry.
BUILTIN = default_registry()

"""
Index types.  Each is an L{devpi_tx.interfaces.IStageCustomizer}; the
L{CustomizerRegistry} maps C{type} values to them.
"""

from __future__ import annotations

from zope.interface.verify import verifyObject

from ..interfaces import IStageCustomizer
from ..model.errors import InvalidInput
from .mirror import MirrorCustomizer
from .stage import StageCustomizer


class CustomizerRegistry:
    """
    The index types a server knows.
    """

    def __init__(self, customizers=()) -> None:
        self._by_type: dict[str, IStageCustomizer] = {}
        for customizer in customizers:
            self.register(customizer)

    def register(self, customizer: IStageCustomizer) -> None:
        verifyObject(IStageCustomizer, customizer)
        self._by_type[customizer.type_name] = customizer

    def get(self, type_name: str) -> IStageCustomizer:
        try:
            return self._by_type[type_name]
        except (KeyError, TypeError):
            raise InvalidInput(f"unknown index type {type_name!r}") from None

    def types(self) -> list[str]:
        return sorted(self._by_type)


def default_registry(default_mirror_url: str | None = None) -> CustomizerRegistry:
    return CustomizerRegistry([StageCustomizer(), MirrorCustomizer(default_mirror_url=default_mirror_url)])


__all__ = ["CustomizerRegistry", "MirrorCustomizer", "StageCustomizer", "default_registry"]

"""
What the index types share: a table of keys and their parsers.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model import values
from ..model.errors import InvalidInput

Parser = Callable[[object], object]

COMMON_PARSERS: dict[str, Parser] = {
    "volatile": values.parse_bool,
    "title": values.parse_text("title"),
    "description": values.parse_text("description"),
    "custom_data": values.parse_any,
}


class TableCustomizer:
    """
    A customizer defined by a mapping of keys to parsers.
    """

    type_name: str = ""
    parsers: dict[str, Parser] = {}
    #: Keys whose values are lists, for C{+=} and C{-=}.
    list_keys: frozenset[str] = frozenset()
    _ignored: frozenset[str] = frozenset()

    def possible_keys(self) -> frozenset[str]:
        return frozenset(self.parsers)

    def ignored_keys(self) -> frozenset[str]:
        return self._ignored

    def normalize(self, key: str, value: object) -> object:
        try:
            parser = self.parsers[key]
        except KeyError:
            raise InvalidInput(f"indexconfig got unexpected keyword arguments: {key}={value}") from None
        return parser(value)

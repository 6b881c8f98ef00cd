"""
What the index types share: L{BaseStageCustomizer}, every method of
L{devpi_tx.interfaces.IStageCustomizer} with today's behaviour of a private
index, and L{TableCustomizer}, a type defined by a table of keys and their
parsers.
"""

from __future__ import annotations

from collections.abc import Callable

from zope.interface import implementer

from ..interfaces import IStageCustomizer
from ..model import values
from ..model.acl import ANONYMOUS
from ..model.errors import InvalidInput

Parser = Callable[[object], object]

COMMON_PARSERS: dict[str, Parser] = {
    "volatile": values.parse_bool,
    "title": values.parse_text("title"),
    "description": values.parse_text("description"),
    "custom_data": values.parse_any,
}


@implementer(IStageCustomizer)
class BaseStageCustomizer:
    """
    The defaults of the contract: the common keys, uploads accepted from
    C{acl_upload}, tox results from C{acl_toxresult_upload}, everything
    readable by everyone, nothing filtered, and hooks that do nothing.
    Plugins subclass it and override what their type changes.
    """

    type_name: str = ""
    is_mirror: bool = False
    readonly: bool = False
    #: Set by types that override a filter.
    filters: bool = False
    #: Set by types that hide a version whose files C{links_filter} all
    #: dropped (optional: read with a default of false).  Types whose
    #: answer changes with time also define C{valid_until}, and types may
    #: define C{explain_link} (docs/index-types.md).
    hides_emptied_versions: bool = False
    list_keys: frozenset[str] = frozenset()

    # Configuration.

    def possible_keys(self) -> frozenset[str]:
        return frozenset(COMMON_PARSERS)

    def defaults(self) -> dict:
        return {"type": self.type_name, "volatile": True}

    def normalize(self, key: str, value: object) -> object:
        try:
            parser = COMMON_PARSERS[key]
        except KeyError:
            raise InvalidInput(f"indexconfig got unexpected keyword arguments: {key}={value}") from None
        return parser(value)

    def ignored_keys(self) -> frozenset[str]:
        return frozenset()

    def validate_config(self, oldconfig: dict | None, newconfig: dict) -> None:
        return None

    # Who may do what.

    def principals_for_upload(self, config: dict) -> frozenset[str]:
        if self.readonly:
            return frozenset()
        return frozenset(config.get("acl_upload", []))

    def principals_for_toxresult_upload(self, config: dict) -> frozenset[str]:
        if self.readonly:
            return frozenset()
        return frozenset(config.get("acl_toxresult_upload", [ANONYMOUS]))

    def principals_for_delete(self, config: dict) -> frozenset[str]:
        return frozenset(config.get("acl_upload", []))

    def principals_for_modify(self, config: dict) -> frozenset[str]:
        return frozenset()

    def principals_for_read(self, config: dict) -> frozenset[str]:
        return frozenset([ANONYMOUS])

    # What is shown.

    def projects_filter(self, config: dict, names: list[str]) -> list[bool] | None:
        return None

    def versions_filter(self, config: dict, project: str, versions: list[str]) -> list[bool] | None:
        return None

    def links_filter(self, config: dict, project: str, links: list[dict]) -> list[bool] | None:
        return None

    # Hooks.

    def on_created(self, stagename: str, config: dict) -> None:
        return None

    def on_modified(self, stagename: str, oldconfig: dict, newconfig: dict) -> None:
        return None

    def on_upload(self, stagename: str, project: str, version: str, link: dict) -> None:
        return None


class TableCustomizer(BaseStageCustomizer):
    """
    A customizer defined by a mapping of keys to parsers.
    """

    parsers: dict[str, Parser] = {}
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


#: The keys of a view over bases: which bases, and which of their mirrors'
#: projects it may serve (L{devpi_tx.model.stages}).
VIEW_PARSERS: dict[str, Parser] = {
    **COMMON_PARSERS,
    "bases": values.parse_list,
    "mirror_whitelist": values.parse_whitelist,
    "mirror_whitelist_inheritance": values.parse_whitelist_inheritance,
}


class ViewCustomizer(TableCustomizer):
    """
    A read-only type that shows its bases through its filters (the
    shipped C{constrained}, C{minage} and C{cutoff}): the keys of
    L{VIEW_PARSERS} and its own C{own_parsers}, C{own_list_keys} and
    C{own_defaults()}.
    """

    readonly = True
    filters = True
    own_parsers: dict[str, Parser] = {}
    own_list_keys: frozenset[str] = frozenset()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.parsers = {**VIEW_PARSERS, **cls.own_parsers}
        cls.list_keys = frozenset(["bases", "mirror_whitelist"]) | cls.own_list_keys

    def own_defaults(self) -> dict:
        return {}

    def defaults(self) -> dict:
        return {
            "type": self.type_name,
            "bases": [],
            "volatile": True,
            "mirror_whitelist": [],
            "mirror_whitelist_inheritance": "intersection",
            **self.own_defaults(),
        }

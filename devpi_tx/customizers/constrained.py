"""
The C{constrained} index type: its bases seen through a list of
constraints in requirements syntax (C{name>=1,<2}); C{*} hides every
project the list does not name.  Only the versions (and their files) the
constraints allow are shown.  A view: it takes no uploads.
"""

from __future__ import annotations

from functools import lru_cache

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..model.errors import InvalidInput
from ..model.typefilters import link_version
from .base import ViewCustomizer

DENY_OTHERS = "*"


def parse_constraints(value: object) -> list[str]:
    """
    A list of constraints, or one string of them, one a line (a comma
    belongs to a specifier: C{name>=1,<2}).  Each is kept as given, less
    surrounding whitespace; a bad one is refused naming it.
    """
    if isinstance(value, str):
        items: list = value.splitlines()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise InvalidInput(f"constraints: expected a list or lines of text, got {value!r}")
    result = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(f"constraints: expected a string, got {item!r}")
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        if item != DENY_OTHERS:
            try:
                requirement = Requirement(item)
            except InvalidRequirement as e:
                raise InvalidInput(f"constraints: {item!r} is not a requirement ({e})") from None
            if requirement.extras or requirement.marker or requirement.url:
                raise InvalidInput(f"constraints: {item!r}: only a name and versions are allowed")
        if item not in result:
            result.append(item)
    return result


@lru_cache(maxsize=256)
def _parsed(constraints: tuple[str, ...]) -> tuple[dict[str, SpecifierSet], bool]:
    specs: dict[str, SpecifierSet] = {}
    for item in constraints:
        if item == DENY_OTHERS:
            continue
        requirement = Requirement(item)
        name = canonicalize_name(requirement.name)
        specs[name] = specs.get(name, SpecifierSet()) & requirement.specifier
    return specs, DENY_OTHERS in constraints


def _allows(spec: SpecifierSet, version: str | None) -> bool:
    if not spec:
        return True
    if version is None:
        return False
    try:
        return spec.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


class ConstrainedCustomizer(ViewCustomizer):
    type_name = "constrained"
    own_parsers = {"constraints": parse_constraints}
    own_list_keys = frozenset(["constraints"])

    def own_defaults(self) -> dict:
        return {"constraints": []}

    def _rules(self, config: dict) -> tuple[dict[str, SpecifierSet], bool]:
        return _parsed(tuple(config.get("constraints", ())))

    def projects_filter(self, config: dict, names: list[str]) -> list[bool] | None:
        specs, deny_others = self._rules(config)
        if not deny_others:
            return None
        return [canonicalize_name(name) in specs for name in names]

    def versions_filter(self, config: dict, project: str, versions: list[str]) -> list[bool] | None:
        specs, deny_others = self._rules(config)
        spec = specs.get(canonicalize_name(project))
        if spec is None:
            return [False] * len(versions) if deny_others else None
        return [_allows(spec, version) for version in versions]

    def links_filter(self, config: dict, project: str, links: list[dict]) -> list[bool] | None:
        specs, deny_others = self._rules(config)
        spec = specs.get(canonicalize_name(project))
        if spec is None:
            return [False] * len(links) if deny_others else None
        return [_allows(spec, link_version(link)) for link in links]

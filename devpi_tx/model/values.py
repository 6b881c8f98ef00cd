"""
Parsers for index configuration values, with devpi-server's rules and
messages.
"""

from __future__ import annotations

from packaging.utils import canonicalize_name

from .acl import normalize_acl_entry
from .errors import InvalidInput

_TRUE = ("true", "yes")
_FALSE = ("false", "no")


def parse_bool(value: object) -> bool:
    """
    JSON booleans, or the strings true/yes/false/no in any case.  Nothing
    else: C{1} and C{0} are refused, as devpi refuses them.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise InvalidInput(f"Unknown boolean value {value!r}.")


def parse_list(value: object) -> list[str]:
    """
    A JSON list of strings, or one string split on commas; whitespace is
    stripped and empty items are dropped.
    """
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise InvalidInput(f"expected a list or a comma separated string, got {value!r}")
    result = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(f"expected a string in list, got {item!r}")
        item = item.strip()
        if item and item not in result:
            result.append(item)
    return result


def parse_acl(value: object) -> list[str]:
    return [normalize_acl_entry(item) for item in parse_list(value)]


def parse_whitelist(value: object) -> list[str]:
    return [item if item == "*" else canonicalize_name(item) for item in parse_list(value)]


def parse_whitelist_inheritance(value: object) -> str:
    if isinstance(value, str) and value.strip().lower() in ("intersection", "union", "explicit"):
        return value.strip().lower()
    raise InvalidInput(
        f"Unknown value {value!r} for mirror_whitelist_inheritance, "
        "must be 'intersection', 'union' or 'explicit'."
    )


def parse_url(key: str):
    def parse(value: object) -> str:
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise InvalidInput(f"'{key}' option must be a URL.")
        return value

    return parse


def parse_int(key: str):
    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise InvalidInput(f"'{key}' option must be an integer")
        try:
            return int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidInput(f"'{key}' option must be an integer") from None

    return parse


def parse_text(key: str):
    def parse(value: object) -> str:
        if not isinstance(value, str):
            raise InvalidInput(f"'{key}' option must be a string")
        return value

    return parse


def parse_any(value: object) -> object:
    return value


def json_type(value: object) -> str:
    """
    The kind of a JSON value, as messages name it: C{"a list"},
    C{"an object"}, C{"a number"}...
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__

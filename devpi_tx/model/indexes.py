"""
Index configurations: creation, the two PATCH forms, deletion, and the
rules on C{bases} (they must exist and must not form a loop).
"""

from __future__ import annotations

from .errors import Conflict, Forbidden, InvalidInput, NotFound
from .names import check_indexname
from .redact import public_config, redact_url  # noqa: F401 (part of this module's API)
from .users import get_user, now_stamp, require_user, user_key

#: Keys every index has after creation; C{key-=} refuses to drop them.
_PROTECTED = frozenset(
    [
        "type",
        "volatile",
        "bases",
        "acl_upload",
        "acl_toxresult_upload",
        "mirror_whitelist",
        "mirror_whitelist_inheritance",
        "mirror_url",
    ]
)
#: Keys a client may echo back from a GET; never stored.
_ECHOED = frozenset(["projects"])


def split_stagename(stagename: str) -> tuple[str, str]:
    user, sep, index = stagename.partition("/")
    if not sep or not user or not index or "/" in index:
        raise InvalidInput(f"{stagename!r} is not a user/index name")
    return user, index


def get_index(reader, user: str, index: str) -> dict | None:
    record = get_user(reader, user)
    if record is None:
        return None
    return record.get("indexes", {}).get(index)


def require_index(reader, user: str, index: str) -> dict:
    config = get_index(reader, user, index)
    if config is None:
        raise NotFound(f"index '{user}/{index}' does not exist")
    return config


def _normalize_all(customizer, data: dict) -> dict:
    parsed = {}
    ignored = customizer.ignored_keys()
    for key, value in data.items():
        if key == "type" or key in _ECHOED or key in ignored:
            continue
        parsed[key] = customizer.normalize(key, value)
    return parsed


def check_bases(reader, stagename: str, bases: list[str]) -> None:
    """
    Every base must be an existing index, and following bases from any of
    them must never come back to C{stagename}.
    """
    for base in bases:
        if base == stagename:
            raise InvalidInput(f"index {stagename!r} cannot be its own base")
        try:
            user, index = split_stagename(base)
        except InvalidInput:
            raise InvalidInput(f"base index {base!r} does not exist") from None
        if get_index(reader, user, index) is None:
            raise InvalidInput(f"base index {base!r} does not exist")
    # Depth-first search for a path back to stagename.
    stack = [(base, (stagename, base)) for base in bases]
    seen = set()
    while stack:
        current, path = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        config = get_index(reader, *split_stagename(current)) or {}
        for base in config.get("bases", []):
            if base == stagename:
                chain = " -> ".join(path + (base,))
                raise InvalidInput(f"bases would form a loop: {chain}")
            stack.append((base, path + (base,)))


def _unwrap(data: object) -> object:
    if isinstance(data, dict) and data.get("type") == "indexconfig" and "result" in data:
        return data["result"]
    return data


def create_index(tx, registry, user: str, index: str, data: object) -> dict:
    check_indexname(index)
    data = _unwrap(data)
    if not isinstance(data, dict):
        raise InvalidInput("Bad request: expected a JSON object")
    record = require_user(tx, user)
    stagename = f"{user}/{index}"
    if index in record.get("indexes", {}):
        raise Conflict(f"index {stagename!r} exists")
    customizer = registry.get(data.get("type", "stage"))
    config = customizer.defaults()
    if "acl_upload" in config and not config["acl_upload"]:
        config["acl_upload"] = [user]
    config.update(_normalize_all(customizer, data))
    config["type"] = customizer.type_name
    if "bases" in config:
        check_bases(tx, stagename, config["bases"])
    customizer.validate_config(None, config)
    record.setdefault("indexes", {})[index] = config
    record["modified"] = now_stamp()
    tx.set(user_key(user), record)
    return config


def _parse_operation(item: object) -> tuple[str, str, str]:
    """
    Split C{key=value}, C{key+=value}, C{key-=value} or C{key-=} into
    (key, operator, value).
    """
    if not isinstance(item, str) or "=" not in item:
        raise InvalidInput(f"Bad request: expected key=value, got {item!r}")
    key, _, value = item.partition("=")
    op = "="
    if key.endswith(("+", "-")):
        op = key[-1] + "="
        key = key[:-1]
    key = key.strip()
    if not key:
        raise InvalidInput(f"Bad request: no key in {item!r}")
    return key, op, value


def _apply_operations(customizer, config: dict, operations: list) -> dict:
    new = dict(config)
    list_keys = customizer.list_keys
    for item in operations:
        key, op, raw = _parse_operation(item)
        if key == "type":
            if raw != config["type"] or op != "=":
                raise InvalidInput("the 'type' of an index can't be changed")
            continue
        if op == "=":
            new[key] = customizer.normalize(key, raw)
            continue
        if op == "-=" and raw == "":
            if key not in customizer.possible_keys():
                customizer.normalize(key, raw)  # raises, naming the key
            if key in _PROTECTED:
                raise InvalidInput("Default values can't be removed.")
            new.pop(key, None)
            continue
        if key not in list_keys:
            customizer.normalize(key, raw)  # unknown keys raise here
            raise InvalidInput(f"The {key!r} setting is not a list")
        values = list(new.get(key, []))
        for value in customizer.normalize(key, raw):
            if op == "+=":
                if value not in values:
                    values.append(value)
            elif value in values:
                values.remove(value)
            else:
                raise InvalidInput(f"The {key!r} setting doesn't have value {raw!r}")
        new[key] = values
    return new


def modify_index(tx, registry, user: str, index: str, data: object, *, error_on_noop: bool = False) -> dict:
    """
    Apply a PATCH: a JSON object of keys to set, or devpi-client's list of
    C{key=value}, C{key+=value}, C{key-=value} and C{key-=} operations.
    """
    record = require_user(tx, user)
    stagename = f"{user}/{index}"
    config = record.get("indexes", {}).get(index)
    if config is None:
        raise NotFound(f"index {stagename!r} does not exist")
    customizer = registry.get(config["type"])
    data = _unwrap(data)
    if isinstance(data, list):
        new = _apply_operations(customizer, config, data)
    elif isinstance(data, dict):
        if "type" in data and data["type"] != config["type"]:
            raise InvalidInput("the 'type' of an index can't be changed")
        new = dict(config)
        new.update(_normalize_all(customizer, data))
    else:
        raise InvalidInput("Bad request: expected a JSON object or list")
    if new.get("bases") != config.get("bases") and "bases" in new:
        check_bases(tx, stagename, new["bases"])
    if new == config:
        if error_on_noop:
            raise InvalidInput("The requested modifications resulted in no changes")
        return config
    customizer.validate_config(config, new)
    record["indexes"][index] = new
    record["modified"] = now_stamp()
    tx.set(user_key(user), record)
    return new


def delete_index(tx, user: str, index: str) -> None:
    record = require_user(tx, user)
    config = record.get("indexes", {}).get(index)
    if config is None:
        raise NotFound(f"index '{user}/{index}' does not exist")
    if not config.get("volatile", True):
        raise Forbidden(f"index {user}/{index} non-volatile, cannot delete")
    del record["indexes"][index]
    record["modified"] = now_stamp()
    tx.set(user_key(user), record)

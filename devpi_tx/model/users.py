"""
User records.

A user is stored under C{user/<name>} with its visible fields, its password
hash and the configuration of each of its indexes (as devpi-server keeps
them), so that one read answers both C{GET /<user>} and C{GET /}.
"""

from __future__ import annotations

import time

from .errors import Conflict, Forbidden, InvalidInput, NotFound
from .names import check_username
from .redact import public_config
from .values import json_type

#: Fields a client may set.
WRITABLE = ("email", "title", "description", "custom_data")
#: The writable fields that must be strings (or null, or "", to remove
#: them); C{custom_data} may be any JSON value, as devpi stores it.
STRING_FIELDS = ("email", "title", "description")
#: Fields the server sets; ignored on input.
SERVER_SET = ("created", "modified", "indexes", "username")
#: Never sent over HTTP, but replicated and exported.
HIDDEN = ("pwhash", "pwsalt")


def now_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def user_key(name: str) -> str:
    return "user/" + name


def get_user(reader, name: str) -> dict | None:
    return reader.get(user_key(name))


def require_user(reader, name: str) -> dict:
    record = get_user(reader, name)
    if record is None:
        raise NotFound(f"no user {name!r}")
    return record


def public_user(record: dict) -> dict:
    """
    The record as the API shows it: no password hash.
    """
    shown = {key: value for key, value in record.items() if key not in HIDDEN}
    shown["indexes"] = {name: public_config(c) for name, c in shown.get("indexes", {}).items()}
    return shown


def list_users(reader) -> dict[str, dict]:
    users = {}
    for key in reader.keys("user/"):
        record = reader.get(key)
        users[record["username"]] = public_user(record)
    return users


def _check_keys(data: dict) -> None:
    """
    Refuse keys that are neither fields a client may set nor ones the
    server sets (those are ignored: devpi-client sends back the record it
    got, C{created} and C{modified} included).
    """
    unknown = sorted(set(data) - set(WRITABLE) - set(SERVER_SET) - {"password", "pwhash"})
    if unknown:
        shown = [key if key.isprintable() and len(key) <= 40 else repr(key[:40]) for key in unknown[:10]]
        more = f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        raise InvalidInput(f"Unknown keys in user config: {', '.join(shown)}{more}")


def _check_types(data: dict) -> str | None:
    """
    Check the types of the fields a client may set.

    @return: the new password, if one was given.
    """
    for key in ("password", *STRING_FIELDS):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{key} must be a string, got {json_type(value)}")
    pwhash = data.get("pwhash")
    if pwhash is not None and not (isinstance(pwhash, str) and pwhash.startswith("$")):
        raise InvalidInput("pwhash must be a password hash string")
    return data.get("password")


def validate_create(reader, name: str, data: object) -> dict:
    """
    Check a user creation request and return its writable fields (plus
    C{pwhash} if one was given ready-made).  The password itself is left
    in C{data} for the caller to hash.
    """
    check_username(name)
    if not isinstance(data, dict):
        raise InvalidInput("Bad request: expected a JSON object")
    _check_keys(data)
    if get_user(reader, name) is not None:
        raise Conflict("user already exists")
    password = _check_types(data)
    if password is None and not data.get("pwhash"):
        raise InvalidInput("password needs to be set")
    fields = {key: data[key] for key in WRITABLE if data.get(key) not in (None, "")}
    if password is None:
        fields["pwhash"] = data["pwhash"]
    return fields


def create_user(tx, name: str, fields: dict, pwhash: str | None) -> dict:
    """
    Store a new user; C{fields} comes from L{validate_create}.
    """
    if get_user(tx, name) is not None:
        raise Conflict("user already exists")
    stamp = now_stamp()
    record = {"username": name, "created": stamp, "modified": stamp, "indexes": {}}
    record.update(fields)
    if pwhash is not None:
        record["pwhash"] = pwhash
    tx.set(user_key(name), record)
    return record


def plan_modify(record: dict, data: object) -> tuple[dict, str | None, bool]:
    """
    Work out what a PATCH changes.  Unknown keys are refused, as on
    creation (devpi-server drops them silently).

    @return: the field changes (L{None} values remove a field), the new
        password if one was given, and whether nothing but the password
        changes (which needs only the C{user_modify_password} right).
    """
    if not isinstance(data, dict):
        raise InvalidInput("Bad request: expected a JSON object")
    _check_keys(data)
    password = _check_types(data)
    changes: dict = {}
    for key in WRITABLE + ("pwhash",):
        if key not in data:
            continue
        value = data[key]
        if value in (None, ""):
            if key in record:
                changes[key] = None
        elif record.get(key) != value:
            changes[key] = value
    password_only = password is not None and not changes
    return changes, password, password_only


def modify_user(tx, name: str, changes: dict, pwhash: str | None) -> dict:
    record = require_user(tx, name)
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    if pwhash is not None:
        record["pwhash"] = pwhash
        record.pop("pwsalt", None)
    if changes or pwhash is not None:
        record["modified"] = now_stamp()
        tx.set(user_key(name), record)
    return record


def delete_user(tx, name: str) -> list[str]:
    """
    Remove a user with all its indexes; refuse if one is non-volatile.

    @return: the names (C{user/index}) of the deleted indexes, so that the
        caller can drop their data.
    """
    record = require_user(tx, name)
    for index, config in sorted(record.get("indexes", {}).items()):
        if not config.get("volatile", True):
            raise Forbidden(f"user {name!r} has non-volatile index: {index}")
    tx.delete(user_key(name))
    return [f"{name}/{index}" for index in sorted(record.get("indexes", {}))]

"""
Rules for user and index names, one for both: devpi-server's (no ASCII
control characters, space or ASCII symbol but C{-.@_}: so never a name
starting with C{+}, which routes use), and beyond it never C{.} or C{..}.
"""

from __future__ import annotations

import re

from .errors import InvalidInput

# ASCII control characters, space and every ASCII symbol except - . @ _
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f!\"#$%&'()*+,/:;<=>?\[\\\]^`{|}~]")


def check_name(kind: str, name: str) -> str:
    """
    Return C{name} if it is a valid user or index name, else raise
    L{InvalidInput} naming it.

    @param kind: C{"username"} or C{"indexname"}, used in the message.
    """
    if not isinstance(name, str) or not name or _FORBIDDEN.search(name):
        raise InvalidInput(
            f"{kind} {name!r} contains characters that aren't allowed. "
            "Any ascii symbol besides -.@_ is blocked."
        )
    if name in (".", ".."):
        # Path segments, never names (a user "..", an index "." would be
        # addressed by URLs that clients normalise away).
        raise InvalidInput(f"{kind} {name!r} is not allowed: '.' and '..' are path segments, not names")
    return name


def check_username(name: str) -> str:
    return check_name("username", name)


def check_indexname(name: str) -> str:
    return check_name("indexname", name)

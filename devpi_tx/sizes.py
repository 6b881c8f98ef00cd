"""
Sizes given as options: bytes with an optional suffix (C{10G}), or a
share of a disk (C{5%}).
"""

from __future__ import annotations

import re

#: Suffixes are binary multiples, as C{du -h} and C{df -h} print them.
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_PERCENT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")


def parse_size(value: object) -> int:
    """
    A number of bytes: an integer, or a string of a number and an optional
    suffix K, M, G or T (powers of 1024; C{KB}, C{KiB} read the same).

    @raise ValueError: anything else, with a message saying what is expected.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size in bytes (10G, 512M, 1048576), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size of at least 0 bytes, got {value}")
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a size in bytes (10G, 512M, 1048576), got {value!r}")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def parse_free_space(value: object) -> tuple[int, float]:
    """
    A threshold of free disk space: C{(bytes, 0.0)} for a size
    (L{parse_size}), C{(0, fraction)} for a percentage (C{5%}).

    @raise ValueError: anything else.
    """
    match = _PERCENT.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        percent = float(match.group(1))
        if percent > 100:
            raise ValueError(f"expected a percentage of at most 100, got {value!r}")
        return 0, percent / 100
    try:
        return parse_size(value), 0.0
    except ValueError:
        raise ValueError(f"expected a size (1G, 512M) or a percentage (5%), got {value!r}") from None


def format_size(size: float) -> str:
    """
    C{size} bytes for people: C{1.5 GiB}, C{512 MiB}, C{300 B}.
    """
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size / unit:.1f}".removesuffix(".0") + f" {name}"
    return f"{int(size)} B"

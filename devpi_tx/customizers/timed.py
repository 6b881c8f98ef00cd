"""
Index types that see their bases by the files' upload times:

  - C{minage}: files of mirror bases uploaded less than C{min_age} ago are
    hidden (against malicious fresh uploads); private files are exempt.
  - C{cutoff}: files uploaded after C{cutoff} (a UTC time) are hidden, so
    that the index shows its bases as they were then.

A file whose upload time is unknown (an upstream without PEP 700's
C{upload-time}) is hidden by both: neither can tell it is old enough.  A
version left without files is hidden with them
(C{hides_emptied_versions}, L{devpi_tx.model.typefilters}).  Both
are views: they take no uploads.

C{minage}'s answer changes as time passes, without any commit: its
L{MinAgeCustomizer.valid_until} tells the page cache when the next hidden
file becomes old enough.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache

from ..model.errors import InvalidInput
from .base import ViewCustomizer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*$")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 86400}


def parse_min_age(value: object) -> str:
    """
    A duration: a number with a unit, C{d} (days, the default), C{h},
    C{m} or C{s}: C{7}, C{7d}, C{36h}.  Kept as given (less spaces).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput(f"min_age: expected a duration such as 7d or 36h, got {value!r}")
    text = str(value)
    if _DURATION.match(text) is None:
        raise InvalidInput(f"min_age: expected a duration such as 7d or 36h, got {value!r}")
    return text.replace(" ", "")


@lru_cache(maxsize=64)
def seconds(duration: str) -> float:
    number, unit = _DURATION.match(duration).groups()
    return float(number) * _UNITS[unit]


def parse_time(text: str) -> float | None:
    """
    An ISO 8601 time (PEP 700's C{upload-time}; a time without a zone is
    UTC) as seconds since the epoch; L{None} if it is not one.
    """
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def parse_cutoff(value: object) -> str:
    """
    A UTC time, C{2024-05-01} or C{2024-05-01T12:00:00Z}; kept in the
    latter form.
    """
    when = parse_time(value) if isinstance(value, str) else None
    if when is None:
        raise InvalidInput(f"cutoff: expected a UTC time such as 2024-05-01T12:00:00Z, got {value!r}")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


_cutoff_seconds = lru_cache(maxsize=64)(parse_time)


def is_private(link: dict) -> bool:
    """
    Whether a link is a private index's file (mirrored files have no log).
    """
    return "log" in link


def upload_time(link: dict) -> float | None:
    """
    When a file was uploaded: a private file's C{last_modified}, else
    its C{upload_time} (upstream's PEP 700 C{upload-time}); L{None} when
    unknown.
    """
    when = link.get("last_modified") if is_private(link) else None
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return float(when)
    text = link.get("upload_time")
    return parse_time(text) if isinstance(text, str) else None


class _TimedView(ViewCustomizer):
    #: A version whose files are all hidden is hidden too.
    hides_emptied_versions = True


class MinAgeCustomizer(_TimedView):
    """
    Files of mirror bases younger than C{min_age} hidden.

    @param clock: the time now (seconds since the epoch), for tests.
    """

    type_name = "minage"
    own_parsers = {"min_age": parse_min_age}

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def own_defaults(self) -> dict:
        return {"min_age": "7d"}

    def _newest_allowed(self, config: dict) -> float | None:
        age = seconds(config.get("min_age", "7d"))
        return None if age <= 0 else self.clock() - age

    def links_filter(self, config: dict, project: str, links: list[dict]) -> list[bool] | None:
        newest = self._newest_allowed(config)
        if newest is None:
            return None
        flags = []
        for link in links:
            when = None if is_private(link) else upload_time(link)
            flags.append(is_private(link) or (when is not None and when <= newest))
        return flags

    def valid_until(self, config: dict, project: str, links: list[dict]) -> float | None:
        """
        When the first of the C{links} hidden for their age becomes old
        enough (L{None}: none is).
        """
        newest = self._newest_allowed(config)
        if newest is None:
            return None
        age = seconds(config.get("min_age", "7d"))
        times = [upload_time(link) for link in links if not is_private(link)]
        later = [when + age for when in times if when is not None and when > newest]
        return min(later, default=None)

    def explain_link(self, config: dict, link: dict) -> dict:
        """
        For C{+explain}: how old a file is (C{age}, in days; L{None} when
        unknown), and whether it is shown for its age.
        """
        when = upload_time(link)
        newest = self._newest_allowed(config)
        if is_private(link):
            shown = True
        else:
            shown = newest is None or (when is not None and when <= newest)
        age = None if when is None else round((self.clock() - when) / 86400, 2)
        return {"age_days": age, "private": is_private(link), "shown_for_age": shown}


class CutoffCustomizer(_TimedView):
    """
    Files uploaded after C{cutoff} hidden, private or mirrored.
    """

    type_name = "cutoff"
    own_parsers = {"cutoff": parse_cutoff}

    def validate_config(self, oldconfig: dict | None, newconfig: dict) -> None:
        if not newconfig.get("cutoff"):
            raise InvalidInput("cutoff: an index of type cutoff needs a cutoff time (UTC)")

    def links_filter(self, config: dict, project: str, links: list[dict]) -> list[bool] | None:
        cutoff = _cutoff_seconds(config["cutoff"])
        flags = []
        for link in links:
            when = upload_time(link)
            flags.append(when is not None and when <= cutoff)
        return flags

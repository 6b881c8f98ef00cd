"""
The access log: one line per request (method, path, status, bytes, ms).

Requests are logged as structured C{twisted.logger} events in the
C{devpi_tx.request} namespace, but not through the global log publisher:
there every event is formatted by twistd's text observer, whose
timestamp and format handling cost more than serving a cached page.  The
events go to an observer of their own that writes the same text lines
with the timestamp text computed once per second, as C{twisted.web}'s
own access log does; or, given C{json:} before where they go, the same
fields as one JSON object per line.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from twisted.logger import ILogObserver, LogEvent, formatTime
from zope.interface import implementer

from ..logs import iso_time, logger

log = logger("devpi_tx.accesslog")

#: What C{--access-log} accepts besides a file path.
STDOUT = "-"
OFF = "off"
#: The prefix of C{--access-log} for JSON lines (C{json:-}, C{json:FILE}).
JSON = "json:"


@implementer(ILogObserver)
class AccessLogWriter:
    """
    Write request events as lines shaped like twistd's own log lines.
    """

    def __init__(self, out: TextIO) -> None:
        self._out: TextIO | None = out
        self._second = -1
        self._stamp = ""

    def __call__(self, event: LogEvent) -> None:
        when = event.get("log_time") or 0.0
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = self._format_time(second)
        line = self._line(event)
        if self._out is None:
            return
        try:
            self._out.write(line)
            self._out.flush()
        except (OSError, ValueError) as exc:
            # A closed or broken stream (a daemon's stdout, a full disk):
            # say so once rather than fail every request.
            self._out = None
            log.warn("access log disabled: {error}", error=str(exc))

    _format_time = staticmethod(formatTime)

    def _line(self, event: LogEvent) -> str:
        return "{} [devpi_tx.request#{}] {} {} {} {}B {:.1f}ms\n".format(
            self._stamp,
            event["log_level"].name,
            event["method"],
            event["path"],
            event["status"],
            event["bytes"],
            event["ms"],
        )


class JSONAccessLogWriter(AccessLogWriter):
    """
    Write request events as lines of JSON: C{time} (ISO 8601, UTC, to the
    second), C{method}, C{path}, C{status}, C{bytes}, C{ms}, C{client}.
    """

    _format_time = staticmethod(lambda second: iso_time(second).replace(".000Z", "Z"))

    def _line(self, event: LogEvent) -> str:
        record = {
            "time": self._stamp,
            "method": event["method"],
            "path": event["path"],
            "status": event["status"],
            "bytes": event["bytes"],
            "ms": round(event["ms"], 2),
            "client": event.get("client"),
        }
        return json.dumps(record, ensure_ascii=False) + "\n"


def open_access_log(where: str) -> ILogObserver | None:
    """
    The observer for C{--access-log}: C{-} is the process's standard
    output (the real one: twistd redirects C{sys.stdout} into its log
    publisher), C{off} none, anything else a file to append to; with a
    C{json:} prefix (C{json:-}, C{json:/var/log/devpi/access.log}), the
    lines are JSON objects.
    """
    if where == OFF:
        return None
    writer: type[AccessLogWriter] = AccessLogWriter
    if where.startswith(JSON):
        writer, where = JSONAccessLogWriter, where[len(JSON) :]
    if where == STDOUT:
        return writer(sys.__stdout__ or sys.stdout)
    return writer(open(where, "a", encoding="utf-8"))

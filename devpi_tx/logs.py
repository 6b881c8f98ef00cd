"""
Where devpi-tx's loggers write: Twisted's global log publisher, through a
level filter, so that debug events (a line per replicated entry or file,
say) are written only with C{--debug}.

Every module makes its logger with L{logger}; the composition root sets
the level once (L{set_debug}).  Until then nothing is filtered, so a test
that builds the pieces itself sees every event.

Log events as JSON lines (one object per line), for log shippers and the
journal: twistd's C{--logger} takes this module's L{json_observer} in
place of its text log::

    twistd -n --logger devpi_tx.logs.json_observer devpi [options]

Each line has C{time} (ISO 8601, UTC), C{level}, C{namespace} (the
module that logged: C{devpi_tx.mirror}, say), C{message} (the text the
text log shows), C{traceback} when a failure was logged, and the event's
own fields that are plain values (C{url}, C{size}, C{stage}...).  The
lines go to standard output (the journal's, or supervisor's): twistd's
C{--logfile} applies to its text log only.  The access log has a JSON form
of its own (C{--access-log json:-}, L{devpi_tx.web.accesslog}).
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

#: Keys of the legacy (twisted.python.log) events that formatEvent reads.
_LEGACY = frozenset({"message", "format", "isError", "why", "failure"})
_PLAIN = (str, int, float, bool, type(None))


def iso_time(when: float) -> str:
    return (
        datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def event_record(event: LogEvent) -> dict:
    """
    The JSON object of one log event.
    """
    level = event.get("log_level")
    record = {
        "time": iso_time(event.get("log_time") or 0.0),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in _LEGACY or not isinstance(value, _PLAIN):
            continue
        record[key] = value
    return record


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Write each event as one line of JSON to C{out}.
    """

    def __init__(self, out: TextIO) -> None:
        self._out: TextIO | None = out

    def __call__(self, event: LogEvent) -> None:
        if self._out is None:
            return
        line = json.dumps(event_record(event), ensure_ascii=False, default=repr)
        try:
            self._out.write(line + "\n")
            self._out.flush()
        except (OSError, ValueError):
            self._out = None  # a closed or broken stream: nowhere left to say so


def json_observer() -> JSONLinesObserver:
    """
    The factory twistd's C{--logger} calls: JSON lines on standard output
    (the real one, taken before twistd redirects C{sys.stdout} into the log).
    """
    return JSONLinesObserver(sys.stdout)


# -- the level filter --------------------------------------------------------

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)

#: The global publisher (looked up per event, so that observers added
#: later see devpi-tx's events too), behind the level filter.
observer = FilteringLogObserver(lambda event: globalLogPublisher(event), [_levels])


def logger(namespace: str) -> Logger:
    """
    A logger for C{namespace} whose events pass the level filter.
    """
    return Logger(namespace=namespace, observer=observer)


def set_debug(debug: bool) -> None:
    """
    Write debug events (C{--debug}) or only info and above.
    """
    _levels.setLogLevelForNamespace("", LogLevel.debug if debug else LogLevel.info)

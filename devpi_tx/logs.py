"""
Where devpi-tx's loggers write: Twisted's global log publisher, through a
level filter, so that debug events (a line per replicated entry or file,
say) are written only with C{--debug}.

Every module makes its logger with L{logger}; the composition root sets
the level once (L{set_debug}).  Until then nothing is filtered, so a test
that builds the pieces itself sees every event.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

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

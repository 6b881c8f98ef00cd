"""
JSON log lines for twistd's --logger (devpi_tx.logs).
"""

from __future__ import annotations

import io
import json

from twisted.logger import ILogObserver, Logger, LogPublisher
from twisted.python.reflect import namedAny
from zope.interface.verify import verifyObject

from devpi_tx.logs import JSONLinesObserver


def test_events_are_json_lines_with_their_fields():
    out = io.StringIO()
    publisher = LogPublisher(JSONLinesObserver(out))
    log = Logger(namespace="devpi_tx.mirror", observer=publisher)
    log.info("mirrored {url} ({size} bytes)", url="https://example.org/a.whl", size=12, extra=object())
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("download of {url} failed", url="x")
    info, failure = (json.loads(line) for line in out.getvalue().splitlines())
    assert info["level"] == "info" and info["namespace"] == "devpi_tx.mirror"
    assert info["message"] == "mirrored https://example.org/a.whl (12 bytes)"
    assert (info["url"], info["size"]) == ("https://example.org/a.whl", 12)
    assert "extra" not in info and info["time"].endswith("Z")
    assert failure["level"] == "critical" and "ZeroDivisionError" in failure["traceback"]


def test_twistd_logger_option_names_a_factory():
    # What `twistd --logger devpi_tx.logs.json_observer` does with the name.
    observer = namedAny("devpi_tx.logs.json_observer")()
    verifyObject(ILogObserver, observer)


def test_a_broken_stream_is_dropped():
    class Broken(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    observer = JSONLinesObserver(Broken())
    Logger(observer=observer).info("one")
    Logger(observer=observer).info("two")
    assert observer._out is None

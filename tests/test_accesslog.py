import io
import time

from twisted.logger import ILogObserver, LogLevel, formatTime
from zope.interface.verify import verifyObject

from devpi_tx.web.accesslog import AccessLogWriter, open_access_log


def event(when, **fields):
    base = dict(method="GET", path="/root/pypi/+simple/a/", status=200, bytes=539, ms=0.43)
    return dict(base, log_time=when, log_level=LogLevel.info, **fields)


def test_lines_look_like_twistd_lines():
    out = io.StringIO()
    writer = AccessLogWriter(out)
    verifyObject(ILogObserver, writer)
    now = time.time()
    writer(event(now))
    writer(event(now + 0.5, status=304, bytes=0, ms=12.345))
    writer(event(now + 2))
    lines = out.getvalue().splitlines()
    assert (
        lines[0] == f"{formatTime(int(now))} [devpi_tx.request#info] GET /root/pypi/+simple/a/ 200 539B 0.4ms"
    )
    assert lines[1].endswith(" 304 0B 12.3ms")
    # The timestamp text follows the clock, second by second.
    assert lines[2].startswith(formatTime(int(now + 2)) + " ")


def test_open_access_log(tmp_path):
    assert open_access_log("off") is None
    assert isinstance(open_access_log("-"), AccessLogWriter)
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    writer = open_access_log(str(path))
    writer(event(time.time()))
    assert path.read_text().splitlines()[0] == "earlier"
    assert path.read_text().splitlines()[1].endswith(" 200 539B 0.4ms")


def test_broken_stream_disables_the_log_once():
    class Broken(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    writer = AccessLogWriter(Broken())
    writer(event(time.time()))  # no exception reaches the request
    writer(event(time.time()))
    assert writer._out is None


def test_json_lines(tmp_path):
    import json

    path = tmp_path / "access.log"
    writer = open_access_log(f"json:{path}")
    writer(event(1700000000.25, client="10.0.0.1"))
    writer(event(1700000001.5, status=404, ms=1.234))
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first == {
        "time": "2023-11-14T22:13:20Z",
        "method": "GET",
        "path": "/root/pypi/+simple/a/",
        "status": 200,
        "bytes": 539,
        "ms": 0.43,
        "client": "10.0.0.1",
    }
    assert (second["time"], second["status"], second["ms"], second["client"]) == (
        "2023-11-14T22:13:21Z",
        404,
        1.23,
        None,
    )
    assert type(open_access_log("json:-")).__name__ == "JSONAccessLogWriter"

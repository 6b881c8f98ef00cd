"""
Run L{FakeUpstream} on a loopback port in its own process, for end-to-end
tests whose clients (pip, uv, twistd) run in subprocesses too.

    python -m tests.upstream_server PORTFILE PROJECT [PROJECT ...]

A PROJECT given as a plain name gets one installable wheel, version 1.0,
without an upload time.  C{NAME:VERSION[@TIME],...} gives it one wheel per
version instead, each with PEP 700's C{upload-time} TIME when given
(C{mirror-a:1.0@2020-01-01T00:00:00Z,2.0}).  The chosen port is written to
PORTFILE once the server listens.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from tests.distfiles import make_wheel
from tests.fakeupstream import FakeUpstream, Release


def releases(spec: str) -> tuple[str, list[Release]]:
    """
    The project and its releases from one command-line argument.
    """
    project, _, versions = spec.partition(":")
    result = []
    for item in (versions or "1.0").split(","):
        version, _, upload_time = item.partition("@")
        result.append(Release(*make_wheel(project, version), upload_time=upload_time or None))
    return project, result


def main(portfile: str, projects: list[str]) -> None:
    upstream = FakeUpstream()
    for spec in projects:
        project, found = releases(spec)
        upstream.add(project, *found)

    def listening(port) -> None:
        with open(portfile, "w") as f:
            f.write(str(port.getHost().port))

    d = serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(upstream))
    d.addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""
Run L{FakeUpstream} on a loopback port in its own process, for end-to-end
tests whose clients (pip, uv, twistd) run in subprocesses too.

    python -m tests.upstream_server PORTFILE PROJECT [PROJECT ...]

Each project gets one installable wheel, version 1.0.  The chosen port is
written to PORTFILE once the server listens.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from tests.distfiles import make_wheel
from tests.fakeupstream import FakeUpstream, Release


def main(portfile: str, projects: list[str]) -> None:
    upstream = FakeUpstream()
    for project in projects:
        upstream.add(project, Release(*make_wheel(project, "1.0")))

    def listening(port) -> None:
        with open(portfile, "w") as f:
            f.write(str(port.getHost().port))

    d = serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(upstream))
    d.addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

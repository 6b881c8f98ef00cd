#!/usr/bin/env python3
"""
Fifty cold project pages at once, repeated, with a timeline of where each
burst's time goes.

The harness's scenario 3 asks for 50 uncached projects at once, once per
run, on a server whose upstream connections are mostly not open yet.  One
figure per run says little on a shared machine; this script repeats that
burst against one devpi-tx running in this process (so that its reactor's
CPU can be read and its steps timed), with the kept upstream connections
closed before every burst and a new set of project names each time.
With C{--floor} the server is instead a bare C{twisted.web} resource that
fetches the page with the same client (one treq C{HTTPClient} over the same
Agent stack, L{make_http_client}) and sends it as it came: what any Twisted
server pays for the burst with that stack, before devpi-tx's own work.

Printed:

- wall time of each burst, as a client of 50 threads sees it (the client
  runs in a subprocess, so that it does not share this process's GIL);
- CPU of the reactor thread per burst (C{time.thread_time} read in it);
- with C{--timeline}: for the steps of every page, the first, median and
  last moment in the burst (ms after the first request was parsed):
  accept batches (one per readiness of the listening port), parsed,
  upstream connect asked, connected, request sent, first byte of the
  answer, page sent.

It needs a fake upstream index on loopback serving C{proj-NNNN} projects,
for instance the harness's (``../shared/bench/upstream.py generate DIR``, then
``serve --port 18000 --latency-ms 50 DIR``); only loopback upstreams are
accepted.  Hand-run::

    /work/venv/bin/python benchmarks/bench_cold_burst.py \\
        --upstream http://127.0.0.1:18000/simple/ --rounds 12 --timeline
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

#: What pip sends.
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
STEPS = (
    "accept batch",
    "parsed",
    "connect asked",
    "connected",
    "request sent",
    "first byte",
    "page sent",
)


def burst(port: int, names: list[str]) -> None:
    """
    The client: one thread per name, released together; prints one line.
    """
    latencies: list[float] = []
    statuses: list[int] = []
    gate = threading.Barrier(len(names))

    def one(name: str) -> None:
        gate.wait()
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/root/pypi/+simple/{name}/", headers={"Accept": PIP_ACCEPT})
        response = conn.getresponse()
        response.read()
        conn.close()
        latencies.append(time.perf_counter() - started)
        statuses.append(response.status)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ok = statuses.count(200)
    print(f"ok {ok}/{len(names)} wall {wall * 1000:.1f} max {max(latencies) * 1000:.1f}")


def reactor_cpu_ms() -> float:
    """
    CPU time of the calling thread (the reactor's, when called from it).
    """
    return time.thread_time() * 1000


class Timeline:
    """
    Moments of the steps of every page of a burst, taken by wrapping the
    methods where they happen.
    """

    def __init__(self) -> None:
        self.moments: dict[str, list[float]] = {step: [] for step in STEPS}
        self.rows: dict[str, list[tuple[float, float, float]]] = {step: [] for step in STEPS}

    def install(self) -> None:
        from twisted.internet import tcp
        from twisted.web import http

        from devpi_tx.mirror import http as upstream
        from devpi_tx.mirror import quickack

        self._mark(tcp.Port, "doRead", "accept batch")
        self._mark(http.Request, "requestReceived", "parsed")
        self._mark(upstream.DirectEndpoints, "endpointForURI", "connect asked")
        self._mark(quickack._QuickAck, "makeConnection", "connected")
        self._mark(tcp.Client, "writeSomeData", "request sent", once=True)
        self._mark(quickack._QuickAck, "dataReceived", "first byte", once=True)
        self._mark(http.Request, "finish", "page sent")

    def _mark(self, cls, name: str, step: str, once: bool = False) -> None:
        original = getattr(cls, name)
        moments = self.moments[step]
        flag = f"_bench_marked_{name}"

        def marked(obj, *args, **kwargs):
            if not (once and getattr(obj, flag, False)):
                moments.append(time.perf_counter())
                if once:
                    setattr(obj, flag, True)
            return original(obj, *args, **kwargs)

        setattr(cls, name, marked)

    def clear(self) -> None:
        for moments in self.moments.values():
            moments.clear()

    def close_burst(self) -> None:
        if not self.moments["parsed"]:
            return
        origin = min(self.moments["parsed"])
        for step, moments in self.moments.items():
            if moments:
                shifted = sorted((moment - origin) * 1000 for moment in moments)
                self.rows[step].append((shifted[0], shifted[len(shifted) // 2], shifted[-1]))
        self.clear()

    def report(self) -> None:
        print("timeline, ms after the first request was parsed (medians over the bursts):")
        for step in STEPS:
            rows = self.rows[step]
            if rows:
                first, median, last = (statistics.median(row[i] for row in rows) for i in range(3))
                print(f"  {step:14s} first {first:6.1f}  median {median:6.1f}  last {last:6.1f}")


def start_floor(reactor, port: int, upstream: str) -> None:
    """
    A bare Twisted server: C{/.../NAME/} answered with upstream's
    C{NAME/} page as it came, fetched whole with devpi-tx's client.
    """
    from twisted.internet.defer import ensureDeferred
    from twisted.web import resource, server

    from devpi_tx.mirror.http import fetch_whole, make_http_client

    http = make_http_client(reactor)

    class Page(resource.Resource):
        isLeaf = True

        def render_GET(self, request):
            name = request.path.rstrip(b"/").rsplit(b"/", 1)[1].decode("ascii")
            fetching = ensureDeferred(
                fetch_whole(http, "GET", f"{upstream}{name}/", headers={"Accept": PIP_ACCEPT}, timeout=10.0)
            )

            def send(answer) -> None:
                request.setHeader("Content-Type", answer.header("content-type") or "text/html")
                request.write(answer.body)
                request.finish()

            fetching.addCallback(send).addErrback(request.processingFailed)
            return server.NOT_DONE_YET

    reactor.listenTCP(port, server.Site(Page()), interface="127.0.0.1")


def serve_and_drive(args) -> int:
    from twisted.internet import reactor

    from devpi_tx.config import ServerConfig
    from devpi_tx.mirror.http import UpstreamHTTP
    from devpi_tx.service import make_service

    fetchers: list = []
    made = UpstreamHTTP.__init__

    def remembered(self, *a, **kw):
        made(self, *a, **kw)
        fetchers.append(self)

    UpstreamHTTP.__init__ = remembered
    timeline = Timeline() if args.timeline else None
    if timeline is not None:
        timeline.install()
    if args.floor:
        start_floor(reactor, args.port, args.upstream)
    else:
        serverdir = tempfile.mkdtemp(prefix="bench-cold-burst-")
        config = ServerConfig(
            serverdir=serverdir,
            listen=(f"tcp:{args.port}:interface=127.0.0.1",),
            mirror_url=args.upstream,
            access_log=os.path.join(serverdir, "access.log"),
        )
        make_service(config, reactor).startService()
    walls: list[float] = []
    cpus: list[float] = []
    failures: list[str] = []

    def cpu_now() -> float:
        box: list[float] = []
        done = threading.Event()

        def read() -> None:
            box.append(reactor_cpu_ms())
            done.set()

        reactor.callFromThread(read)
        done.wait()
        return box[0]

    def one_burst(first: int) -> str:
        names = [args.name_format.format(first + i) for i in range(args.pages)]
        command = [sys.executable, __file__, "--burst-client", str(args.port), *names]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def drive() -> None:
        try:
            time.sleep(1.0)
            one_burst(args.first + args.pages * (args.rounds + 1))  # warm-up: imports, caches
            for round_ in range(args.rounds):
                if not args.keep_connections:
                    for fetcher in fetchers:
                        reactor.callFromThread(fetcher.close_idle)
                time.sleep(0.4)
                if timeline is not None:
                    timeline.clear()
                before = cpu_now()
                out = one_burst(args.first + args.pages * round_)
                time.sleep(0.3)
                cpus.append(cpu_now() - before)
                match = re.search(r"ok (\d+)/(\d+) wall ([\d.]+)", out)
                if match is None or match.group(1) != match.group(2):
                    failures.append(out.strip())
                walls.append(float(match.group(3)) if match else float("nan"))
                if timeline is not None:
                    timeline.close_burst()
        except Exception as exc:  # report, and stop the reactor in any case
            failures.append(f"{exc.__class__.__name__}: {exc}")
        finally:
            reactor.callFromThread(reactor.stop)

    threading.Thread(target=drive, daemon=True).start()
    reactor.run()
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        return 1
    print(
        f"{'floor: ' if args.floor else ''}{args.rounds} bursts of {args.pages} cold pages"
        f"{' (upstream connections kept)' if args.keep_connections else ''}:"
        f" wall median {statistics.median(walls):.1f} ms [{' '.join(f'{w:.0f}' for w in walls)}],"
        f" reactor CPU per burst median {statistics.median(cpus):.1f} ms"
    )
    if timeline is not None:
        timeline.report()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--burst-client":
        burst(int(argv[1]), argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="simple index URL of a fake upstream on loopback")
    ap.add_argument("--rounds", type=int, default=12, help="measured bursts (default 12)")
    ap.add_argument("--pages", type=int, default=50, help="pages per burst (default 50)")
    ap.add_argument("--first", type=int, default=100, help="number of the first project (default 100)")
    ap.add_argument("--name-format", default="proj-{:04d}", help="project names (default proj-{:04d})")
    ap.add_argument("--port", type=int, default=18070, help="devpi-tx's port (default 18070)")
    ap.add_argument("--timeline", action="store_true", help="time the steps of every page")
    ap.add_argument("--floor", action="store_true", help="a bare Twisted server instead of devpi-tx")
    ap.add_argument(
        "--keep-connections", action="store_true", help="keep upstream connections open between bursts"
    )
    args = ap.parse_args(argv)
    host = urlsplit(args.upstream).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        ap.error(f"--upstream must be on loopback, not {host!r}")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.pop("http_proxy", None)
    os.environ.pop("HTTP_PROXY", None)
    return serve_and_drive(args)


if __name__ == "__main__":
    sys.exit(main())

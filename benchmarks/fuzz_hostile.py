#!/usr/bin/env python3
"""
Hostile requests against a real devpi-tx server (issue 14): how many are
answered 5xx, how many get no answer, how many hostile ones are accepted.

It starts devpi-tx from this checkout on a free loopback port with a fresh
server directory (C{tests/serverproc.py}), its root/pypi mirroring a tiny
upstream in this process that answers 404 for every project (so that a
mirror lookup is a 404, not a 502 for an unreachable upstream), and makes
the world the generators expect (C{tests/hostile.py}): user alice with
indexes C{alice/dev} (base root/pypi, holding C{pkg-a 1.0}) and
C{alice/prod}.  Then it sends C{--count} requests (2,000 by default),
spread over the kinds of C{tests/hostile.py} in proportion to the
in-memory test's counts, plus bodies that keep coming (C{endless_body}),
each on a new connection over a raw socket (lower-case methods, no Host,
100 KB request lines, 1 MB headers), with a timeout per request.  While
it sends, it reads, so an answer that comes before the body is all sent
is seen (as curl does).

For each kind it prints the answers by class and the problems:

  5xx          an answer of 500 or more (501 for an unknown method is fine)
  unanswered   no status line: the connection was closed, reset, or the
               timeout passed
  accepted     2xx for a request that must be refused
  wrong        not the status the request must get (414, 431, 413, 400)

and the first few failing requests of each kind.  Each kind has a
server of its own, so that what one kind breaks (a deleted index, a user
named C{..}) does not change what the next one meets.  Exit status 1 if any
answer was 5xx or any request unanswered; the counts are also written as
JSON with C{--json}.  Seeded: the same seed sends the same requests.

Hand-run only::

    /work/venv/bin/python benchmarks/fuzz_hostile.py [--count 2000] [--seed 14]

Everything binds to 127.0.0.1 (the external push target is the discard
port, where nobody listens); the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import http.server
import json
import re
import select
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hostile import (  # noqa: E402
    GENERATORS,
    PROJECT,
    SOCKET_ONLY,
    VERSION,
    Hostile,
    World,
    file_path,
    generate,
    setup_steps,
    upload_form,
    world_wheel,
)
from tests.serverproc import start_server  # noqa: E402

ROOT_PASSWORD = "fuzz-root-pw"
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")


# -- the upstream of root/pypi ------------------------------------------------------


class _NoProjects(http.server.BaseHTTPRequestHandler):
    """
    An upstream simple index with no projects: the root lists none,
    every project page is 404.
    """

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.path.rstrip("/") == "/simple":
            body = b'{"meta": {"api-version": "1.0"}, "projects": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
        else:
            body = b"not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def start_upstream() -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoProjects)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/simple/"


# -- the world ----------------------------------------------------------------------


def _call(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Accept": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _login(port: int, user: str, password: str) -> dict[str, str]:
    status, body = _call(
        port, "POST", "/+login", json.dumps({"user": user, "password": password}).encode(), {}
    )
    if status != 200:
        raise SystemExit(f"login of {user} failed: {status} {body[:200]!r}")
    token = json.loads(body)["result"]["password"]
    return {"X-Devpi-Auth": base64.b64encode(f"{user}:{token}".encode()).decode()}


def make_world(port: int) -> World:
    root = _login(port, "root", ROOT_PASSWORD)
    alice: dict[str, str] = {}
    for method, path, body in setup_steps():
        status, answer = _call(port, method, path, json.dumps(body).encode(), alice or root)
        if status not in (200, 201):
            raise SystemExit(f"{method} {path} failed: {status} {answer[:200]!r}")
        if path == "/alice":
            alice = _login(port, "alice", "alicepw")
    filename, data = world_wheel()
    content_type, form = upload_form(PROJECT, VERSION, filename, data)
    status, answer = _call(port, "POST", "/alice/dev/", form, {"Content-Type": content_type, **alice})
    if status != 200:
        raise SystemExit(f"upload failed: {status} {answer[:200]!r}")
    return World(host=f"127.0.0.1:{port}", root=root, alice=alice, file_path=file_path(data, filename))


# -- sending --------------------------------------------------------------------------


def _filler(hostile: Hostile, size: int) -> bytes:
    data = b"x" * size
    return b"%x\r\n" % size + data + b"\r\n" if hostile.chunked else data


def exchange(port: int, hostile: Hostile, host: str, timeout: float) -> tuple[int | None, str, bytes]:
    """
    Send one request on a new connection, reading while sending.

    @return: the status (None without a status line), how the exchange
        ended (C{closed}, C{reset}, C{timeout}, C{refused}, with
        C{+send-failed} when the server stopped taking the request), and
        what came back.
    """
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return None, f"refused ({e})", b""
    sock.setblocking(False)
    pending = memoryview(hostile.wire(host))
    streamed = 0
    received = b""
    send_failed = False
    deadline = time.monotonic() + timeout
    ending = "timeout"
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            answered = _STATUS.match(received) is not None
            writing = not send_failed and not answered and (len(pending) > 0 or streamed < hostile.stream)
            readable, writable, _ = select.select([sock], [sock] if writing else [], [], min(left, 1.0))
            if readable:
                try:
                    chunk = sock.recv(262144)
                except ConnectionResetError:
                    ending = "reset"
                    break
                if not chunk:
                    ending = "closed"
                    break
                received += chunk
            if writable:
                try:
                    if len(pending) == 0:
                        size = min(65536, hostile.stream - streamed)
                        pending = memoryview(_filler(hostile, size))
                        streamed += size
                        if hostile.chunked and streamed >= hostile.stream:
                            pending = memoryview(bytes(pending) + b"0\r\n\r\n")
                    sent = sock.send(pending[:262144])
                    pending = pending[sent:]
                except (BrokenPipeError, ConnectionResetError):
                    send_failed = True
    finally:
        sock.close()
    match = _STATUS.match(received)
    return (
        (int(match.group(1)) if match else None),
        ending + ("+send-failed" if send_failed else ""),
        received,
    )


# -- the run ------------------------------------------------------------------------


def plan(count: int) -> dict[str, int]:
    """
    How many requests of each kind: the in-memory test's proportions.
    """
    weights = {kind: n for kind, (_, n) in {**GENERATORS, **SOCKET_ONLY}.items()}
    total = sum(weights.values())
    counts = {kind: max(1, count * n // total) for kind, n in weights.items()}
    kinds = list(counts)
    i = 0
    while sum(counts.values()) < count:
        counts[kinds[i % len(kinds)]] += 1
        i += 1
    return counts


class Tally:
    def __init__(self) -> None:
        self.classes: collections.Counter[str] = collections.Counter()
        self.problems: collections.Counter[str] = collections.Counter()
        self.endings: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []
        self.seconds = 0.0
        self.tracebacks = 0

    def record(self, hostile: Hostile, status: int | None, ending: str, received: bytes) -> None:
        self.classes["none" if status is None else f"{status // 100}xx"] += 1
        problem = hostile.judge(status)
        if problem == "wrong status":
            problem = "wrong"
        if problem is None:
            return
        self.problems[problem] += 1
        if problem == "unanswered":
            self.endings[ending] += 1
        if len(self.examples) < 5:
            head = received.split(b"\r\n", 1)[0][:80]
            self.examples.append(f"{problem} ({status}, {ending}, {head!r}): {hostile.describe(120)}")


def run(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fuzz-hostile-"))
    upstream, upstream_url = start_upstream()
    counts = plan(args.count)
    if args.kinds:
        counts = {k: v for k, v in counts.items() if k in args.kinds.split(",")}
    print(f"seed {args.seed}; {sum(counts.values())} requests; a fresh server per kind under {workdir}")
    tallies: dict[str, Tally] = {}
    tracebacks = 0
    try:
        for kind, n in counts.items():
            tally = tallies[kind] = Tally()
            tracebacks += fuzz_kind(kind, n, tally, workdir / kind, upstream_url, args)
    finally:
        upstream.shutdown()
    report(tallies, tracebacks)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "seed": args.seed,
                    "count": args.count,
                    "kinds": {
                        kind: {
                            "classes": dict(t.classes),
                            "problems": dict(t.problems),
                            "unanswered_endings": dict(t.endings),
                            "examples": t.examples,
                            "server_tracebacks": t.tracebacks,
                        }
                        for kind, t in tallies.items()
                    },
                },
                indent=2,
            )
        )
    bad = sum(t.problems["5xx"] + t.problems["unanswered"] for t in tallies.values())
    return 1 if bad else 0


def fuzz_kind(kind: str, n: int, tally: Tally, workdir: Path, upstream_url: str, args) -> int:
    """
    Send C{n} requests of C{kind} to a server of their own (so that what
    one kind breaks does not change what the next one meets, as in the
    in-memory test); the number of tracebacks in its log.
    """
    server = start_server(
        workdir,
        "--mirror-url",
        upstream_url,
        "--access-log",
        "off",
        env={"DEVPISERVER_ROOT_PASSWD": ROOT_PASSWORD},
    )
    try:
        world = make_world(server.port)
        started = time.monotonic()
        for hostile in generate(kind, world, args.seed, n=n):
            status, ending, received = exchange(server.port, hostile, world.host, args.timeout)
            tally.record(hostile, status, ending, received)
        tally.seconds = time.monotonic() - started
        alive = server._proc is not None and server._proc.poll() is None
        tally.tracebacks = server.log_text().count("Traceback (most recent call last)")
        print(
            f"  {kind:15s} {n:5d} requests in {tally.seconds:6.1f} s"
            + ("" if alive else f"; the server exited with code {server._proc.returncode}"),
            flush=True,
        )
    finally:
        server.stop()
    return tally.tracebacks


def report(tallies: dict[str, Tally], tracebacks: int) -> None:
    columns = ["2xx", "3xx", "4xx", "5xx", "none"]
    problems = ["5xx", "unanswered", "accepted", "wrong"]
    print()
    print(f"| {'kind':15s} | sent | " + " | ".join(f"{c:>4s}" for c in columns) + " | "
          + " | ".join(f"{p:>10s}" for p in problems) + " |")  # fmt: skip
    print("|" + "---|" * (2 + len(columns) + len(problems)))
    totals: collections.Counter[str] = collections.Counter()
    for kind, t in tallies.items():
        sent = sum(t.classes.values())
        totals["sent"] += sent
        totals.update({f"c:{c}": t.classes[c] for c in columns})
        totals.update({f"p:{p}": t.problems[p] for p in problems})
        print(f"| {kind:15s} | {sent:4d} | " + " | ".join(f"{t.classes[c]:4d}" for c in columns) + " | "
              + " | ".join(f"{t.problems[p]:10d}" for p in problems) + " |")  # fmt: skip
    print(f"| {'total':15s} | {totals['sent']:4d} | " + " | ".join(f"{totals['c:' + c]:4d}" for c in columns)
          + " | " + " | ".join(f"{totals['p:' + p]:10d}" for p in problems) + " |")  # fmt: skip
    print()
    print(f"answered 5xx: {totals['p:5xx']}; unanswered: {totals['p:unanswered']}; "
          f"hostile accepted: {totals['p:accepted']}; wrong status: {totals['p:wrong']}; "
          f"tracebacks in the server log: {tracebacks}")  # fmt: skip
    for kind, t in tallies.items():
        if t.endings:
            print(f"{kind}: unanswered by ending: {dict(t.endings)}")
    for kind, t in tallies.items():
        if t.examples:
            print(f"\n{kind}:")
            for example in t.examples:
                print("  " + example)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="requests in all (default 2000)")
    parser.add_argument("--seed", type=int, default=14, help="the generators' seed (default 14)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--kinds", help="comma list of kinds (default all)")
    parser.add_argument("--workdir", help="where the server directory and log go (default a new temp dir)")
    parser.add_argument("--json", help="also write the counts to this file")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())

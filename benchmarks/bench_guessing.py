#!/usr/bin/env python3
"""
Does a password-guessing storm slow down everyone else?  A warm project
page's latency at rest and while 8 clients send 1,000 wrong passwords.

It starts devpi-tx (``twistd -n devpi``, production argon2 parameters) on a
free loopback port with a fresh server directory (as ``bench_basic_auth.py``
does), creates user ``bench`` (password ``benchpw``) and index ``bench/dev``,
uploads one wheel of project ``guarded`` (``bench_upload_rate.py``'s
wheel and twine-style form) and warms its simple page.  Then:

1. at rest: ``--requests`` ``GET /bench/dev/+simple/guarded/`` (pip's
   ``Accept``) from one client on one keep-alive connection, one every
   ``--interval`` seconds (5 ms);
2. storm: ``--clients`` threads, each on its own keep-alive connection,
   send ``--guesses`` ``POST /+login`` with user ``bench`` and a wrong
   password in all, each as soon as the last was answered, while the page
   client keeps asking for the page at the same pace until the last guess
   is answered.  devpi-tx holds a refused guess's answer for up to a
   second, so with the defaults this takes about two minutes.

Every page answer must be 200 with the wheel in it; every guess must be
refused (401 or 429).  It prints p50/p99 of the page at rest and during
the storm and their ratios, the guesses' answers (a 401 is an argon2
check, a 429 a refusal without one), and the server's CPU time in each
phase.

Hand-run only::

    /work/venv/bin/python benchmarks/bench_guessing.py --devpi-tx-venv /work/venv

Everything binds to 127.0.0.1; the server is stopped (SIGTERM to its process
group, then SIGKILL) at the end, on an error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import itertools
import json
import os
import sys
import threading
import time

from bench_basic_auth import INDEX, PASSWORD, USER, basic, default_tx_venv
from bench_upload_rate import (
    PIP_ACCEPT,
    guarded,
    machine,
    scratch_server,
    server_cpu_ms,
    upload_body,
    wheel_bytes,
)

PROJECT = "guarded"
VERSION = "1.0"
REQUEST_TIMEOUT_S = 120.0
#: No request starts after this many seconds of a phase.
PHASE_BUDGET_S = 600.0


def pct(latencies: list[float], p: float) -> float | None:
    if not latencies:
        return None
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


class PageClient:
    """
    GETs the project page on one keep-alive connection, checking each
    answer, recording latencies.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.path = f"/{USER}/{INDEX}/+simple/{PROJECT}/"
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        self.wheel = f"{PROJECT}-{VERSION}-py3-none-any.whl".encode()

    def get(self, interval: float = 0.0) -> float:
        """
        One request; then wait for the rest of C{interval} seconds.
        """
        t0 = time.perf_counter()
        self.conn.request("GET", self.path, headers={"Accept": PIP_ACCEPT})
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200 or self.wheel not in body:
            raise RuntimeError(f"project page: {resp.status} {body[:200]!r}")
        if interval > elapsed:
            time.sleep(interval - elapsed)
        return elapsed

    def close(self) -> None:
        self.conn.close()


def storm(port: int, clients: int, guesses: int) -> dict:
    """
    C{clients} threads send C{guesses} wrong passwords to /+login in all.
    """
    lock = threading.Lock()
    statuses: collections.Counter[int] = collections.Counter()
    latencies: list[float] = []
    errors: list[str] = []
    started = itertools.count()
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        mine: collections.Counter[int] = collections.Counter()
        times: list[float] = []
        barrier.wait()
        try:
            while next(started) < guesses and time.perf_counter() < deadline[0]:
                body = json.dumps({"user": USER, "password": f"guess-{n}-{len(times)}"}).encode()
                t0 = time.perf_counter()
                try:
                    conn.request(
                        "POST",
                        "/+login",
                        body=body,
                        headers={"Accept": "application/json", "Content-Type": "application/json"},
                    )
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
                    continue
                times.append(time.perf_counter() - t0)
                mine[resp.status] += 1
        finally:
            conn.close()
            with lock:
                statuses.update(mine)
                latencies.extend(times)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + PHASE_BUDGET_S
    barrier.wait()
    return {"threads": threads, "t0": t0, "statuses": statuses, "latencies": latencies, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devpi-tx-venv", default=default_tx_venv(), help="venv with devpi-tx (twistd)")
    ap.add_argument("--requests", type=int, default=300, help="page requests at rest (default 300)")
    ap.add_argument("--guesses", type=int, default=1000, help="wrong passwords in all (default 1000)")
    ap.add_argument("--clients", type=int, default=8, help="guessing threads (default 8)")
    ap.add_argument("--interval", type=float, default=0.005, help="page request pace, s (default 0.005)")
    ap.add_argument("--workdir", help="scratch dir (default: a new temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (server dir, log)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if not 50 <= args.requests <= 100_000:
        ap.error("--requests: between 50 and 100,000")
    if not 1 <= args.guesses <= 100_000 or not 1 <= args.clients <= 64:
        ap.error("--guesses: 1 to 100,000; --clients: 1 to 64")
    if not 0 <= args.interval <= 1:
        ap.error("--interval: 0 to 1 s")
    workdir, server = scratch_server(args, "bench-guessing-", ap)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine()}
    page = None
    with guarded(server, workdir, args.keep) as status:
        print(f"starting devpi-tx on 127.0.0.1:{server.port} ...", flush=True)
        server.start()
        server.setup()
        results["version"] = server.version()
        body, ctype = upload_body(PROJECT, VERSION, wheel_bytes(PROJECT, VERSION, os.urandom(64)))
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
        conn.request(
            "POST",
            f"/{USER}/{INDEX}/",
            body=body,
            headers={"Content-Type": ctype, "Authorization": basic(USER, PASSWORD)},
        )
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status not in (200, 201):
            raise RuntimeError(f"upload: {resp.status} {resp.reason}")
        page = PageClient(server.port)
        for _ in range(20):
            page.get()
        pid = server.proc.pid

        print(f"at rest: {args.requests} page requests ...", flush=True)
        cpu0, t0 = server_cpu_ms(pid), time.perf_counter()
        rest = [page.get(args.interval) for _ in range(args.requests)]
        rest_wall, rest_cpu = time.perf_counter() - t0, server_cpu_ms(pid) - cpu0

        print(f"storm: {args.clients} clients, {args.guesses} wrong passwords ...", flush=True)
        cpu0 = server_cpu_ms(pid)
        guessing = storm(server.port, args.clients, args.guesses)
        during: list[float] = []
        while any(t.is_alive() for t in guessing["threads"]):
            if time.perf_counter() - guessing["t0"] > PHASE_BUDGET_S:
                raise RuntimeError(f"storm still running after {PHASE_BUDGET_S:.0f}s")
            during.append(page.get(args.interval))
        for t in guessing["threads"]:
            t.join(REQUEST_TIMEOUT_S + 10)
        storm_wall, storm_cpu = time.perf_counter() - guessing["t0"], server_cpu_ms(pid) - cpu0
        statuses = dict(sorted(guessing["statuses"].items()))
        if set(statuses) - {401, 429} or guessing["errors"]:
            raise RuntimeError(f"guesses answered {statuses}, errors {guessing['errors'][:5]}")
        if len(during) < 20:
            raise RuntimeError(f"only {len(during)} page requests during the storm; raise --guesses")

        results.update(
            rest={
                "requests": len(rest),
                "p50_ms": pct(rest, 0.5),
                "p99_ms": pct(rest, 0.99),
                "wall_s": round(rest_wall, 3),
                "server_cpu_ms": round(rest_cpu, 1),
            },
            storm={
                "requests": len(during),
                "p50_ms": pct(during, 0.5),
                "p99_ms": pct(during, 0.99),
                "wall_s": round(storm_wall, 3),
                "server_cpu_ms": round(storm_cpu, 1),
                "guesses": sum(statuses.values()),
                "statuses": statuses,
                "guess_p50_ms": pct(guessing["latencies"], 0.5),
                "guess_p99_ms": pct(guessing["latencies"], 0.99),
            },
        )
        results["ratio_p50"] = results["storm"]["p50_ms"] / results["rest"]["p50_ms"]
        results["ratio_p99"] = results["storm"]["p99_ms"] / results["rest"]["p99_ms"]
    if page is not None:
        page.close()
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if "storm" in results:
        m, rest, st = results["machine"], results["rest"], results["storm"]
        print()
        print(
            f"{results['date']}, {m['cpus']} CPUs, Python {m['python']}, devpi-tx {results['version']}, "
            f"load average {m['loadavg_start'][0]} -> {m['loadavg_end'][0]}"
        )
        print()
        print("| project page | requests | p50 ms | p99 ms | server CPU ms | wall s |")
        print("|---|---|---|---|---|---|")
        for label, row in (("at rest", rest), ("during the storm", st)):
            print(
                f"| {label} | {row['requests']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['server_cpu_ms']:.0f} | {row['wall_s']:.2f} |"
            )
        print()
        print(f"ratio storm / rest: p50 {results['ratio_p50']:.2f}x, p99 {results['ratio_p99']:.2f}x")
        answers = ", ".join(f"{n} x {code}" for code, n in st["statuses"].items())
        print(
            f"guesses: {st['guesses']} ({answers}; a 401 is an argon2 check), "
            f"p50 {st['guess_p50_ms']:.2f} ms, p99 {st['guess_p99_ms']:.2f} ms"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

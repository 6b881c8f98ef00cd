#!/usr/bin/env python3
"""
Is an upload as fast when its project already has 900 versions as when it
has none?  The same question as ``bench_upload_rate.py``, asked so that the
machine's drift cancels out.

``bench_upload_rate.py`` compares the first hundred uploads of a run with
the last, some seconds apart; on a shared machine the rate swings by a
third between two hundreds, so single ratios say little.  Here, after
``--count - 100`` versions of project ``hosted-many`` are in, the last 100
versions of ``hosted-many`` and the first 100 versions of a new project
``hosted-fresh`` are uploaded in alternation (many, fresh, many, fresh,
...) over the same keep-alive connection: both hundreds see the same
machine, upload for upload.

It prints the rate of each hundred (100 / the sum of its upload
latencies), their ratio (late / fresh: at least 1 means uploads into the
long project are no slower), the share of pairs in which the upload into
the long project was the faster one, and the server's CPU per upload of
each (scheduler counters of all its threads, read around every upload).

Same server setup as ``bench_upload_rate.py`` (``twistd -n devpi`` on a free
loopback port, fresh server directory, user ``bench``, index ``bench/dev``,
64-byte wheels, twine-style multipart with Basic auth).  Hand-run only::

    /work/venv/bin/python benchmarks/bench_upload_rate_paired.py --devpi-tx-venv /work/venv
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench_basic_auth import INDEX, PASSWORD, USER, DevpiTx, basic, default_tx_venv
from bench_upload_rate import (
    REQUEST_TIMEOUT_S,
    guarded,
    server_cpu_ms,
    sigterm_as_interrupt,
    upload_body,
    wheel_bytes,
)

LONG = "hosted-many"
FRESH = "hosted-fresh"
PAIRS = 100


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devpi-tx-venv", default=default_tx_venv(), help="venv with devpi-tx (twistd)")
    ap.add_argument("--count", type=int, default=1000, help="versions of the long project (default 1000)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if not 2 * PAIRS <= args.count <= 10_000:
        ap.error(f"--count: between {2 * PAIRS} and 10000")
    tx_venv = Path(args.devpi_tx_venv)
    if not (tx_venv / "bin" / "twistd").exists():
        ap.error(f"no twistd in {tx_venv}/bin (use --devpi-tx-venv)")

    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="bench-upload-paired-"))
    server = DevpiTx(workdir / "devpi-tx", tx_venv)

    def body(project: str, n: int) -> tuple[bytes, str]:
        version = f"1.{n}"
        return upload_body(project, version, wheel_bytes(project, version, os.urandom(64)))

    before = [body(LONG, n) for n in range(args.count - PAIRS)]
    pairs = [(body(LONG, n), body(FRESH, k)) for k, n in enumerate(range(args.count - PAIRS, args.count))]
    auth = basic(USER, PASSWORD)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "count": args.count}
    conn = None
    with guarded(server, workdir) as status:
        server.start()
        server.setup()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
        pid = server.proc.pid

        def upload(payload: tuple[bytes, str]) -> tuple[float, float]:
            data, ctype = payload
            cpu0, t0 = server_cpu_ms(pid), time.perf_counter()
            conn.request(
                "POST", f"/{USER}/{INDEX}/", body=data, headers={"Content-Type": ctype, "Authorization": auth}
            )
            resp = conn.getresponse()
            raw = resp.read()
            elapsed = time.perf_counter() - t0
            if resp.status not in (200, 201):
                raise RuntimeError(f"upload: HTTP {resp.status} {raw[:300]!r}")
            return elapsed, server_cpu_ms(pid) - cpu0

        t0 = time.perf_counter()
        for payload in before:
            upload(payload)
        results["first_uploads_rate"] = round(len(before) / (time.perf_counter() - t0), 1)
        late, fresh = [], []
        for long_payload, fresh_payload in pairs:
            late.append(upload(long_payload))
            fresh.append(upload(fresh_payload))
        late_rate = PAIRS / sum(t for t, _ in late)
        fresh_rate = PAIRS / sum(t for t, _ in fresh)
        results.update(
            late_rate=round(late_rate, 1),
            fresh_rate=round(fresh_rate, 1),
            ratio_late_fresh=round(late_rate / fresh_rate, 3),
            late_faster_share=round(sum(a[0] < b[0] for a, b in zip(late, fresh, strict=True)) / PAIRS, 2),
            late_cpu_ms=round(sum(c for _, c in late) / PAIRS, 3),
            fresh_cpu_ms=round(sum(c for _, c in fresh) / PAIRS, 3),
        )
        print(
            f"versions {args.count - PAIRS + 1}-{args.count} of {LONG}: {results['late_rate']} uploads/s, "
            f"server CPU {results['late_cpu_ms']} ms/upload\n"
            f"versions 1-{PAIRS} of {FRESH} (alternating): {results['fresh_rate']} uploads/s, "
            f"server CPU {results['fresh_cpu_ms']} ms/upload\n"
            f"late / fresh: {results['ratio_late_fresh']}; the late upload was the faster of its pair "
            f"in {results['late_faster_share']:.0%}",
            flush=True,
        )
    if conn is not None:
        conn.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
Does a warm page keep its rate while the mirror cache evicts?  Two servers
with the same state (``--files`` stored mirrored files of 1 KiB, put in the
state and the file store directly), one started with a bound that makes it
evict nearly all of them (``--mirror-cache-size 1K``), one without; the
rate of a private index's simple page (``wrk -t1 -c64``, pip's ``Accept``)
is measured on each in turn, alternating, while the first evicts, and the
ratio of the medians printed, with how many files the eviction removed
during the runs.  Hand-run only::

    /work/venv/bin/python benchmarks/bench_eviction_load.py --devpi-tx-venv /work/venv

Everything binds to 127.0.0.1; the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from bench_metrics_overhead import prepare, request, start, wrk

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def populate(serverdir: Path, count: int) -> None:
    """
    C{count} stored mirrored files of root/pypi, in the state and on disk.
    """
    from devpi_tx.model import releases
    from devpi_tx.storage.files import LocalFileStore
    from devpi_tx.storage.sqlite import open_storage

    storage = open_storage(str(serverdir))
    files = LocalFileStore(str(serverdir / "+files"))
    with storage.transaction() as tx:
        for i in range(count):
            data = (b"%08d" % i) * 128
            writer = files.writer()
            writer.write(data)
            sha = writer.commit(durable=False)
            path = releases.relpath("root/pypi", sha, f"p{i}-1.0.tar.gz")
            entry = {"rel": "releasefile", "project": f"p{i}", "version": None, "url": "http://127.0.0.1:9/"}
            entry.update(sha256=sha, size=len(data), last_modified=i, mirror=True, stored=True)
            tx.set(releases.file_key(path), entry)
            tx.set(releases.blob_key(sha), 1)
    storage.close()


def evictions(port: int) -> int:
    status, body = request(port, "GET", "/+status", headers={"Accept": "application/json"})
    return json.loads(body)["result"]["mirror-cache"]["evictions"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devpi-tx-venv", type=Path, default=Path(sys.prefix))
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in ("evicting", "plain"):
            process, _ = start(args.devpi_tx_venv, workdir, name)  # initialises the directory
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
            populate(workdir / name, args.files)
        servers = {
            "evicting": start(args.devpi_tx_venv, workdir, "evicting", "--mirror-cache-size", "1K"),
            "plain": start(args.devpi_tx_venv, workdir, "plain"),
        }
        try:
            for _, port in servers.values():
                prepare(port)
            rates: dict[str, list[float]] = {"evicting": [], "plain": []}
            first = evictions(servers["evicting"][1])
            for round_ in range(args.rounds):
                for name in ("evicting", "plain") if round_ % 2 == 0 else ("plain", "evicting"):
                    process, port = servers[name]
                    rate, cost = wrk(port, 64, args.seconds, process.pid)
                    rates[name].append(rate)
                    print(f"{name:8}: {rate:8.0f} requests/s, {cost:6.1f} CPU us/request", flush=True)
            last = evictions(servers["evicting"][1])
            evicting, plain = statistics.median(rates["evicting"]), statistics.median(rates["plain"])
            print(f"evicted during the runs: {last - first} files (of {args.files}; {first} before)")
            print(f"median: evicting {evicting:.0f}/s, plain {plain:.0f}/s, ratio {evicting / plain:.3f}")
            if last - first == 0 or last >= args.files:
                print("warning: the eviction did not run all along; give more --files", flush=True)
        finally:
            for process, _ in servers.values():
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""
What the state on PostgreSQL costs next to SQLite, in one run: N small
commits (one key each, durable and not), N cached reads, N misses, on a
SQLite file and on a PostgreSQL database on loopback; and a PostgreSQL
commit with its statements pipelined (one round trip) against sent one by
one.  Prints the times per operation and the ratios.  Hand-run only::

    /work/venv/bin/python benchmarks/bench_pgstorage.py [--dsn postgresql://...] [-n 2000]

Without C{--dsn} a throwaway PostgreSQL cluster is started on a loopback
port (tests/scaleout.py's, which needs initdb) and removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def per_op(n: int, work) -> float:
    """
    Seconds per call of C{work(i)} over C{n} calls.
    """
    started = time.perf_counter()
    for i in range(n):
        work(i)
    return (time.perf_counter() - started) / n


def measure(storage, n: int) -> dict[str, float]:
    def commit(durable: bool):
        def work(i: int) -> None:
            with storage.transaction(durable=durable) as tx:
                tx.set(f"bench/{durable}/{i}", {"n": i, "name": "pkg"})

        return work

    results = {
        "durable commit": per_op(n, commit(True)),
        "non-durable commit": per_op(n, commit(False)),
    }
    storage.get("bench/True/0")
    results["cached read"] = per_op(n, lambda i: storage.get("bench/True/0"))
    storage._cache.clear()  # both providers' read cache
    results["read miss"] = per_op(n, lambda i: storage.get(f"bench/True/{i}"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--dsn", help="an empty PostgreSQL database to use (default: a throwaway cluster)")
    parser.add_argument("-n", type=int, default=2000, help="operations of each kind")
    args = parser.parse_args()
    from devpi_tx.storage.postgresql import PostgresStorage
    from devpi_tx.storage.sqlite import SQLiteStorage

    cluster = None
    dsns = []
    if args.dsn:
        dsns = [args.dsn, args.dsn]
    else:
        from tests.scaleout import start_postgres

        cluster = start_postgres()
        dsns = [cluster.create_database(), cluster.create_database()]
    tmp = tempfile.mkdtemp(prefix="bench-pgstorage-")
    try:
        lite = SQLiteStorage(str(Path(tmp) / "state.sqlite"))
        sqlite = measure(lite, args.n)
        lite.close()
        pg = PostgresStorage(dsns[0], create=True)
        postgres = measure(pg, args.n)
        pg.close()
        plain_storage = PostgresStorage(dsns[1], create=True, pipeline=False)
        plain = measure(plain_storage, args.n)
        plain_storage.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if cluster is not None:
            cluster.stop("immediate")
            shutil.rmtree(str(Path(cluster.datadir).parent), ignore_errors=True)
    print(f"{args.n} operations of each kind; microseconds per operation")
    print(f"{'':20} {'SQLite':>10} {'PG pipeline':>12} {'PG plain':>10} {'PG/SQLite':>10} {'plain/pipe':>10}")
    for name in sqlite:
        a, b, c = sqlite[name] * 1e6, postgres[name] * 1e6, plain[name] * 1e6
        print(f"{name:20} {a:10.1f} {b:12.1f} {c:10.1f} {b / a:10.2f} {c / b:10.2f}")


if __name__ == "__main__":
    main()

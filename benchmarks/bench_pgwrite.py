#!/usr/bin/env python3
"""
Whether a node's reactor keeps answering while its write waits for
another node's: node B holds the write lock of a PostgreSQL state for
C{--hold} ms (a transaction in a thread), and node A writes meanwhile,
with the synchronous C{transaction()} (as the request handlers did) and
with C{write()} (as they do now).  A LoopingCall ticking every 5 ms stands
for the requests the reactor would serve: printed are the ticks that ran
during A's write and the longest gap between two ticks (how long the
reactor answered nothing).  Then what the threads cost a write nobody
else holds up: C{-n} commits one after another with each.  Hand-run
only::

    /work/venv/bin/python benchmarks/bench_pgwrite.py [--dsn postgresql://...] [--hold 200] [-r 5]

Without C{--dsn} a throwaway PostgreSQL cluster is started on a loopback
port (tests/scaleout.py's, which needs initdb) and removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TICK = 0.005


def hold_lock(storage, seconds: float, locked: threading.Event) -> None:
    """
    (In a thread.)  Node B's transaction, holding the lock C{seconds}.
    """
    with storage.transaction() as tx:
        tx.set("held-by-b", time.time())
        locked.set()
        time.sleep(seconds)


async def one_round(reactor, a, b, hold: float, asynchronous: bool) -> tuple[int, float, float]:
    """
    @return: ticks during A's write, the longest gap between ticks
        (seconds), and A's write's time (seconds).
    """
    from twisted.internet.task import LoopingCall, deferLater
    from twisted.internet.threads import deferToThread

    stamps: list[float] = []
    loop = LoopingCall(lambda: stamps.append(time.perf_counter()))
    loop.clock = reactor
    loop.start(TICK, now=True)
    locked = threading.Event()
    b_done = deferToThread(hold_lock, b, hold, locked)
    await deferToThread(locked.wait, 10)
    await deferLater(reactor, TICK * 3, lambda: None)
    before = len(stamps)
    started = time.perf_counter()
    if asynchronous:
        async with a.write() as tx:
            tx.set("by-a", 1)
    else:
        with a.transaction() as tx:
            tx.set("by-a", 1)
    took = time.perf_counter() - started
    during = len(stamps) - before
    await b_done
    await deferLater(reactor, TICK * 3, lambda: None)
    loop.stop()
    gaps = [later - earlier for earlier, later in zip(stamps, stamps[1:], strict=False)]
    return during, max(gaps), took


async def uncontended(a, n: int, asynchronous: bool) -> float:
    """
    Seconds per commit of C{n} commits one after another, nobody else
    writing.
    """
    started = time.perf_counter()
    for i in range(n):
        if asynchronous:
            async with a.write() as tx:
                tx.set(f"bench/{asynchronous}/{i}", {"n": i})
        else:
            with a.transaction() as tx:
                tx.set(f"bench/{asynchronous}/{i}", {"n": i})
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--dsn", help="an empty PostgreSQL database to use (default: a throwaway cluster)")
    parser.add_argument("--hold", type=float, default=200, help="how long node B holds the lock, in ms")
    parser.add_argument("-r", "--rounds", type=int, default=5, help="rounds of each kind")
    parser.add_argument("-n", type=int, default=500, help="uncontended commits of each kind")
    args = parser.parse_args()
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react
    from twisted.internet.threads import deferToThread

    from devpi_tx.storage.postgresql import PostgresStorage

    cluster = None
    if args.dsn:
        dsn = args.dsn
    else:
        from tests.scaleout import start_postgres

        cluster = start_postgres()
        dsn = cluster.create_database()
    results: dict[str, list[tuple[int, float, float]]] = {"transaction()": [], "write()": []}
    commits: dict[str, float] = {}

    async def run(reactor) -> None:
        a = PostgresStorage(dsn, create=True, run_in_thread=deferToThread)
        b = PostgresStorage(dsn, create=True)
        try:
            for _ in range(args.rounds):
                for name, asynchronous in (("transaction()", False), ("write()", True)):
                    results[name].append(await one_round(reactor, a, b, args.hold / 1000, asynchronous))
            for name, asynchronous in (("transaction()", False), ("write()", True)):
                commits[name] = await uncontended(a, args.n, asynchronous)
        finally:
            a.close()
            b.close()

    try:
        react(lambda reactor: ensureDeferred(run(reactor)), [])
    except SystemExit as e:
        if e.code:
            raise
    finally:
        if cluster is not None:
            cluster.stop("immediate")
            shutil.rmtree(str(Path(cluster.datadir).parent), ignore_errors=True)
    print(f"node B holds the write lock {args.hold:g} ms, node A writes meanwhile; medians of {args.rounds}")
    print(f"{'A writes with':16} {'ticks (5 ms)':>13} {'longest gap ms':>15} {'A waited ms':>12}")
    for name, rounds in results.items():
        ticks = statistics.median(r[0] for r in rounds)
        gap = statistics.median(r[1] for r in rounds) * 1000
        took = statistics.median(r[2] for r in rounds) * 1000
        print(f"{name:16} {ticks:13g} {gap:15.1f} {took:12.1f}")
    print(f"uncontended durable commits, {args.n} of each, microseconds per commit")
    for name, seconds in commits.items():
        print(f"{name:16} {seconds * 1e6:13.0f}")


if __name__ == "__main__":
    main()

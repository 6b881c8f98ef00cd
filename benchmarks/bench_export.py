#!/usr/bin/env python3
"""
Export and import of a server with 1,000 versions and 1,000 files of
100 KB (issue 17's target: each within 3x of ``cp -a`` of the files, on
the same machine, in the same run), devpi-tx's and devpi-server's side by
side.

The same state is built in both servers through their HTTP API: user
``bench``, index ``bench/dev``, 100 projects of 10 versions, one wheel of
100 KB (incompressible, stored) per version.  Then, each step timed as
the wall time of the command a person runs (a subprocess: interpreter
start included), after a ``sync`` so that no step pays for the writes of
the one before, the median of ``--repeat`` runs:

- devpi-tx: ``devpi-tx export``, ``devpi-tx import`` (into a new server
  directory; the import verifies every file's sha256 and syncs the file
  system once before it commits), both also with ``--hard-links``;
- devpi-server: ``devpi-export``, ``devpi-import`` (default options: it
  processes its events);
- ``cp -a`` of each server's ``+files`` directory (the baseline of an
  export) and of each dump (the baseline of an import).

Hand-run only (takes a few minutes; devpi-server's side needs its
virtualenv, ``--devpi-bin``)::

    /work/venv/bin/python benchmarks/bench_export.py [--repeat 3] [--json out.json]

Everything binds to 127.0.0.1; the servers are stopped before anything is
timed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.devpi_peer import DEFAULT_PEER_BIN, Peer  # noqa: E402
from tests.serverproc import start_server  # noqa: E402

PROJECTS = 100
VERSIONS = 10
FILE_SIZE = 100_000


def make_wheel(name: str, version: str, rng: random.Random) -> tuple[str, bytes]:
    """
    A wheel of about C{FILE_SIZE} bytes: random (incompressible) data,
    stored, and its dist-info.
    """
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
        used = buf.tell() + 200
        zf.writestr(f"{dist}/data.bin", rng.randbytes(FILE_SIZE - used))
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


def populate(peer: Peer, wheels: list[tuple[str, str, str, bytes]]) -> None:
    peer.create_user("bench", "benchpw")
    peer.login("bench", "benchpw")
    peer.create_index("bench/dev", volatile=False)
    for name, version, filename, data in wheels:
        peer.upload("bench/dev", name, version, filename, data)


def timed(command: list[str], env: dict | None = None) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def median_of(repeat: int, step: Callable[[int], float]) -> float:
    return statistics.median(step(i) for i in range(repeat))


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(root, name))
    return files, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--devpi-bin", type=Path, default=DEFAULT_PEER_BIN)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--workdir", type=Path, help="keep the work here (default: a temporary directory)")
    args = parser.parse_args()
    rng = random.Random(17)
    wheels = [
        (f"bench-p{p:03d}", f"1.{v}", *make_wheel(f"bench-p{p:03d}", f"1.{v}", rng))
        for p in range(PROJECTS)
        for v in range(VERSIONS)
    ]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    tx = [sys.executable, "-m", "devpi_tx.cli.main"]
    devpi = args.devpi_bin
    results: dict[str, dict] = {"devpi-tx": {}, "devpi-server": {}}
    try:
        print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
        # -- the states -------------------------------------------------------------
        start = time.perf_counter()
        server = start_server(work / "tx")
        try:
            populate(Peer(server.url), wheels)
        finally:
            server.stop()
        print(f"devpi-tx state built in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        peer = Peer.start_devpi(work / "devpi" / "serverdir", devpi)
        try:
            peer.login("root", "rootpw")
            populate(peer, wheels)
        finally:
            peer.stop()
        print(f"devpi-server state built in {time.perf_counter() - start:.1f} s")
        tx_dir, devpi_dir = work / "tx" / "serverdir", work / "devpi" / "serverdir"
        # -- devpi-tx -----------------------------------------------------------------
        res = results["devpi-tx"]
        res["start-up"] = median_of(args.repeat, lambda i: timed([*tx, "export", "--help"], env))
        res["cp -a +files"] = median_of(
            args.repeat, lambda i: timed(["cp", "-a", str(tx_dir / "+files"), str(fresh(work / "cp"))])
        )
        res["export"] = median_of(
            args.repeat,
            lambda i: timed([*tx, "export", "--serverdir", str(tx_dir), str(fresh(work / "d"))], env),
        )
        res["dump"] = tree_size(work / "d")
        res["cp -a dump"] = median_of(
            args.repeat, lambda i: timed(["cp", "-a", str(work / "d"), str(fresh(work / "cp"))])
        )
        res["import"] = median_of(
            args.repeat,
            lambda i: timed([*tx, "import", "--serverdir", str(fresh(work / "s")), str(work / "d")], env),
        )
        res["export --hard-links"] = median_of(
            args.repeat,
            lambda i: timed(
                [*tx, "export", "--hard-links", "--serverdir", str(tx_dir), str(fresh(work / "dh"))], env
            ),
        )
        res["import --hard-links"] = median_of(
            args.repeat,
            lambda i: timed(
                [*tx, "import", "--hard-links", "--serverdir", str(fresh(work / "sh")), str(work / "d")], env
            ),
        )
        # -- devpi-server ---------------------------------------------------------------
        res = results["devpi-server"]
        res["start-up"] = median_of(args.repeat, lambda i: timed([str(devpi / "devpi-export"), "--help"]))
        res["cp -a +files"] = median_of(
            args.repeat, lambda i: timed(["cp", "-a", str(devpi_dir / "+files"), str(fresh(work / "cp"))])
        )
        res["export"] = median_of(
            args.repeat,
            lambda i: timed(
                [str(devpi / "devpi-export"), "--serverdir", str(devpi_dir), str(fresh(work / "dd"))]
            ),
        )
        res["dump"] = tree_size(work / "dd")
        res["cp -a dump"] = median_of(
            args.repeat, lambda i: timed(["cp", "-a", str(work / "dd"), str(fresh(work / "cp"))])
        )
        res["import"] = median_of(
            args.repeat,
            lambda i: timed(
                [
                    str(devpi / "devpi-import"),
                    "--serverdir",
                    str(fresh(work / "ds")),
                    "--no-root-pypi",
                    str(work / "dd"),
                ]
            ),
        )
        res["export --hard-links"] = median_of(
            args.repeat,
            lambda i: timed(
                [
                    str(devpi / "devpi-export"),
                    "--hard-links",
                    "--serverdir",
                    str(devpi_dir),
                    str(fresh(work / "ddh")),
                ]
            ),
        )
        res["import --hard-links"] = median_of(
            args.repeat,
            lambda i: timed(
                [str(devpi / "devpi-import"), "--hard-links", "--no-root-pypi"]
                + ["--serverdir", str(fresh(work / "dsh")), str(work / "dd")]
            ),
        )
        print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def table(results: dict[str, dict]) -> str:
    rows = [
        "| step | devpi-tx | x cp -a | devpi-server 6.20.3 | x cp -a |",
        "|---|---:|---:|---:|---:|",
    ]
    for step, baseline in (
        ("export", "cp -a +files"),
        ("export --hard-links", "cp -a +files"),
        ("import", "cp -a dump"),
        ("import --hard-links", "cp -a dump"),
    ):
        cells = [step]
        for side in ("devpi-tx", "devpi-server"):
            res = results[side]
            cells += [f"{res[step]:.2f} s", f"{res[step] / res[baseline]:.1f}x"]
        rows.append("| " + " | ".join(cells) + " |")
    for baseline in ("cp -a +files", "cp -a dump", "start-up"):
        cells = [baseline if baseline != "start-up" else "start-up (`export --help`; in each figure above)"]
        for side in ("devpi-tx", "devpi-server"):
            cells += [f"{results[side][baseline]:.2f} s", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())

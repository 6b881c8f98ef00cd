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


_made: dict[Path, int] = {}


def fresh(path: Path) -> Path:
    """
    A new directory name next to C{path} for each run: removing the
    previous run's 100 MB first made the next run of anything up to five
    times slower here (the filesystem's deferred work on the freed
    blocks), so nothing is removed until the end.
    """
    _made[path] = _made.get(path, 0) + 1
    return path.with_name(f"{path.name}-{_made[path]}")


def tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(root, name))
    return files, size


def steps(
    side: str, serverdir: Path, command: list[str] | None, devpi: Path, work: Path, dumps: dict[str, Path]
) -> dict[str, Callable[[], list[str]]]:
    """
    The timed commands of one side, by step name; each gives a new
    target directory when called (in order: the export makes the dump
    the imports read).
    """
    tag = "tx" if command is not None else "devpi"
    if command is not None:
        export = [*command, "export"]
        import_ = [*command, "import"]
    else:
        export = [str(devpi / "devpi-export")]
        import_ = [str(devpi / "devpi-import"), "--no-root-pypi"]

    def export_to() -> list[str]:
        dumps.setdefault(side, fresh(work / f"{tag}-dump"))
        return [*export, "--serverdir", str(serverdir), str(dumps[side])]

    return {
        "start-up": lambda: [*export, "--help"],
        "cp -a +files": lambda: ["cp", "-a", str(serverdir / "+files"), str(fresh(work / "cp"))],
        "export": lambda: (
            [*export, "--serverdir", str(serverdir), str(fresh(work / f"{tag}-export"))]
            if side in dumps
            else export_to()
        ),
        "cp -a dump": lambda: ["cp", "-a", str(dumps[side]), str(fresh(work / "cp"))],
        "import": lambda: [*import_, "--serverdir", str(fresh(work / f"{tag}-s")), str(dumps[side])],
        "export --hard-links": lambda: [
            *export,
            "--hard-links",
            "--serverdir",
            str(serverdir),
            str(fresh(work / f"{tag}-dh")),
        ],
        "import --hard-links": lambda: [
            *import_,
            "--hard-links",
            "--serverdir",
            str(fresh(work / f"{tag}-sh")),
            str(dumps[side]),
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--devpi-bin", type=Path, default=DEFAULT_PEER_BIN)
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--workdir", type=Path, help="keep the work here (default: a temporary directory)")
    parser.add_argument("--table", type=Path, metavar="JSON", help="only print the table of earlier figures")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
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
        # Each round runs every step once, the sides interleaved, so that
        # the machine's load (it is shared) falls on all of them alike.
        # Imports read the dump the first round's export made.
        sides = {"devpi-tx": (tx_dir, tx, env), "devpi-server": (devpi_dir, None, None)}
        dumps: dict[str, Path] = {}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeat):
            for side, (serverdir, command, cmd_env) in sides.items():
                for step, argv in steps(side, serverdir, command, devpi, work, dumps).items():
                    times.setdefault((side, step), []).append(timed(argv(), cmd_env))
        for (side, step), values in times.items():
            results[side][step] = statistics.median(values)
        for side, dump in dumps.items():
            results[side]["dump"] = tree_size(dump)
        print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def table(results: dict[str, dict]) -> str:
    """
    The figures as a Markdown table: each step's time and its ratio to
    C{cp -a} of the server's files directory (the issue's baseline), and
    an import's also to C{cp -a} of the dump it reads.
    """
    rows = [
        "| step | devpi-tx | x cp -a +files | x cp -a dump "
        "| devpi-server 6.20.3 | x cp -a +files | x cp -a dump |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for step in ("export", "export --hard-links", "import", "import --hard-links"):
        cells = [step]
        for side in ("devpi-tx", "devpi-server"):
            res = results[side]
            dump = f"{res[step] / res['cp -a dump']:.1f}x" if step.startswith("import") else ""
            cells += [f"{res[step]:.2f} s", f"{res[step] / res['cp -a +files']:.1f}x", dump]
        rows.append("| " + " | ".join(cells) + " |")
    for baseline in ("cp -a +files", "cp -a dump", "start-up"):
        cells = [baseline if baseline != "start-up" else "start-up (`export --help`; in each figure above)"]
        for side in ("devpi-tx", "devpi-server"):
            cells += [f"{results[side][baseline]:.2f} s", "", ""]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
What a ``constrained`` index's filter costs: the rate of a warm project
page of a ``constrained`` index over root/pypi, against the same page of a
plain index over root/pypi (no filter) on the same server, and against
devpi-server's plain pages, in one run (issue 18, Targets).

Starts the fake upstream (``python -m tests.upstream_server``: project
``bench-pkg`` with ``--versions`` wheels, all with an old PEP 700 upload
time), devpi-tx (``twistd -n devpi``, no access log) and devpi-server
(``devpi-init --no-root-pypi``, then root/pypi created as a mirror of the
fake upstream), each on a free loopback port with a fresh server
directory.  On devpi-tx: ``root/plain`` (bases=root/pypi) and
``root/pinned`` (type=constrained, bases=root/pypi,
constraints=``bench-pkg<N``, half the versions) and ``root/allowed`` (the
same with ``bench-pkg>=1``: the filter runs, every version is kept, the
page is as long as the plain one); on devpi-server:
``root/plain`` (bases=root/pypi).  Every page is fetched once (warm), then
``wrk -t1 -c64`` runs on ``/root/INDEX/+simple/bench-pkg/`` (pip's
``Accept`` header) go round the pages ``--rounds`` times, and the medians
and ratios are printed and written as JSON.  Hand-run only::

    /work/venv/bin/python benchmarks/bench_index_types.py \
        --devpi-tx-venv /work/venv --peers-venv /work/peers-venv \
        --out benchmarks/results/index-types.json

Everything binds to 127.0.0.1; the processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
PROJECT = "bench-pkg"
OLD = "2020-01-01T00:00:00Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path, headers={"Accept": PIP_ACCEPT})
    response = connection.getresponse()
    return response.status, response.read()


def wait_for(port: int, path: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            get(port, path)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered on port {port}; see {log}")


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO_ROOT,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_upstream(workdir: Path, versions: int) -> tuple[subprocess.Popen, str]:
    portfile = workdir / "upstream.port"
    spec = PROJECT + ":" + ",".join(f"{v}.0@{OLD}" for v in range(1, versions + 1))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = spawn(
        [sys.executable, "-m", "tests.upstream_server", str(portfile), spec], workdir / "up.log", env
    )
    deadline = time.monotonic() + 30
    while not portfile.exists() or not portfile.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"fake upstream did not start; see {workdir / 'up.log'}")
        time.sleep(0.1)
    return process, f"http://127.0.0.1:{portfile.read_text()}/simple/"


def devpi(client: Path, clientdir: Path, *args: str) -> None:
    subprocess.run([str(client), "--clientdir", str(clientdir), *args], check=True, capture_output=True)


def start_devpi_tx(venv: Path, workdir: Path, upstream: str, constraint: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "devpi", "--serverdir", str(workdir / "tx")]
    command += ["--port", str(port), "--mirror-url", upstream, "--access-log", "off"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = spawn(command, workdir / "tx.log", env)
    wait_for(port, "/+api", workdir / "tx.log")
    client, clientdir = venv / "bin" / "devpi", workdir / "tx-client"
    devpi(client, clientdir, "use", f"http://127.0.0.1:{port}")
    devpi(client, clientdir, "login", "root", "--password", "")
    devpi(client, clientdir, "index", "-c", "root/plain", "bases=root/pypi")
    devpi(client, clientdir, "index", "-c", "root/pinned", "type=constrained", "bases=root/pypi")
    devpi(client, clientdir, "index", "root/pinned", f"constraints={constraint}")
    # The filter's cost alone: every version matches, the page is as long as the plain one.
    devpi(client, clientdir, "index", "-c", "root/allowed", "type=constrained", "bases=root/pypi")
    devpi(client, clientdir, "index", "root/allowed", f"constraints={PROJECT}>=1")
    return process, port


def start_devpi_server(venv: Path, workdir: Path, upstream: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    serverdir = workdir / "ds"
    subprocess.run(
        [str(venv / "bin" / "devpi-init"), "--serverdir", str(serverdir), "--no-root-pypi"]
        + ["--root-passwd", "root"],
        check=True,
        capture_output=True,
    )
    command = [str(venv / "bin" / "devpi-server"), "--serverdir", str(serverdir)]
    process = spawn(command + ["--host", "127.0.0.1", "--port", str(port)], workdir / "ds.log")
    wait_for(port, "/+api", workdir / "ds.log")
    client, clientdir = venv / "bin" / "devpi", workdir / "ds-client"
    devpi(client, clientdir, "use", f"http://127.0.0.1:{port}")
    devpi(client, clientdir, "login", "root", "--password", "root")
    devpi(client, clientdir, "index", "-c", "root/pypi", "type=mirror", f"mirror_url={upstream}")
    devpi(client, clientdir, "index", "-c", "root/plain", "bases=root/pypi")
    return process, port


def versions_on(port: int, index: str) -> list[str]:
    status, body = get(port, f"/{index}/+simple/{PROJECT}/")
    assert status == 200, (index, status, body[:200])
    # From the files: devpi-server gives no PEP 700 "versions" (api-version 1.0).
    return sorted({f["filename"].split("-")[1] for f in json.loads(body)["files"]})


def wrk(port: int, path: str, clients: int, seconds: int) -> float:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "-H", f"Accept: {PIP_ACCEPT}"]
        + [f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if re.search(r"Non-2xx|Socket errors", out):
        raise SystemExit(f"wrk saw errors on {path}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devpi-tx-venv", type=Path, default=Path(sys.prefix))
    parser.add_argument("--peers-venv", type=Path, default=Path("/work/peers-venv"))
    parser.add_argument("--versions", type=int, default=40)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    constraint = f"{PROJECT}<{args.versions // 2 + 1}"
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            upstream_process, upstream = start_upstream(workdir, args.versions)
            processes.append(upstream_process)
            tx_process, tx = start_devpi_tx(args.devpi_tx_venv, workdir, upstream, constraint)
            processes.append(tx_process)
            ds_process, ds = start_devpi_server(args.peers_venv, workdir, upstream)
            processes.append(ds_process)
            pages = {
                "devpi-tx root/pinned (constrained)": (tx, "root/pinned"),
                "devpi-tx root/allowed (constrained, all kept)": (tx, "root/allowed"),
                "devpi-tx root/plain": (tx, "root/plain"),
                "devpi-tx root/pypi": (tx, "root/pypi"),
                "devpi-server root/plain": (ds, "root/plain"),
                "devpi-server root/pypi": (ds, "root/pypi"),
            }
            shown = {}
            for name, (port, index) in pages.items():
                shown[name] = len(versions_on(port, index))
                print(f"{name}: {shown[name]} versions", flush=True)
            assert shown["devpi-tx root/pinned (constrained)"] == args.versions // 2, shown
            assert all(n == args.versions for k, n in shown.items() if "pinned" not in k), shown
            for port, index in pages.values():
                wrk(port, f"/{index}/+simple/{PROJECT}/", args.clients, 1)  # warm-up
            started = uptime()
            print(f"start: {started}", flush=True)
            rates: dict[str, list[float]] = {name: [] for name in pages}
            names = list(pages)
            for round_ in range(args.rounds):
                # A different page goes first in each round.
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    port, index = pages[name]
                    rate = wrk(port, f"/{index}/+simple/{PROJECT}/", args.clients, args.seconds)
                    rates[name].append(rate)
                    print(f"{name:36} {rate:9.0f} requests/s", flush=True)
            ended = uptime()
            print(f"end: {ended}", flush=True)
        finally:
            for process in reversed(processes):
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    pinned = medians["devpi-tx root/pinned (constrained)"]
    ratios = {
        "pinned / devpi-tx plain": pinned / medians["devpi-tx root/plain"],
        "allowed / devpi-tx plain": (
            medians["devpi-tx root/allowed (constrained, all kept)"] / medians["devpi-tx root/plain"]
        ),
        "pinned / devpi-server plain": pinned / medians["devpi-server root/plain"],
        "pinned / devpi-server root/pypi": pinned / medians["devpi-server root/pypi"],
    }
    print("| page | versions shown | requests/s (median) | runs |")
    print("|---|---:|---:|---|")
    for name, median in medians.items():
        runs = ", ".join(f"{r:.0f}" for r in rates[name])
        print(f"| {name} | {shown[name]} | {median:.0f} | {runs} |")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")
    if args.out:
        result = {
            "benchmark": "index-types",
            "project": PROJECT,
            "versions": args.versions,
            "constraint": constraint,
            "clients": args.clients,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "uptime_start": started,
            "uptime_end": ended,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "versions_shown": shown,
            "rates": rates,
            "medians": medians,
            "ratios": ratios,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

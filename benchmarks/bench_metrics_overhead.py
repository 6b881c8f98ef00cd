#!/usr/bin/env python3
"""
What counting requests for /+metrics costs: the rate of a warm simple page
of a private index with metrics on (the default) and off (--no-metrics).

Starts devpi-tx (``twistd -n devpi``, offline, no access log) on a free
loopback port with a fresh server directory, creates user ``bench``, index
``bench/dev`` (no bases) and uploads one sdist; then alternates ``wrk -t1
-cN`` runs on ``/bench/dev/+simple/pkg/`` (pip's ``Accept`` header) between
a server with metrics and one without, ``--rounds`` times each, and prints
each run and the ratio of the medians.  Hand-run only::

    /work/venv/bin/python benchmarks/bench_metrics_overhead.py --devpi-tx-venv /work/venv

Everything binds to 127.0.0.1; the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
AUTH = {"Authorization": "Basic " + base64.b64encode(b"bench:benchpw").decode()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(venv: Path, workdir: Path, name: str, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [str(venv / "bin" / "twistd"), "-n", "--pidfile=", "devpi", "--serverdir", str(workdir / name)]
    command += ["--port", str(port), "--offline-mode", "--access-log", "off", *extra]
    log = open(workdir / f"{name}.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/+api")
            return process, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{name} did not start; see {workdir / name}.log")


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


def prepare(port: int) -> None:
    assert request(port, "PUT", "/bench", json.dumps({"password": "benchpw"}).encode())[0] == 201
    status, _ = request(port, "PUT", "/bench/dev", json.dumps({"bases": ""}).encode(), AUTH)
    assert status == 200, status
    boundary = uuid.uuid4().hex
    fields = {":action": "file_upload", "name": "pkg", "version": "1.0", "protocol_version": "1"}
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="pkg-1.0.tar.gz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + b"x" * 1000
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    headers = dict(AUTH, **{"Content-Type": f"multipart/form-data; boundary={boundary}"})
    status, body = request(port, "POST", "/bench/dev/", b"".join(parts), headers)
    assert status == 200, (status, body)
    status, _ = request(port, "GET", "/bench/dev/+simple/pkg/", headers={"Accept": PIP_ACCEPT})
    assert status == 200, status


def cpu_seconds(pid: int) -> float:
    """
    User and system CPU time of a process so far (Linux).
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, clients: int, seconds: int, pid: int | None = None) -> tuple[float, float]:
    """
    Requests per second, and the server's CPU microseconds per request
    (less sensitive than the rate to other work on the machine).
    """
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "-H", f"Accept: {PIP_ACCEPT}"]
        + [f"http://127.0.0.1:{port}/bench/dev/+simple/pkg/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_seconds(pid) - before if pid else 0.0
    if re.search(r"Non-2xx", out):
        raise SystemExit(f"wrk saw errors:\n{out}")
    count = int(re.search(r"([0-9]+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)), used / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devpi-tx-venv", type=Path, default=Path(sys.prefix))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        servers = {
            "on": start(args.devpi_tx_venv, workdir, "on"),
            "off": start(args.devpi_tx_venv, workdir, "off", "--no-metrics"),
        }
        try:
            for _, port in servers.values():
                prepare(port)
                wrk(port, args.clients, 2)  # warm-up
            rates: dict[str, list[float]] = {"on": [], "off": []}
            costs: dict[str, list[float]] = {"on": [], "off": []}
            for round_ in range(args.rounds):
                # Each goes first in every other round: the first of a pair fares worse.
                for name in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                    process, port = servers[name]
                    rate, cost = wrk(port, args.clients, args.seconds, process.pid)
                    rates[name].append(rate)
                    costs[name].append(cost)
                    print(f"metrics {name:3}: {rate:8.0f} requests/s, {cost:6.1f} CPU us/request", flush=True)
            status, body = request(servers["on"][1], "GET", "/+metrics")
            assert status == 200 and b"devpi_http_requests_total" in body
            on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
            paired = statistics.median(a / b for a, b in zip(rates["on"], rates["off"], strict=True))
            print(
                f"rate, median: on {on:.0f}/s, off {off:.0f}/s, on/off {on / off:.3f} (of pairs {paired:.3f})"
            )
            on, off = statistics.median(costs["on"]), statistics.median(costs["off"])
            print(f"CPU per request, median: on {on:.1f} us, off {off:.1f} us, on/off {on / off:.3f}")
        finally:
            for process, _ in servers.values():
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""
Scale-out (issue 19, Targets): devpi-tx nodes on a PostgreSQL state and an
S3-compatible file store, against one node on the embedded default
(SQLite and local files), in one run.

Starts a throwaway PostgreSQL cluster and moto's S3 server
(``tests/scaleout.py``), the fake upstream (``tests.upstream_server``),
one devpi-tx node on SQLite (``S``) and two on one PostgreSQL database and
one bucket (``A`` and ``B``: ``devpi-tx init --storage ... --files ...``
once, then ``twistd -n devpi --storage ... --files ... --secretfile``
with a server directory each), all on loopback, no access log.  On each
state: user ``bench`` with index ``bench/dev`` (bases root/pypi), one
wheel of ``bench-warm`` uploaded.  Then:

1. **warm pages**: ``wrk -t1 -c64`` on ``/bench/dev/+simple/bench-warm/``
   of S and of A, in turn, ``--rounds`` times (pages come from memory
   either way): A / S, target at least 0.8;
2. **uploads**: ``--uploads`` tiny wheels one after another on one
   keep-alive connection (``X-Devpi-Auth`` token), to S and to A, in
   turn: the rates' ratio A / S, target at least 0.5;
3. **visibility across nodes**: ``--visible`` uploads to A, each followed
   by polling B's simple page of that project every ``--poll-ms`` until
   it lists the file: p50 and max from A's 200, target p50 under 20 ms;
4. **two nodes**: ``wrk -c64`` on A alone, then ``wrk -c32`` on A and
   ``wrk -c32`` on B at once (the sum): target at least 1.5x;
5. **a 50 MB file**: uploaded to S (local store) and to A (S3 store),
   then fetched ``--big-gets`` times whole from each, in turn: the rates'
   ratio, target at least 0.5.  moto is not S3: it keeps objects in its
   own process's memory, in Python.

Hand-run only::

    /work/venv/bin/python benchmarks/bench_scaleout.py --out benchmarks/results/scaleout.json

The machine has 2 cores shared by every process here (PostgreSQL, moto,
the nodes, wrk and this client): the figures say what one machine gives,
not what more cores would.  Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

from bench_index_types import wrk  # noqa: E402
from bench_upload_rate import upload_body, wheel_bytes  # noqa: E402

from tests.scaleout import free_port, start_postgres, start_s3  # noqa: E402

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
JSON = "application/json"
STAGE = "bench/dev"
PASSWORD = "bench-password"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class Node:
    """
    One devpi-tx process.
    """

    def __init__(self, name: str, workdir: Path, upstream: str, extra: list[str]) -> None:
        self.name = name
        self.serverdir = workdir / name
        self.port = free_port()
        self.log = workdir / f"{name}.log"
        self.extra = extra
        self.upstream = upstream
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "twisted", "devpi", "--serverdir", str(self.serverdir)]
        command += [
            "--port",
            str(self.port),
            "--mirror-url",
            self.upstream,
            "--access-log",
            "off",
            *self.extra,
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.process = subprocess.Popen(
            command, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"node {self.name} exited; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                if call(self.port, "GET", "/+api")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"node {self.name} did not answer; see {self.log}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def call(port: int, method: str, path: str, body=None, headers=None, timeout: float = 120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", JSON)
    headers.setdefault("Accept", JSON)
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def setup(node: Node, shared_state_done: bool) -> dict[str, str]:
    """
    User bench (if the state is new), its index, a login token.
    """
    if not shared_state_done:
        status, data = call(node.port, "PUT", "/bench", {"password": PASSWORD})
        assert status == 201, (status, data)
    status, data = call(node.port, "POST", "/+login", {"user": "bench", "password": PASSWORD})
    assert status == 200, (status, data)
    token = json.loads(data)["result"]["password"]
    auth = {"X-Devpi-Auth": base64.b64encode(f"bench:{token}".encode()).decode()}
    if not shared_state_done:
        status, data = call(node.port, "PUT", f"/{STAGE}", {"bases": ["root/pypi"]}, auth)
        assert status == 200, (status, data)
    return auth


class Uploader:
    def __init__(self, port: int, auth: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.auth = auth

    def upload(self, project: str, version: str, payload: bytes = b"x" * 64) -> None:
        body, ctype = upload_body(project, version, wheel_bytes(project, version, payload))
        self.conn.request("POST", f"/{STAGE}/", body=body, headers={"Content-Type": ctype, **self.auth})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"upload {project} {version}: {response.status} {data[:300]!r}")


def upload_rate(port: int, auth: dict[str, str], prefix: str, count: int) -> float:
    uploader = Uploader(port, auth)
    started = time.perf_counter()
    for n in range(count):
        uploader.upload(f"{prefix}-{n % 20}", f"1.{n}")
    return count / (time.perf_counter() - started)


def visibility(a: Node, b: Node, auth: dict[str, str], count: int, poll: float) -> list[float]:
    uploader = Uploader(a.port, auth)
    poller = http.client.HTTPConnection("127.0.0.1", b.port, timeout=60)
    lags = []
    for n in range(count):
        project = f"seen-{n}"
        uploader.upload(project, "1.0")
        done = time.perf_counter()
        filename = f"seen_{n}-1.0-py3-none-any.whl"
        while True:
            poller.request("GET", f"/{STAGE}/+simple/{project}/", headers={"Accept": PIP_ACCEPT})
            response = poller.getresponse()
            body = response.read()
            if response.status == 200 and filename.encode() in body:
                break
            if time.perf_counter() - done > 10:
                raise RuntimeError(f"{project} not visible on B after 10 s")
            time.sleep(poll)
        lags.append((time.perf_counter() - done) * 1000)
    return lags


def two_nodes(a: Node, b: Node, path: str, clients: int, seconds: int) -> tuple[float, float]:
    one = wrk(a.port, path, clients, seconds)
    rates: list[float] = []

    def run(port: int) -> None:
        rates.append(wrk(port, path, clients // 2, seconds))

    threads = [threading.Thread(target=run, args=(node.port,)) for node in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return one, sum(rates)


def big_file_rate(port: int, auth: dict[str, str], project: str, size: int, gets: int) -> float:
    payload = os.urandom(size)
    body, ctype = upload_body(project, "1.0", wheel_bytes(project, "1.0", payload))
    status, data = call(port, "POST", f"/{STAGE}/", body, {"Content-Type": ctype, **auth}, timeout=600)
    assert status == 200, (status, data[:300])
    status, page = call(port, "GET", f"/{STAGE}/+simple/{project}/", headers={"Accept": "text/html"})
    href = re.search(rb'href="([^"#]+)', page).group(1).decode()
    path = "/" + href.split("://", 1)[-1].split("/", 1)[1] if "://" in href else None
    if path is None:
        path = os.path.normpath(f"/{STAGE}/+simple/{project}/{href}")
    started = time.perf_counter()
    total = 0
    for _ in range(gets):
        status, data = call(port, "GET", path, headers={"Accept": "*/*"}, timeout=600)
        assert status == 200, (status, path)
        total += len(data)
    return total / (time.perf_counter() - started) / 1e6


def store_floor(s3, bucket: str, gets: int) -> float:
    """
    The largest object in the bucket fetched straight from the store (a
    presigned GET, no devpi in between): the floor the relay can reach.
    """
    client = s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    objects = [item for page in pages for item in page.get("Contents", [])]
    largest = max(objects, key=lambda item: item["Size"])
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": largest["Key"]})
    parts = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    total = 0
    for _ in range(gets):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        data = response.read()
        conn.close()
        assert response.status == 200, response.status
        total += len(data)
    return total / (time.perf_counter() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--visible", type=int, default=50)
    parser.add_argument("--poll-ms", type=float, default=1.0)
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--big-gets", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    cluster = start_postgres()
    s3 = start_s3()
    nodes: list[Node] = []
    upstream_process = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            dsn = cluster.create_database()
            bucket = s3.create_bucket()
            env = {**s3.env, "AWS_ENDPOINT_URL": s3.endpoint}
            os.environ.update(env)
            portfile = workdir / "upstream.port"
            upstream_process = subprocess.Popen(
                [sys.executable, "-m", "tests.upstream_server", str(portfile), "upstream-pkg:1.0"],
                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            while not portfile.exists() or not portfile.read_text():
                time.sleep(0.1)
            upstream = f"http://127.0.0.1:{portfile.read_text()}/simple/"
            secret = workdir / "secret"
            secret.write_bytes(base64.b64encode(os.urandom(32)))
            secret.chmod(0o600)
            shared = ["--storage", dsn, "--files", f"s3://{bucket}/files", "--secretfile", str(secret)]
            single = Node("S", workdir, upstream, [])
            pg_only = Node("P", workdir, upstream, ["--storage", cluster.create_database()])
            a = Node("A", workdir, upstream, shared)
            b = Node("B", workdir, upstream, shared)
            nodes = [single, pg_only, a, b]
            subprocess.run(
                [sys.executable, "-m", "devpi_tx.cli.main", "init", "--serverdir", str(a.serverdir)]
                + ["--mirror-url", upstream, *shared],
                check=True,
                env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
            )
            for node in nodes:
                node.start()
            auth_s = setup(single, False)
            auth_p = setup(pg_only, False)
            auth_a = setup(a, False)
            setup(b, True)
            for port, auth in ((single.port, auth_s), (pg_only.port, auth_p), (a.port, auth_a)):
                Uploader(port, auth).upload("bench-warm", "1.0")
            path = f"/{STAGE}/+simple/bench-warm/"
            for node in nodes:
                wrk(node.port, path, args.clients, 1)  # warm-up
            started = uptime()
            print(f"start: {started}", flush=True)
            pages: dict[str, list[float]] = {"S": [], "P": []}
            uploads: dict[str, list[float]] = {"S": [], "P": [], "A": []}
            turns = [("S", single, auth_s), ("P", pg_only, auth_p), ("A", a, auth_a)]
            for round_ in range(args.rounds):
                for name, node, auth in turns[round_ % 3 :] + turns[: round_ % 3]:
                    if name in pages:
                        pages[name].append(wrk(node.port, path, args.clients, args.seconds))
                    uploads[name].append(upload_rate(node.port, auth, f"up-{round_}", args.uploads))
                    page = f"page {pages[name][-1]:.0f}/s, " if name in pages else ""
                    print(f"round {round_} {name}: {page}uploads {uploads[name][-1]:.0f}/s", flush=True)
            lags = visibility(a, b, auth_a, args.visible, args.poll_ms / 1000)
            print(f"visible on B: p50 {statistics.median(lags):.1f} ms, max {max(lags):.1f} ms", flush=True)
            one, both = two_nodes(a, b, path, args.clients, args.seconds)
            print(f"one node {one:.0f}/s, two nodes {both:.0f}/s", flush=True)
            big_local = big_file_rate(single.port, auth_s, "big-local", args.big_mb << 20, args.big_gets)
            big_s3 = big_file_rate(a.port, auth_a, "big-s3", args.big_mb << 20, args.big_gets)
            big_floor = store_floor(s3, bucket, args.big_gets)
            print(
                f"{args.big_mb} MB file: local {big_local:.0f} MB/s, S3 through the node {big_s3:.0f} MB/s, "
                f"straight from the store {big_floor:.0f} MB/s",
                flush=True,
            )
            ended = uptime()
            print(f"end: {ended}", flush=True)
    finally:
        for node in nodes:
            node.stop()
        if upstream_process is not None:
            os.killpg(upstream_process.pid, signal.SIGTERM)
        s3.stop()
        cluster.stop("immediate")
    medians = {f"page {name}": statistics.median(rates) for name, rates in pages.items()}
    medians.update({f"uploads {name}": statistics.median(rates) for name, rates in uploads.items()})
    ratios = {
        "warm page PostgreSQL / SQLite (target >= 0.8)": medians["page P"] / medians["page S"],
        "uploads PostgreSQL / SQLite (target >= 0.5)": medians["uploads P"] / medians["uploads S"],
        "uploads PostgreSQL and S3 / SQLite and local": medians["uploads A"] / medians["uploads S"],
        "visible on B p50 ms (target < 20)": statistics.median(lags),
        "two nodes / one node at 64 clients (target >= 1.5)": both / one,
        "50 MB file S3 / local (target >= 0.5)": big_s3 / big_local,
        "50 MB file S3 through the node / straight from the store": big_s3 / big_floor,
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "benchmark": "scale-out",
                    "uptime_start": started,
                    "uptime_end": ended,
                    "machine": platform.platform(),
                    "cpus": os.cpu_count(),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "pages": pages,
                    "uploads": uploads,
                    "visible_ms": lags,
                    "one_node": one,
                    "two_nodes": both,
                    "big_mb_per_s": {"local": big_local, "s3": big_s3, "store_direct": big_floor},
                    "medians": medians,
                    "ratios": ratios,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

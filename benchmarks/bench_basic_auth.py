#!/usr/bin/env python3
"""
Requests with HTTP Basic auth, as twine sends them: devpi-tx against
devpi-server, side by side in one run.

twine puts ``Authorization: Basic base64(user:password)`` on every request
and the server checks the password each time.  devpi-server verifies the
argon2 hash on every such request; devpi-tx remembers a verified credential
for a few minutes.  This script measures what that means for throughput.

It starts both servers on free loopback ports with fresh server directories,
creates user ``bench`` (password ``benchpw``) and index ``bench/dev`` on each,
checks that a wrong password is refused and the right one accepted, then for
each request kind and concurrency runs a fixed-duration load (devpi-tx first,
then devpi-server) and prints a markdown table.

Request kinds:

``GET /+api``
    the server must verify the credentials to fill in ``authstatus``; every
    response is checked for ``authstatus == ["ok", "bench", ...]``.
``PATCH /bench/dev``
    body ``["title=bench-<n>"]`` (devpi-client's list form) with a new title
    on every request, so each one is an authorised write; every response is
    checked for the new title.

Hand-run only (not part of the test suite)::

    /work/venv/bin/python benchmarks/bench_basic_auth.py \\
        --devpi-tx-venv /work/venv --peers-venv /work/peers-venv

Everything binds to 127.0.0.1.  Loops are bounded in time and count; the
servers are stopped (SIGTERM to their process group, then SIGKILL) on exit,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Upstream of devpi-tx's root/pypi: a loopback port nobody listens on.
UNREACHABLE_MIRROR = "http://127.0.0.1:9/simple/"

USER = "bench"
PASSWORD = "benchpw"
INDEX = "dev"

#: Hard limits, whatever the command line says.
MAX_DURATION_S = 300.0
MAX_REQUESTS_PER_RUN = 2_000_000
REQUEST_TIMEOUT_S = 120.0
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra_pythonpath: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVPISERVER_")}
    env["PYTHONUNBUFFERED"] = "1"
    if extra_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_pythonpath, env.get("PYTHONPATH")) if p)
    return env


def http_call(
    port: int,
    method: str,
    path: str,
    *,
    body: object = None,
    auth: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, object]:
    """
    One request on a fresh connection; returns (status, decoded JSON or raw text).
    """
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if auth:
        headers["Authorization"] = auth
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode("utf-8", "replace")


# ---------------------------------------------------------------- servers


class Server:
    """
    A server under test, in its own process group, logging to a file.
    """

    name = "?"
    #: Seconds between the /+api polls of L{start}.
    poll_interval = 0.2

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.serverdir = workdir / "serverdir"
        self.port = free_port()
        self.logfile = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        pass

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return clean_env()

    def version(self) -> str:
        return "?"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.init()
        with open(self.logfile, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                env=self.env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.logfile}:\n" + self.log_tail()
                )
            try:
                status, _ = http_call(self.port, "GET", "/+api", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(self.poll_interval)
        raise TimeoutError(f"{self.name} did not answer /+api in {START_TIMEOUT_S:.0f}s")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """
        SIGTERM the process group we started, then SIGKILL it.
        """
        proc = self.proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        try:
            # Also reaps children left in the group after the leader exited.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.name} (pid {proc.pid}) did not die", file=sys.stderr)
        self.proc = None

    def setup(self) -> None:
        """
        Create user bench and index bench/dev through the HTTP API.
        """
        status, body = http_call(self.port, "PUT", f"/{USER}", body={"password": PASSWORD})
        if status != 201:
            raise RuntimeError(f"{self.name}: creating user {USER} gave {status}: {body}")
        status, body = http_call(
            self.port,
            "PUT",
            f"/{USER}/{INDEX}",
            body={"type": "stage", "bases": [], "volatile": True},
            auth=basic(USER, PASSWORD),
            timeout=60,
        )
        if status not in (200, 201):
            raise RuntimeError(f"{self.name}: creating index {USER}/{INDEX} gave {status}: {body}")


class DevpiTx(Server):
    name = "devpi-tx"

    def __init__(self, workdir: Path, venv: Path) -> None:
        super().__init__(workdir)
        self.venv = venv

    def command(self) -> list[str]:
        return [
            str(self.venv / "bin" / "twistd"),
            "-n",
            "--pidfile=",
            "devpi",
            "--serverdir",
            str(self.serverdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--mirror-url",
            UNREACHABLE_MIRROR,
        ]

    def env(self) -> dict[str, str]:
        # The repository first, so this checkout's twistd plugin is used.
        return clean_env(str(REPO_ROOT))

    def version(self) -> str:
        out = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", "import devpi_tx; print(devpi_tx.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
        )
        return out.stdout.strip() or "?"


class DevpiServer(Server):
    name = "devpi-server"

    def __init__(self, workdir: Path, venv: Path) -> None:
        super().__init__(workdir)
        self.venv = venv

    def init(self) -> None:
        subprocess.run(
            [str(self.venv / "bin" / "devpi-init"), "--serverdir", str(self.serverdir), "--no-root-pypi"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
            env=self.env(),
            cwd=str(self.workdir),
        )

    def command(self) -> list[str]:
        return [
            str(self.venv / "bin" / "devpi-server"),
            "--serverdir",
            str(self.serverdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def version(self) -> str:
        out = subprocess.run(
            [str(self.venv / "bin" / "devpi-server"), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.env(),
        )
        return out.stdout.strip() or "?"


# ---------------------------------------------------------------- workload


class Kind:
    """
    One kind of authenticated request; C{check} raises on a wrong answer.
    """

    label = "?"

    def __init__(self) -> None:
        self._seq = itertools.count()

    def request(self) -> tuple[str, str, bytes | None, object]:
        """
        Return (method, path, body, expected) for the next request.
        """
        raise NotImplementedError

    def check(self, status: int, raw: bytes, expected: object) -> None:
        raise NotImplementedError


class ApiKind(Kind):
    label = "GET /+api"

    def request(self):
        return "GET", "/+api", None, None

    def check(self, status, raw, expected):
        if status != 200:
            raise ValueError(f"status {status}")
        authstatus = json.loads(raw)["result"]["authstatus"]
        if authstatus[:2] != ["ok", USER]:
            raise ValueError(f"authstatus {authstatus!r}")


class PatchKind(Kind):
    label = f"PATCH /{USER}/{INDEX}"

    def request(self):
        title = f"bench-{next(self._seq)}"
        return "PATCH", f"/{USER}/{INDEX}", json.dumps([f"title={title}"]).encode(), title

    def check(self, status, raw, expected):
        if status != 200:
            raise ValueError(f"status {status}: {raw[:200]!r}")
        title = json.loads(raw)["result"].get("title")
        if title != expected:
            raise ValueError(f"title {title!r}, expected {expected!r}")


KINDS = {"api": ApiKind, "patch": PatchKind}


def preflight(server: Server) -> None:
    """
    The right password is accepted and a wrong one refused, on both request
    kinds, so the load below really goes through the password check.
    """
    good, bad = basic(USER, PASSWORD), basic(USER, PASSWORD + "-wrong")
    status, body = http_call(server.port, "GET", "/+api", auth=good, timeout=60)
    if status != 200 or body["result"]["authstatus"][:2] != ["ok", USER]:
        raise RuntimeError(f"{server.name}: right password not accepted on /+api: {status} {body}")
    status, body = http_call(server.port, "GET", "/+api", auth=bad, timeout=60)
    if status == 200 and body["result"]["authstatus"][0] == "ok":
        raise RuntimeError(f"{server.name}: wrong password accepted on /+api: {body}")
    status, body = http_call(
        server.port, "PATCH", f"/{USER}/{INDEX}", body=["title=wrong-pw"], auth=bad, timeout=60
    )
    if status not in (401, 403):
        raise RuntimeError(f"{server.name}: PATCH with a wrong password gave {status}: {body}")
    status, body = http_call(
        server.port, "PATCH", f"/{USER}/{INDEX}", body=["title=preflight"], auth=good, timeout=60
    )
    if status != 200 or body["result"].get("title") != "preflight":
        raise RuntimeError(f"{server.name}: PATCH with the right password gave {status}: {body}")


def load(server: Server, kind: Kind, concurrency: int, duration: float, max_requests: int) -> dict:
    """
    C{concurrency} threads, each on its own keep-alive connection, send
    requests until C{duration} seconds have passed (no new request starts
    after that) or C{max_requests} were started in all.
    """
    auth = basic(USER, PASSWORD)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    started = itertools.count()
    barrier = threading.Barrier(concurrency + 1)
    t_start = [0.0]

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
        mine: list[float] = []
        my_errors: list[str] = []
        barrier.wait()
        deadline = t_start[0] + duration
        try:
            while time.perf_counter() < deadline and next(started) < max_requests:
                method, path, body, expected = kind.request()
                headers = {"Accept": "application/json", "Authorization": auth}
                if body is not None:
                    headers["Content-Type"] = "application/json"
                t0 = time.perf_counter()
                try:
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    raw = resp.read()
                    mine.append(time.perf_counter() - t0)
                    kind.check(resp.status, raw, expected)
                except (OSError, http.client.HTTPException) as e:
                    my_errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
                except (ValueError, KeyError, TypeError) as e:
                    my_errors.append(f"bad answer: {e}")
                if len(my_errors) > 100:
                    break
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                errors.extend(my_errors)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    t_start[0] = time.perf_counter()
    barrier.wait()
    for t in threads:
        # Bounded: each thread stops starting requests at the deadline and
        # every request has a timeout.
        t.join(duration + REQUEST_TIMEOUT_S + 10)
    elapsed = time.perf_counter() - t_start[0]
    latencies.sort()
    ok = len(latencies) - sum(1 for e in errors if e.startswith("bad answer"))

    def pct(p: float) -> float | None:
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "ok": ok,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "elapsed_s": round(elapsed, 3),
        "rate": ok / elapsed if elapsed else 0.0,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


# ---------------------------------------------------------------- report


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


def fmt_rate(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def table(rows: list[dict]) -> str:
    out = [
        "| request | c | devpi-tx req/s | devpi-tx p50 / p99 ms | devpi-server req/s "
        "| devpi-server p50 / p99 ms | devpi-tx / devpi-server |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        tx, ds = row["devpi-tx"], row["devpi-server"]
        ratio = f"{tx['rate'] / ds['rate']:.0f}x" if ds["rate"] else "inf"

        def cell(r: dict) -> str:
            s = f"{fmt_rate(r['rate'])} ({r['ok']} ok"
            if r["errors"]:
                s += f", {r['errors']} errors"
            return s + ")"

        out.append(
            f"| {row['kind']} | {row['concurrency']} | {cell(tx)} | "
            f"{fmt_ms(tx['p50_ms'])} / {fmt_ms(tx['p99_ms'])} | {cell(ds)} | "
            f"{fmt_ms(ds['p50_ms'])} / {fmt_ms(ds['p99_ms'])} | {ratio} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------- main


def default_tx_venv() -> str:
    if os.environ.get("DEVPI_TX_VENV"):
        return os.environ["DEVPI_TX_VENV"]
    here = Path(sys.prefix)
    if (here / "bin" / "twistd").exists():
        return str(here)
    return "/work/venv"


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--devpi-tx-venv",
        default=default_tx_venv(),
        help="venv with devpi-tx installed (default: $DEVPI_TX_VENV, this interpreter's venv "
        "if it has twistd, else /work/venv)",
    )
    ap.add_argument(
        "--peers-venv",
        default=os.environ.get("BENCH_PEERS_VENV") or "/work/peers-venv",
        help="venv with devpi-server (default: $BENCH_PEERS_VENV or /work/peers-venv)",
    )
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    ap.add_argument("--concurrency", default="1,8", help="comma list of client counts (default 1,8)")
    ap.add_argument("--kinds", default="api,patch", help=f"comma list of {sorted(KINDS)} (default both)")
    ap.add_argument("--max-requests", type=int, default=500_000, help="cap on requests per measurement")
    ap.add_argument("--workdir", help="scratch dir (default: a new temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (server dirs, logs)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    duration = min(max(args.duration, 0.5), MAX_DURATION_S)
    max_requests = min(max(args.max_requests, 1), MAX_REQUESTS_PER_RUN)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not concurrencies or min(concurrencies) < 1 or max(concurrencies) > 256:
        ap.error("--concurrency: values between 1 and 256")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"--kinds: unknown {k!r}")
    tx_venv, peers_venv = Path(args.devpi_tx_venv), Path(args.peers_venv)
    if not (tx_venv / "bin" / "twistd").exists():
        ap.error(f"no twistd in {tx_venv}/bin (use --devpi-tx-venv)")
    if not (peers_venv / "bin" / "devpi-server").exists():
        ap.error(f"no devpi-server in {peers_venv}/bin (use --peers-venv)")

    signal.signal(signal.SIGTERM, _sigterm)
    if args.workdir:
        workdir = Path(args.workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="bench-basic-auth-", dir=workdir))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-basic-auth-"))
    servers: list[Server] = [
        DevpiTx(workdir / "devpi-tx", tx_venv),
        DevpiServer(workdir / "devpi-server", peers_venv),
    ]
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "duration_s": duration,
        "versions": {},
        "rows": [],
    }
    failed = False
    try:
        for server in servers:
            t0 = time.perf_counter()
            print(f"starting {server.name} on 127.0.0.1:{server.port} ...", flush=True)
            server.start()
            server.setup()
            preflight(server)
            results["versions"][server.name] = server.version()
            print(
                f"  {server.name} {results['versions'][server.name]} ready, user and index "
                f"created, password checks ok ({time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
        for k in kinds:
            for c in concurrencies:
                row = {"kind": KINDS[k].label, "concurrency": c}
                for server in servers:
                    kind = KINDS[k]()
                    print(f"{server.name}: {kind.label}, c={c}, {duration:g}s ...", flush=True)
                    res = load(server, kind, c, duration, max_requests)
                    row[server.name] = res
                    print(
                        f"  {fmt_rate(res['rate'])} req/s, p50 {fmt_ms(res['p50_ms'])} ms, "
                        f"p99 {fmt_ms(res['p99_ms'])} ms, {res['ok']} ok, {res['errors']} errors",
                        flush=True,
                    )
                    for sample in res["error_samples"]:
                        print(f"    error: {sample}", flush=True)
                    if res["errors"] or not res["ok"]:
                        failed = True
                results["rows"].append(row)
    except KeyboardInterrupt:
        print("interrupted; stopping servers", file=sys.stderr)
        failed = True
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        for server in servers:
            if server.proc is not None:
                print(f"--- last lines of {server.logfile}:\n{server.log_tail()}", file=sys.stderr)
        failed = True
    finally:
        for server in servers:
            server.stop()
        if args.keep or failed:
            print(f"scratch dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if results["rows"]:
        m = results["machine"]
        print()
        print(
            f"{results['date']}, {m['cpus']} CPUs, Python {m['python']}, "
            f"devpi-tx {results['versions'].get('devpi-tx')}, "
            f"devpi-server {results['versions'].get('devpi-server')}, {duration:g} s per cell, "
            f"load average {m['loadavg_start'][0]} -> {m['loadavg_end'][0]}"
        )
        print()
        print(table(results["rows"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""
Does the upload rate of devpi-tx stay constant as one project accumulates
versions?  1,000 tiny wheels of one project, uploaded one after another.

It starts devpi-tx (``twistd -n devpi``) on a free loopback port with a fresh
server directory (as ``bench_basic_auth.py`` does), creates user ``bench``
(password ``benchpw``) and index ``bench/dev``, then uploads ``--count``
wheels of project ``hosted-many`` (versions ``1.0`` .. ``1.999``, each with a
64-byte payload, like scenario 7 of the pypi-bench harness) sequentially,
twine-style (multipart/form-data ``:action=file_upload`` with HTTP Basic auth
on every request) over one keep-alive connection (stdlib ``http.client``).
Every upload must answer 200/201.

It prints the rate of each hundred (uploads/s over the wall time of that
hundred) and the ratio last hundred / first hundred.  The request bodies are
built before the clock starts, so the figures are the server's (plus
http.client's) time.

``--wrk-at 478,1000`` additionally pauses the uploads when that many versions
are in and runs ``wrk -t1 -c1`` and ``-c64`` (``--wrk-duration`` s each, pip's
``Accept`` header, as the harness does) on the project's simple page; the
pauses are not counted in the upload rates.  Peak RSS of the server process
is sampled every 0.2 s.

Hand-run only::

    /work/venv/bin/python benchmarks/bench_upload_rate.py --devpi-tx-venv /work/venv

Everything binds to 127.0.0.1; the server is stopped (SIGTERM to its process
group, then SIGKILL) at the end, on an error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

from bench_basic_auth import INDEX, PASSWORD, USER, DevpiTx, basic, default_tx_venv

PROJECT = "hosted-many"
PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)
MAX_COUNT = 10_000
REQUEST_TIMEOUT_S = 120.0
#: No upload starts after this many seconds (the run is bounded whatever happens).
BUDGET_S = 600.0


def wheel_bytes(project: str, version: str, payload: bytes) -> bytes:
    """
    A valid pure-Python wheel (the harness's layout: module, METADATA, WHEEL, RECORD).
    """
    mod = project.replace("-", "_")
    dist = f"{mod}-{version}.dist-info"
    files = {
        f"{mod}/__init__.py": f"__version__ = {version!r}\n".encode(),
        f"{mod}/payload.bin": payload,
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\nSummary: benchmark package\n"
        ).encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: bench-upload-rate\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def upload_body(project: str, version: str, content: bytes, filename: str | None = None) -> tuple[bytes, str]:
    """
    twine's multipart/form-data body for one wheel (named as pip names a
    pure-Python wheel unless C{filename} is given); returns (body, content type).
    """
    filename = filename or f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
    fields = {
        ":action": "file_upload",
        "protocol_version": "1",
        "metadata_version": "2.1",
        "name": project,
        "version": version,
        "filetype": "bdist_wheel",
        "pyversion": "py3",
        "sha256_digest": hashlib.sha256(content).hexdigest(),
        "md5_digest": hashlib.md5(content).hexdigest(),
    }
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
    )
    body = b"".join(parts) + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class RssPeak(threading.Thread):
    """
    Peak VmRSS of one process, sampled every 0.2 s.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop_ev = threading.Event()

    def sample(self) -> int:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def run(self) -> None:
        while not self.stop_ev.wait(0.2):
            self.peak = max(self.peak, self.sample())


def server_cpu_ms(pid: int) -> float:
    """
    CPU time of all threads of a process so far, in ms (from the
    scheduler's nanosecond counters, finer than the tick counts of
    /proc/<pid>/stat); 0.0 when it cannot be read.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        return 0.0
    return total / 1e6


def run_wrk(url: str, conns: int, duration: int) -> dict:
    cmd = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        "-H",
        f"Accept: {PIP_ACCEPT}",
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    res: dict = {"conns": conns}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    res["p50"] = m.group(1) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    return res


def sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def scratch_server(args, prefix: str, ap: argparse.ArgumentParser) -> tuple[Path, DevpiTx]:
    """
    The scratch directory (under C{--workdir} if given) and the devpi-tx
    of C{--devpi-tx-venv} to run in it; SIGTERM stops the run as Ctrl-C.
    """
    tx_venv = Path(args.devpi_tx_venv)
    if not (tx_venv / "bin" / "twistd").exists():
        ap.error(f"no twistd in {tx_venv}/bin (use --devpi-tx-venv)")
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    base = Path(args.workdir).resolve() if args.workdir else None
    if base:
        base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    return workdir, DevpiTx(workdir / "devpi-tx", tx_venv)


def machine() -> dict:
    """
    What the results were measured on.
    """
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


@contextlib.contextmanager
def guarded(server, workdir: Path, keep: bool = False) -> Iterator[dict]:
    """
    Run a benchmark against C{server} (started inside the block) and, on
    the way out whatever happened: report an error or an interrupt with
    the tail of the server's log (the yielded C{status["failed"]} is then
    set and the error not raised further), stop the server, and remove
    the scratch directory unless it is to be kept or the run failed.
    """
    status = {"failed": False}
    try:
        yield status
    except KeyboardInterrupt:
        print("interrupted; stopping the server", file=sys.stderr)
        status["failed"] = True
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"--- last lines of {server.logfile}:\n{server.log_tail()}", file=sys.stderr)
        status["failed"] = True
    finally:
        server.stop()
        if keep or status["failed"]:
            print(f"scratch dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devpi-tx-venv", default=default_tx_venv(), help="venv with devpi-tx (twistd)")
    ap.add_argument("--count", type=int, default=1000, help="versions to upload (default 1000)")
    ap.add_argument("--wrk-at", default="", help="version counts (comma list) at which to wrk the page")
    ap.add_argument("--wrk-duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--workdir", help="scratch dir (default: a new temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (server dir, log)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    count = args.count
    if not 100 <= count <= MAX_COUNT:
        ap.error(f"--count: between 100 and {MAX_COUNT}")
    wrk_at = sorted({int(x) for x in args.wrk_at.split(",") if x.strip()})
    if any(not 1 <= n <= count for n in wrk_at):
        ap.error("--wrk-at: counts between 1 and --count")
    if wrk_at and not shutil.which("wrk"):
        ap.error("--wrk-at needs wrk")
    workdir, server = scratch_server(args, "bench-upload-rate-", ap)

    versions = [f"1.{i}" for i in range(count)]
    bodies = [upload_body(PROJECT, v, wheel_bytes(PROJECT, v, os.urandom(64))) for v in versions]
    auth = basic(USER, PASSWORD)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "count": count,
        "hundreds": [],
        "wrk": {},
    }
    sampler = None
    conn = None
    with guarded(server, workdir, args.keep) as status:
        print(f"starting devpi-tx on 127.0.0.1:{server.port} ...", flush=True)
        server.start()
        server.setup()
        results["version"] = server.version()
        sampler = RssPeak(server.proc.pid)
        sampler.start()
        page = f"http://127.0.0.1:{server.port}/{USER}/{INDEX}/+simple/{PROJECT}/"
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT_S)
        deadline = time.perf_counter() + BUDGET_S
        latencies: list[float] = []
        chunk_start = time.perf_counter()
        chunk_cpu = server_cpu_ms(server.proc.pid)
        paused = 0.0
        for i, (body, ctype) in enumerate(bodies):
            if time.perf_counter() - paused > deadline:
                raise RuntimeError(f"time budget of {BUDGET_S:.0f}s exhausted after {i} uploads")
            t0 = time.perf_counter()
            conn.request(
                "POST",
                f"/{USER}/{INDEX}/",
                body=body,
                headers={"Content-Type": ctype, "Authorization": auth},
            )
            resp = conn.getresponse()
            raw = resp.read()
            latencies.append(time.perf_counter() - t0)
            if resp.status not in (200, 201):
                raise RuntimeError(f"upload {i} (1.{i}): HTTP {resp.status} {raw[:300]!r}")
            done = i + 1
            if done % 100 == 0 or done == count:
                wall = time.perf_counter() - chunk_start
                n = done - (len(results["hundreds"]) * 100)
                lat = sorted(latencies[-n:])
                cpu = server_cpu_ms(server.proc.pid)
                row = {
                    "upto": done,
                    "uploads": n,
                    "wall_s": round(wall, 3),
                    "rate": round(n / wall, 1),
                    "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
                    "max_ms": round(lat[-1] * 1000, 2),
                    # Server CPU per upload: the server's own work, without
                    # the waits for the disk and the machine's other load.
                    "server_cpu_ms_per_upload": round((cpu - chunk_cpu) / n, 3),
                }
                results["hundreds"].append(row)
                chunk_start = time.perf_counter()
                chunk_cpu = cpu
                print(
                    f"  {done - n + 1:5d}-{done:5d}: {row['rate']:7.1f} uploads/s "
                    f"(p50 {row['p50_ms']} ms, max {row['max_ms']} ms, "
                    f"server CPU {row['server_cpu_ms_per_upload']} ms/upload)",
                    flush=True,
                )
            if done in wrk_at:
                p0 = time.perf_counter()
                runs = [run_wrk(page, c, args.wrk_duration) for c in (1, 64)]
                results["wrk"][str(done)] = runs
                for r in runs:
                    print(
                        f"  page with {done} versions, wrk c={r['conns']}: {r['rps']} req/s, p50 {r['p50']}"
                        f"{', non-2xx ' + str(r['non2xx']) if r['non2xx'] else ''}"
                        f"{', ' + r['socket_errors'] if r['socket_errors'] else ''}",
                        flush=True,
                    )
                skipped = time.perf_counter() - p0
                paused += skipped
                chunk_start += skipped
                chunk_cpu = server_cpu_ms(server.proc.pid)
        first, last = results["hundreds"][0], results["hundreds"][-1]
        results["ratio_last_first"] = round(last["rate"] / first["rate"], 3)
        results["cpu_ratio_last_first"] = round(
            last["server_cpu_ms_per_upload"] / first["server_cpu_ms_per_upload"], 3
        )
        total = sum(latencies)
        results["overall_rate"] = round(count / total, 1)
        print(
            f"overall {results['overall_rate']} uploads/s; last/first hundred: "
            f"{last['rate']} / {first['rate']} = {results['ratio_last_first']}; "
            f"server CPU per upload last/first hundred: {results['cpu_ratio_last_first']}",
            flush=True,
        )
    if conn is not None:
        conn.close()
    if sampler is not None:
        sampler.stop_ev.set()
        results["rss_peak_mib"] = round(sampler.peak / 1048576, 1)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if "rss_peak_mib" in results:
        print(f"server peak RSS {results['rss_peak_mib']} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if status["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

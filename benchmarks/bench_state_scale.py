#!/usr/bin/env python3
"""
Costs that grow with the state (issue 15): uploads, a restart and the
pages of an index of 1k, 10k and 100k projects, side by side.

For each size N (``--sizes``, default 1000,10000,100000; ``--quick`` is
1000,10000) it starts a fresh devpi-tx (``twistd -n devpi``, as
``bench_basic_auth.py`` does) on a free loopback port, creates user
``bench`` and index ``bench/dev``, and builds the state through HTTP
uploads, twine-style (``bench_upload_rate.py``'s tiny wheels and form,
Basic auth on every request), from ``--clients`` (4) threads on keep-alive
connections:

* N projects ``scale-000000`` ..., one version ``1.0`` with one wheel each
  (the build rate is theirs);
* ``many-versions``: 4,000 versions (``1.0`` .. ``1.3999``), a wheel each;
* ``many-files``: one version ``1.0`` with 400 wheels (build tags 1..400);
* ``control``: one version ``1.0``.

Disk per upload is measured after the N projects (the server directory's
allocated and apparent bytes, and the database's pages as a reader sees
them, WAL included), and again after the big projects.  Then it stops the
server (stop time), starts it again with the state in place (start time:
until ``/+api`` answers, polled every 20 ms) and measures, from one client
on one keep-alive connection:

* project page ``/bench/dev/+simple/<p>/`` (pip's ``Accept``), version JSON
  ``/bench/dev/<p>/1.0`` and project JSON ``/bench/dev/<p>``
  (``Accept: application/json``) of the middle project: the first request
  after the restart, then p50/p99 of ``--requests`` (200) requests (no
  request of a series starts after 10 s);
  ``spread``: p50/p99 of ``--requests`` different projects, once each;
* root listing ``/bench/dev/+simple/`` and index JSON ``/bench/dev``: the
  first request, then p50/p99 of ``--requests``, and the size of the answer;
* ``many-versions``: its page, the JSON of version ``1.2000`` and its project
  JSON (first, p50, p99); then 20 times an upload of a new version followed
  by the page (the page's render after a change);
* ``many-files``: 20 uploads of a 401st.. file into its version ``1.0``,
  each paired with an upload of a new version of ``control`` (one client,
  in alternation, so both see the same machine): p50 latency and server CPU
  of each, and the changelog entry each wrote (read from the server's
  ``<serverdir>/.sqlite``, table ``changelog``, read-only; an entry is
  attributed by the version key it holds);
* upload phases: ``--clients`` threads upload ``--phase-uploads`` (800)
  new projects each phase while a probe client asks for an unrelated
  project page (the middle project's, pip's ``Accept``) every 5 ms: first
  undisturbed, then with one more client looping on the root listing, then
  on the index JSON, then both loopers at once.  Each phase reports the
  upload rate (and its ratio to the undisturbed one), the probe's p50/p99
  and the loopers' p50/p99 and request count.  The phases add projects:
  the state is N + 800 .. N + 3,200 projects during them.

Peak RSS of the server is sampled every 0.2 s during the build and after
the restart.  The result is a markdown table, one row per measurement, one
column per size, and the ratio largest / smallest size as the last column;
``--json FILE`` writes everything as JSON too.

Clients are threads of this process (the request bodies of the phases are
built before the clock starts; the switch interval is lowered to 1 ms so a
thread waiting for its answer gets the GIL soon), on the same 2-CPU
machine as the server: latencies are upper bounds.

Hand-run only (pytest does not collect it)::

    /work/venv/bin/python benchmarks/bench_state_scale.py --devpi-tx-venv /work/venv [--quick]

Everything binds to 127.0.0.1; each server is stopped (SIGTERM to its
process group, then SIGKILL) at the end, on an error, on Ctrl-C and on
SIGTERM.  Every phase is bounded in time; a full run takes about ten
minutes, ``--quick`` about two.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench_basic_auth import INDEX, PASSWORD, USER, basic, default_tx_venv
from bench_guessing import pct
from bench_upload_rate import (
    PIP_ACCEPT,
    RssPeak,
    guarded,
    machine,
    scratch_server,
    server_cpu_ms,
    upload_body,
    wheel_bytes,
)

STAGE = f"{USER}/{INDEX}"
JSON_ACCEPT = "application/json"
SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
MAX_SIZE = 200_000

MANY_VERSIONS = "many-versions"
VERSION_COUNT = 4_000
MANY_FILES = "many-files"
FILE_COUNT = 400
CONTROL = "control"
#: Uploads (and page requests) of the many-versions and many-files rounds.
ROUNDS = 20

REQUEST_TIMEOUT_S = 120.0
#: No upload of the build starts after this many seconds (per size).
BUILD_BUDGET_S = 600.0
#: No upload of a phase starts after this many seconds.
PHASE_BUDGET_S = 120.0
#: No request of one measured series starts after this many seconds.
SERIES_BUDGET_S = 10.0
PROBE_INTERVAL_S = 0.005


def project_name(i: int) -> str:
    return f"scale-{i:06d}"


def wheel_upload(project: str, version: str, build: int | None = None) -> tuple[bytes, str]:
    """
    The form of one tiny wheel (64 random bytes of payload); with a build tag if given.
    """
    filename = None
    if build is not None:
        filename = f"{project.replace('-', '_')}-{version}-{build}-py3-none-any.whl"
    return upload_body(project, version, wheel_bytes(project, version, os.urandom(64)), filename)


class Client:
    """
    One keep-alive connection (reopened by http.client after an error).
    """

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)

    def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, bytes, float]:
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            raise
        return resp.status, raw, time.perf_counter() - t0

    def get(self, path: str, accept: str) -> tuple[bytes, float]:
        status, raw, elapsed = self.request("GET", path, {"Accept": accept})
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {raw[:200]!r}")
        return raw, elapsed

    def upload(self, form: tuple[bytes, str]) -> float:
        body, ctype = form
        status, raw, elapsed = self.request(
            "POST",
            f"/{STAGE}/",
            {"Content-Type": ctype, "Authorization": basic(USER, PASSWORD)},
            body,
        )
        if status not in (200, 201):
            raise RuntimeError(f"upload: {status} {raw[:300]!r}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def upload_pool(
    port: int,
    count: int,
    make: Callable[[int], tuple[bytes, str]],
    clients: int,
    budget: float,
    label: str = "",
) -> dict:
    """
    C{clients} threads, each on its own keep-alive connection, upload
    C{make(i)} for i in range(count) between them; no upload starts after
    C{budget} seconds.  The first failed upload stops them all and raises.
    """
    counter = itertools.count()
    per_thread: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop = threading.Event()
    t0 = time.perf_counter()
    deadline = t0 + budget

    def worker(mine: list[float]) -> None:
        client = Client(port)
        try:
            while not stop.is_set() and time.perf_counter() < deadline:
                i = next(counter)
                if i >= count:
                    break
                try:
                    mine.append(client.upload(make(i)))
                except Exception as e:
                    errors.append(f"upload {i}: {type(e).__name__}: {e}")
                    stop.set()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(m,), daemon=True) for m in per_thread]
    for t in threads:
        t.start()
    step = max(count // 10, 1000)
    shown = 0
    end = deadline + REQUEST_TIMEOUT_S + 10
    for t in threads:
        while t.is_alive() and time.perf_counter() < end:
            t.join(1.0)
            done = sum(len(m) for m in per_thread)
            if label and done >= shown + step:
                shown = done - done % step
                rate = done / (time.perf_counter() - t0)
                print(f"    {label}: {done}/{count} ({rate:.0f}/s)", flush=True)
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{label or 'uploads'}: {errors[0]}")
    latencies = [x for m in per_thread for x in m]
    return {
        "uploads": len(latencies),
        "complete": len(latencies) == count,
        "wall_s": round(wall, 3),
        "rate": round(len(latencies) / wall, 1) if wall else None,
        "p50_ms": rnd(pct(latencies, 0.5)),
        "p99_ms": rnd(pct(latencies, 0.99)),
    }


class Looper(threading.Thread):
    """
    GETs one URL on one keep-alive connection until stopped, a request
    every C{interval} seconds at most (0: back to back).
    """

    def __init__(self, port: int, path: str, accept: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.accept, self.interval = port, path, accept, interval
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop_ev = threading.Event()

    def run(self) -> None:
        client = Client(self.port)
        try:
            while not self.stop_ev.is_set():
                try:
                    _, elapsed = client.get(self.path, self.accept)
                except Exception as e:
                    self.errors.append(f"{type(e).__name__}: {e}")
                    if len(self.errors) > 20:
                        return
                    continue
                self.latencies.append(elapsed)
                if self.interval > elapsed:
                    self.stop_ev.wait(self.interval - elapsed)
        finally:
            client.close()

    def summary(self) -> dict:
        return {
            "requests": len(self.latencies),
            "errors": len(self.errors),
            "error_samples": self.errors[:3],
            "p50_ms": rnd(pct(self.latencies, 0.5)),
            "p99_ms": rnd(pct(self.latencies, 0.99)),
        }


def rnd(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def series(client: Client, paths: list[str], accept: str) -> dict:
    """
    GET each path in turn; p50/p99 in ms.
    """
    latencies = []
    deadline = time.perf_counter() + SERIES_BUDGET_S
    for path in paths:
        if time.perf_counter() > deadline:
            break
        latencies.append(client.get(path, accept)[1])
    return {"n": len(latencies), "p50_ms": rnd(pct(latencies, 0.5)), "p99_ms": rnd(pct(latencies, 0.99))}


def first_and_warm(client: Client, path: str, accept: str, requests: int, check: bytes) -> dict:
    """
    The first request of C{path} (its body must hold C{check}), then C{requests} more.
    """
    raw, first = client.get(path, accept)
    if check not in raw:
        raise RuntimeError(f"GET {path}: {check!r} not in the answer ({len(raw)} bytes)")
    res = series(client, [path] * requests, accept)
    res["first_ms"] = rnd(first * 1000)
    res["bytes"] = len(raw)
    return res


def disk_usage(path: Path) -> tuple[int, int]:
    """
    Allocated and apparent bytes of everything below C{path}.
    """
    allocated = apparent = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def db_bytes(db_path: Path) -> int:
    """
    The size of the database as a reader sees it (the WAL's pages included).
    """
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()


def max_serial(db_path: Path) -> int:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT COALESCE(MAX(serial), 0) FROM changelog").fetchone()[0]
    finally:
        db.close()


def changelog_since(db_path: Path, serial: int) -> list[dict]:
    """
    The changelog entries after C{serial}: size in bytes and per key.
    """
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT serial, CAST(changes AS BLOB) FROM changelog WHERE serial > ? ORDER BY serial", (serial,)
        ).fetchall()
    finally:
        db.close()
    entries = []
    for serial_, blob in rows:
        changes = json.loads(blob)
        keys = {k: len(json.dumps(v, separators=(",", ":")).encode()) for k, v in changes.items()}
        entries.append({"serial": serial_, "bytes": len(blob), "keys": keys})
    return entries


def median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def rss_mib(pid: int) -> float:
    return round(RssPeak(pid).sample() / 1048576, 1)


def build(server, n: int, clients: int, res: dict) -> int:
    """
    Upload the state of size C{n}; return the number of uploads.
    """
    port, pid = server.port, server.proc.pid
    sampler = RssPeak(pid)
    sampler.start()
    cpu0 = server_cpu_ms(pid)
    b = upload_pool(
        port, n, lambda i: wheel_upload(project_name(i), "1.0"), clients, BUILD_BUDGET_S, f"{n} projects"
    )
    if not b["complete"]:
        raise RuntimeError(f"build budget of {BUILD_BUDGET_S:.0f}s exhausted after {b['uploads']} uploads")
    res["build_rate"] = b["rate"]
    res["build_p99_ms"] = b["p99_ms"]
    res["build_cpu_ms"] = round((server_cpu_ms(pid) - cpu0) / n, 3)
    print(f"  {n} projects in {b['wall_s']:.1f}s: {b['rate']} uploads/s", flush=True)
    db_path = server.serverdir / ".sqlite"
    allocated, apparent = disk_usage(server.serverdir)
    db_size = db_bytes(db_path)
    res["disk_kib_per_upload"] = round(allocated / n / 1024, 2)
    res["apparent_kib_per_upload"] = round(apparent / n / 1024, 2)
    res["db_kib_per_upload"] = round(db_size / n / 1024, 2)
    extra: list[tuple[str, str, int | None]] = [(MANY_VERSIONS, f"1.{i}", None) for i in range(VERSION_COUNT)]
    extra += [(MANY_FILES, "1.0", i) for i in range(1, FILE_COUNT + 1)]
    extra.append((CONTROL, "1.0", None))
    b = upload_pool(
        port, len(extra), lambda i: wheel_upload(*extra[i]), clients, BUILD_BUDGET_S, "big projects"
    )
    if not b["complete"]:
        raise RuntimeError(f"build budget exhausted after {b['uploads']} uploads of the big projects")
    res["build_big_rate"] = b["rate"]
    allocated_big, _ = disk_usage(server.serverdir)
    res["big_disk_mib"] = round((allocated_big - allocated) / 1048576, 1)
    res["big_db_mib"] = round((db_bytes(db_path) - db_size) / 1048576, 1)
    print(f"  {len(extra)} uploads of the big projects in {b['wall_s']:.1f}s: {b['rate']}/s", flush=True)
    sampler.stop_ev.set()
    res["rss_build_peak_mib"] = round(sampler.peak / 1048576, 1)
    return n + len(extra)


def page_costs(port: int, n: int, requests: int, res: dict) -> None:
    client = Client(port)
    try:
        mid = project_name(n // 2)
        kinds = [
            ("page", lambda p: f"/{STAGE}/+simple/{p}/", PIP_ACCEPT, lambda p: p.replace("-", "_").encode()),
            ("vjson", lambda p: f"/{STAGE}/{p}/1.0", JSON_ACCEPT, lambda p: b'"1.0"'),
            ("pjson", lambda p: f"/{STAGE}/{p}", JSON_ACCEPT, lambda p: b'"1.0"'),
        ]
        for k, (key, path, accept, check) in enumerate(kinds):
            r = first_and_warm(client, path(mid), accept, requests, check(mid))
            spread = [path(project_name((j * n // requests + 1 + k) % n)) for j in range(requests)]
            s = series(client, spread, accept)
            res[f"{key}_first_ms"], res[f"{key}_p50_ms"], res[f"{key}_p99_ms"] = (
                r["first_ms"],
                r["p50_ms"],
                r["p99_ms"],
            )
            res[f"{key}_spread_p50_ms"], res[f"{key}_spread_p99_ms"] = s["p50_ms"], s["p99_ms"]
        last = project_name(n - 1)
        for key, path, accept, check in (
            ("root", f"/{STAGE}/+simple/", PIP_ACCEPT, last.encode()),
            ("ijson", f"/{STAGE}", JSON_ACCEPT, last.encode()),
        ):
            r = first_and_warm(client, path, accept, requests, check)
            res[f"{key}_first_ms"], res[f"{key}_p50_ms"], res[f"{key}_p99_ms"] = (
                r["first_ms"],
                r["p50_ms"],
                r["p99_ms"],
            )
            res[f"{key}_kib"] = round(r["bytes"] / 1024, 1)
        print(
            f"  root listing {res['root_kib']} KiB: first {res['root_first_ms']} ms, "
            f"p50 {res['root_p50_ms']} ms; index JSON {res['ijson_kib']} KiB: first "
            f"{res['ijson_first_ms']} ms, p50 {res['ijson_p50_ms']} ms",
            flush=True,
        )
    finally:
        client.close()


def big_project_costs(server, requests: int, res: dict) -> None:
    port, pid = server.port, server.proc.pid
    db_path = server.serverdir / ".sqlite"
    client = Client(port)
    try:
        mv = f"/{STAGE}/+simple/{MANY_VERSIONS}/"
        for key, path, accept, check in (
            ("mv_page", mv, PIP_ACCEPT, b"many_versions-1.3999-"),
            ("mv_vjson", f"/{STAGE}/{MANY_VERSIONS}/1.2000", JSON_ACCEPT, b"1.2000"),
            ("mv_pjson", f"/{STAGE}/{MANY_VERSIONS}", JSON_ACCEPT, b"1.3999"),
            ("mf_vjson", f"/{STAGE}/{MANY_FILES}/1.0", JSON_ACCEPT, f"-1.0-{FILE_COUNT}-".encode()),
        ):
            r = first_and_warm(client, path, accept, requests, check)
            res[f"{key}_first_ms"], res[f"{key}_p50_ms"], res[f"{key}_p99_ms"] = (
                r["first_ms"],
                r["p50_ms"],
                r["p99_ms"],
            )
            res[f"{key}_n"] = r["n"]  # fewer than --requests when the series' budget ran out
        # The page's render after a change: a new version, then the page.
        forms = [wheel_upload(MANY_VERSIONS, f"2.{i}") for i in range(ROUNDS)]
        serial0 = max_serial(db_path)
        renders, mv_uploads = [], []
        for i, form in enumerate(forms):
            mv_uploads.append(client.upload(form))
            raw, elapsed = client.get(mv, PIP_ACCEPT)
            if f"many_versions-2.{i}-".encode() not in raw:
                raise RuntimeError(f"{mv}: version 2.{i} not on the page after its upload")
            renders.append(elapsed)
        res["mv_render_p50_ms"] = rnd(pct(renders, 0.5))
        res["mv_render_max_ms"] = rnd(max(renders) * 1000)
        res["mv_upload_p50_ms"] = rnd(pct(mv_uploads, 0.5))
        # Uploads into the version of 400 files, paired with new versions of control.
        pairs = [
            (wheel_upload(MANY_FILES, "1.0", FILE_COUNT + 1 + i), wheel_upload(CONTROL, f"1.{i + 1}"))
            for i in range(ROUNDS)
        ]
        times: dict[str, list[float]] = {"mf": [], "ctl": []}
        cpu: dict[str, list[float]] = {"mf": [], "ctl": []}
        for mf_form, ctl_form in pairs:
            for key, form in (("mf", mf_form), ("ctl", ctl_form)):
                c0 = server_cpu_ms(pid)
                times[key].append(client.upload(form))
                cpu[key].append(server_cpu_ms(pid) - c0)
        for key in ("mf", "ctl"):
            res[f"{key}_upload_p50_ms"] = rnd(pct(times[key], 0.5))
            res[f"{key}_upload_cpu_ms"] = rnd(median(cpu[key]))
        res["mf_upload_ratio"] = round(res["mf_upload_p50_ms"] / res["ctl_upload_p50_ms"], 2)
        res["mf_cpu_ratio"] = round(res["mf_upload_cpu_ms"] / res["ctl_upload_cpu_ms"], 2)
    finally:
        client.close()
    # Which entry belongs to which upload: by the version key it writes.
    sizes: dict[str, list[int]] = {"mv": [], "mf": [], "ctl": []}
    biggest: dict[str, tuple[int, str]] = {}
    prefixes = {
        "mv": f"version/{STAGE}/{MANY_VERSIONS}/",
        "mf": f"version/{STAGE}/{MANY_FILES}/1.0",
        "ctl": f"version/{STAGE}/{CONTROL}/",
    }
    for entry in changelog_since(db_path, serial0):
        for key, prefix in prefixes.items():
            if any(k.startswith(prefix) for k in entry["keys"]):
                sizes[key].append(entry["bytes"])
                big_key = max(entry["keys"], key=entry["keys"].get)
                biggest[key] = (entry["keys"][big_key], big_key)
                break
    for key in sizes:
        res[f"{key}_changelog_bytes"] = median(sizes[key])
        res[f"{key}_changelog_entries"] = len(sizes[key])
    if "mf" in biggest:
        res["mf_changelog_biggest_key"] = f"{biggest['mf'][1]} ({biggest['mf'][0]} bytes)"
    print(
        f"  many-versions page render after an upload p50 {res['mv_render_p50_ms']} ms; upload into "
        f"the 400-file version {res['mf_upload_p50_ms']} ms vs new version {res['ctl_upload_p50_ms']} ms, "
        f"changelog {res['mf_changelog_bytes']} vs {res['ctl_changelog_bytes']} bytes",
        flush=True,
    )


PHASES = (
    ("calm", ()),
    ("root", (f"/{STAGE}/+simple/",)),
    ("ijson", (f"/{STAGE}",)),
    ("both", (f"/{STAGE}/+simple/", f"/{STAGE}")),
)


def upload_phases(port: int, n: int, clients: int, uploads: int, res: dict) -> None:
    probe_path = f"/{STAGE}/+simple/{project_name(n // 2)}/"
    for k, (name, loops) in enumerate(PHASES):
        forms = [wheel_upload(f"phase{k}-{i:05d}", "1.0") for i in range(uploads)]
        probe = Looper(port, probe_path, PIP_ACCEPT, PROBE_INTERVAL_S)
        loopers = [Looper(port, p, PIP_ACCEPT if "+simple" in p else JSON_ACCEPT, 0.0) for p in loops]
        for t in (probe, *loopers):
            t.start()
        try:
            r = upload_pool(port, uploads, forms.__getitem__, clients, PHASE_BUDGET_S)
        finally:
            for t in (probe, *loopers):
                t.stop_ev.set()
            for t in (probe, *loopers):
                t.join(REQUEST_TIMEOUT_S + 5)
        p = probe.summary()
        res[f"{name}_rate"] = r["rate"]
        res[f"{name}_complete"] = r["complete"]
        res[f"{name}_probe_p50_ms"] = p["p50_ms"]
        res[f"{name}_probe_p99_ms"] = p["p99_ms"]
        errors = p["errors"]
        for path, looper in zip(loops, loopers, strict=True):
            lk = "root" if "+simple" in path else "ijson"
            s = looper.summary()
            errors += s["errors"]
            res[f"{name}_{lk}_loops"] = s["requests"]
            res[f"{name}_{lk}_p50_ms"] = s["p50_ms"]
            res[f"{name}_{lk}_p99_ms"] = s["p99_ms"]
        if errors:
            raise RuntimeError(f"phase {name}: {errors} failed GETs: {p['error_samples']}")
        if name != "calm":
            res[f"{name}_rate_ratio"] = round(r["rate"] / res["calm_rate"], 2)
        print(
            f"  phase {name}: {r['rate']} uploads/s{'' if r['complete'] else ' (budget ran out)'}, "
            f"probe p50 {p['p50_ms']} / p99 {p['p99_ms']} ms"
            + "".join(
                f", {lk} loops {res[f'{name}_{lk}_loops']} p50 {res[f'{name}_{lk}_p50_ms']} ms"
                for lk in ("root", "ijson")
                if f"{name}_{lk}_loops" in res
            ),
            flush=True,
        )


def run_size(args, ap, n: int) -> dict | None:
    workdir, server = scratch_server(args, f"bench-state-scale-{n}-", ap)
    server.poll_interval = 0.02
    res: dict = {"size": n}
    with guarded(server, workdir, args.keep) as status:
        t_size = time.perf_counter()
        print(f"size {n}: devpi-tx on 127.0.0.1:{server.port}, {workdir}", flush=True)
        server.start()
        server.setup()
        res["version"] = server.version()
        uploads = build(server, n, args.clients, res)
        t0 = time.perf_counter()
        server.stop()
        res["stop_s"] = round(time.perf_counter() - t0, 3)
        res["uploads"] = uploads
        res["disk_mib"] = round(disk_usage(server.serverdir)[0] / 1048576, 1)
        t0 = time.perf_counter()
        server.start()
        res["start_s"] = round(time.perf_counter() - t0, 3)
        res["rss_start_mib"] = rss_mib(server.proc.pid)
        print(
            f"  stop {res['stop_s']}s, start {res['start_s']}s, RSS {res['rss_start_mib']} MiB, "
            f"disk {res['disk_kib_per_upload']} KiB/upload, {res['disk_mib']} MiB in all",
            flush=True,
        )
        sampler = RssPeak(server.proc.pid)
        sampler.start()
        page_costs(server.port, n, args.requests, res)
        big_project_costs(server, args.requests, res)
        upload_phases(server.port, n, args.clients, args.phase_uploads, res)
        sampler.stop_ev.set()
        res["rss_end_mib"] = rss_mib(server.proc.pid)
        res["rss_run_peak_mib"] = round(sampler.peak / 1048576, 1)
        res["wall_s"] = round(time.perf_counter() - t_size, 1)
        print(f"  size {n} done in {res['wall_s']}s", flush=True)
    return None if status["failed"] else res


#: (key, label) of the table's rows.
ROWS = (
    ("build_rate", "build: uploads/s (0 -> N projects, 4 clients)"),
    ("build_p99_ms", "build: upload p99 ms"),
    ("build_cpu_ms", "build: server CPU ms/upload"),
    ("rss_build_peak_mib", "build: peak RSS MiB"),
    ("stop_s", "stop time s"),
    ("start_s", "start time s (until /+api answers)"),
    ("rss_start_mib", "RSS after start MiB"),
    ("disk_kib_per_upload", "disk per upload of the N KiB (allocated)"),
    ("apparent_kib_per_upload", "disk per upload of the N KiB (apparent)"),
    ("db_kib_per_upload", "database per upload of the N KiB"),
    ("big_disk_mib", "disk of the 4,401 big-project uploads MiB"),
    ("big_db_mib", "database of the 4,401 big-project uploads MiB"),
    ("disk_mib", "server directory after stop MiB"),
    ("page_first_ms", "project page: first after start ms"),
    ("page_p50_ms", "project page p50 ms"),
    ("page_p99_ms", "project page p99 ms"),
    ("page_spread_p50_ms", "project page, distinct projects: p50 ms"),
    ("page_spread_p99_ms", "project page, distinct projects: p99 ms"),
    ("vjson_first_ms", "version JSON: first ms"),
    ("vjson_p50_ms", "version JSON p50 ms"),
    ("vjson_p99_ms", "version JSON p99 ms"),
    ("vjson_spread_p50_ms", "version JSON, distinct projects: p50 ms"),
    ("vjson_spread_p99_ms", "version JSON, distinct projects: p99 ms"),
    ("pjson_first_ms", "project JSON: first ms"),
    ("pjson_p50_ms", "project JSON p50 ms"),
    ("pjson_p99_ms", "project JSON p99 ms"),
    ("pjson_spread_p50_ms", "project JSON, distinct projects: p50 ms"),
    ("pjson_spread_p99_ms", "project JSON, distinct projects: p99 ms"),
    ("root_kib", "root listing KiB"),
    ("root_first_ms", "root listing: first ms"),
    ("root_p50_ms", "root listing p50 ms"),
    ("root_p99_ms", "root listing p99 ms"),
    ("ijson_kib", "index JSON KiB"),
    ("ijson_first_ms", "index JSON: first ms"),
    ("ijson_p50_ms", "index JSON p50 ms"),
    ("ijson_p99_ms", "index JSON p99 ms"),
    ("mv_page_first_ms", "4k versions: page first ms"),
    ("mv_page_p50_ms", "4k versions: page p50 ms"),
    ("mv_page_p99_ms", "4k versions: page p99 ms"),
    ("mv_render_p50_ms", "4k versions: page after an upload p50 ms"),
    ("mv_render_max_ms", "4k versions: page after an upload max ms"),
    ("mv_vjson_first_ms", "4k versions: version JSON first ms"),
    ("mv_vjson_p50_ms", "4k versions: version JSON p50 ms"),
    ("mv_vjson_p99_ms", "4k versions: version JSON p99 ms"),
    ("mv_pjson_first_ms", "4k versions: project JSON first ms"),
    ("mv_pjson_p50_ms", "4k versions: project JSON p50 ms"),
    ("mv_upload_p50_ms", "4k versions: upload of a new version p50 ms"),
    ("mv_changelog_bytes", "4k versions: changelog entry bytes/upload"),
    ("mf_vjson_p50_ms", "400 files: version JSON p50 ms"),
    ("mf_upload_p50_ms", "400 files: upload into the version p50 ms"),
    ("ctl_upload_p50_ms", "upload into a new version (control) p50 ms"),
    ("mf_upload_ratio", "400 files / new version: upload time"),
    ("mf_upload_cpu_ms", "400 files: server CPU ms/upload"),
    ("ctl_upload_cpu_ms", "new version: server CPU ms/upload"),
    ("mf_changelog_bytes", "400 files: changelog entry bytes/upload"),
    ("ctl_changelog_bytes", "new version: changelog entry bytes/upload"),
    ("calm_rate", "uploads/s at N (4 clients), undisturbed"),
    ("calm_probe_p99_ms", "  unrelated page p99 ms"),
    ("root_rate", "uploads/s, root listing looping"),
    ("root_rate_ratio", "  / undisturbed"),
    ("root_probe_p99_ms", "  unrelated page p99 ms"),
    ("root_root_loops", "  root listings served"),
    ("root_root_p50_ms", "  root listing p50 ms"),
    ("ijson_rate", "uploads/s, index JSON looping"),
    ("ijson_rate_ratio", "  / undisturbed"),
    ("ijson_probe_p99_ms", "  unrelated page p99 ms"),
    ("ijson_ijson_loops", "  index JSONs served"),
    ("ijson_ijson_p50_ms", "  index JSON p50 ms"),
    ("both_rate", "uploads/s, both looping"),
    ("both_rate_ratio", "  / undisturbed"),
    ("both_probe_p99_ms", "  unrelated page p99 ms"),
    ("rss_end_mib", "RSS at the end MiB"),
    ("rss_run_peak_mib", "peak RSS after restart MiB"),
)


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(runs: list[dict]) -> str:
    sizes = [f"{r['size']:,}" for r in runs]
    last = f"{sizes[-1]} / {sizes[0]}" if len(runs) > 1 else "ratio"
    out = ["| measurement | " + " | ".join(sizes) + f" | {last} |", "|---" * (len(runs) + 2) + "|"]
    for key, label in ROWS:
        values = [r.get(key) for r in runs]
        ratio = "-"
        a, b = values[0], values[-1]
        if len(runs) > 1 and isinstance(a, int | float) and isinstance(b, int | float) and a:
            ratio = f"{b / a:.2f}x"
        out.append(f"| {label} | " + " | ".join(fmt(v) for v in values) + f" | {ratio} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devpi-tx-venv", default=default_tx_venv(), help="venv with devpi-tx (twistd)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="project counts (comma list)")
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} only")
    ap.add_argument("--requests", type=int, default=200, help="requests per measured series (200)")
    ap.add_argument("--phase-uploads", type=int, default=800, help="uploads per upload phase (800)")
    ap.add_argument("--clients", type=int, default=4, help="upload threads (default 4)")
    ap.add_argument("--workdir", help="scratch dir (default: a new temp dir per size, removed after it)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dirs (server dirs, logs)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    try:
        sizes = QUICK_SIZES if args.quick else tuple(int(s) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        ap.error("--sizes: a comma list of integers")
    if not sizes or any(not args.requests <= s <= MAX_SIZE for s in sizes):
        ap.error(f"--sizes: between --requests and {MAX_SIZE:,}")
    if not 20 <= args.requests <= 10_000:
        ap.error("--requests: between 20 and 10,000")
    if not 100 <= args.phase_uploads <= 20_000 or not 1 <= args.clients <= 32:
        ap.error("--phase-uploads: 100 to 20,000; --clients: 1 to 32")
    sys.setswitchinterval(0.001)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "workdir", "keep")},
        "runs": [],
    }
    t0 = time.perf_counter()
    failed = False
    for n in sizes:
        res = run_size(args, ap, n)
        if res is None:
            failed = True
            break
        results["runs"].append(res)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if results["runs"]:
        m = results["machine"]
        print()
        print(
            f"{results['date']}, {m['cpus']} CPUs, Python {m['python']}, devpi-tx "
            f"{results['runs'][0].get('version')}, {results['wall_s']:.0f} s, load average "
            f"{m['loadavg_start'][0]} -> {m['loadavg_end'][0]}"
        )
        print()
        print(table(results["runs"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

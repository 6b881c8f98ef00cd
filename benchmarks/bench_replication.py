#!/usr/bin/env python3
"""
Replication (issue 16): a primary and a replica of devpi-tx, and of
devpi-server 6.20.3, on loopback, put through the same scenarios side by
side.

For each server it makes a scratch directory with one secret file (mode
0600) shared by both nodes, starts the primary (devpi-tx: ``twistd -n
--pidfile= devpi --role primary --no-root-pypi --mirror-url <unreachable>``;
devpi-server: ``devpi-init --no-root-pypi`` then ``devpi-server --role
primary``), creates user ``bench`` and index ``bench/dev`` and logs in
(``POST /+login``; uploads carry ``X-Devpi-Auth``, so devpi-server does not
check an argon2 hash on each of them).  Uploads are twine's multipart form
(``:action=file_upload``) of ``bench_upload_rate.py``'s tiny wheels (64
random bytes of payload each), one at a time on one keep-alive connection.
The replica (devpi-tx: ``--primary-url``; devpi-server: ``devpi-init --role
replica --primary-url`` first, not timed) starts on an empty directory.
Then:

1. **initial sync**: ``--initial`` (300) uploads to the primary with the
   replica not running (``init-00`` .. ``init-29``, versions ``1.0`` ..),
   then the replica is started.  From its start (just before the process
   is spawned): when its ``/+status`` first answers, when its ``serial``
   equals the primary's (polled every 20 ms), and when every file is served
   by it (after the serial, each ``+f`` URL is fetched from the replica in
   turn, again until its body has the upload's sha256: a file the replica
   has not fetched yet is fetched for that request by both servers);
2. **live lag**: with the replica in sync, ``--live`` (100) uploads one at a
   time; after the primary's 200 for each, the replica's simple page of the
   project is polled (every ``--poll-ms``, 2 ms, after each answer) until it
   lists the file ("listed"), then the file URL until its body has the
   right sha256 ("served"; both measured from the 200); the next upload
   starts once the file is served.  p50 and max of each;
3. **restarted primary**: the primary is stopped (SIGTERM, waited for),
   2 s later started again; once it answers ``/+api`` (polled every 20 ms)
   one upload is sent at once; measured from the primary's answering until
   the replica serves that file (and from the upload's 200);
4. **replica restarted after missing uploads**: the replica is stopped,
   ``--missed`` (20) uploads go to the primary, the replica is started
   again; from its start, when its serial equals the primary's and when the
   20 files are served (fetched in turn as in 1);
5. **5xx from the replica**: every request this script sends to the
   replica is counted by status (the polls above included), and during 3
   and 4 a background thread asks for a replica simple page every 50 ms;
   connection errors (the replica not running) are counted apart;
6. **replica peak RSS**: ``VmHWM`` of the replica process from
   ``/proc/<pid>/status``: of the first replica process just before it is
   stopped in 4 (it ran 1 and 2 and 3), and of the second at the end;
7. **devpi-tx only** (devpi-server's replica, at the 30-odd entries/s of its
   initial sync, would take minutes more), unless ``--skip-big``:
   the scenarios' replica is stopped, ``--big-projects`` x
   ``--big-versions`` (1,000 x 10) more uploads go to the primary from 4
   threads (Basic auth), and a new replica is started on an empty
   directory; its ``/+status`` (serial, ``replica-files-pending``) is read
   every 0.2 s until it has every serial and no file pending.  Reported:
   the entries applied per second in each thousand serials (the moment the
   serial passed each multiple of 1,000, interpolated between samples), so
   that a rate falling as the state grows shows; the time until every
   serial and until no file was pending, then every file of the 10,000 is
   fetched from the replica and its sha256 checked; the replica's VmHWM.

Hand-run only (pytest does not collect it)::

    /work/venv/bin/python benchmarks/bench_replication.py \\
        --devpi-tx-venv /work/venv --peers-venv /work/peers-venv --json out.json

``--skip-devpi`` runs devpi-tx only; ``--quick`` is 60 initial uploads,
20 live, 20 missed and 200 x 10 for 7 (under a minute for devpi-tx).

The client is this process (threads), on the same machine as both nodes:
every lag includes the polling client's own time and its competition for
the CPUs with two servers, so the figures are upper bounds, and on a
shared machine the load average is printed with them.  Everything binds to
127.0.0.1; no node can reach a public index (devpi-tx's root/pypi would
mirror a loopback port nobody listens on; neither primary has root/pypi).
Every server is stopped (SIGTERM to its process group, then SIGKILL) at the
end, on an error, on Ctrl-C and on SIGTERM; each wait is bounded.
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench_basic_auth import (
    INDEX,
    PASSWORD,
    START_TIMEOUT_S,
    USER,
    DevpiServer,
    DevpiTx,
    Server,
    default_tx_venv,
    http_call,
)
from bench_guessing import pct
from bench_state_scale import upload_pool
from bench_upload_rate import machine, upload_body, wheel_bytes

STAGE = f"{USER}/{INDEX}"
JSON_ACCEPT = "application/json"
HTML_ACCEPT = "text/html"
REQUEST_TIMEOUT_S = 60.0
#: Bounds of the waits, in seconds (devpi-server took about 45 s for 1).
INITIAL_SYNC_BUDGET_S = 600.0
FOLLOW_BUDGET_S = 120.0
BIG_SYNC_BUDGET_S = 900.0
BIG_BUILD_BUDGET_S = 900.0
STATUS_POLL_S = 0.02
BIG_STATUS_POLL_S = 0.2
BACKGROUND_POLL_S = 0.05
PRIMARY_DOWN_S = 2.0

#: The issue's targets: (key, comparison, value).
TARGETS = {
    "s1_serial_s": ("<=", 3.0),
    "s1_files_s": ("<=", 5.0),
    "s2_served_p50_ms": ("<=", 20.0),
    "s2_served_max_ms": ("<=", 100.0),
    "s3_follow_s": ("<=", 2.0),
    "s4_serial_s": ("<=", 2.0),
    "s4_files_s": ("<=", 2.0),
    "replica_5xx": ("==", 0),
    "replica_rss_max_mib": ("<", 150.0),
}

#: devpi-server's figures measured earlier on this machine (from the issue).
DEVPI_EARLIER = {
    "s1_serial_s": "37-41",
    "s1_files_s": "41-49",
    "s2_served_p50_ms": "74-87",
    "s2_served_max_ms": "230-269",
    "s3_follow_s": "9.5-15.5",
    "s4_serial_s": "14.5-22.8",
    "s4_files_s": "14.5-22.8",
    "replica_5xx": "2-7",
    "replica_rss_max_mib": "608 MB",
}


# ---------------------------------------------------------------- wheels


@dataclass
class Wheel:
    project: str
    version: str
    filename: str
    sha256: str
    form: tuple[bytes, str]

    @property
    def path(self) -> str:
        """
        Its ``+f`` URL path, as both servers name it (checked on the first upload).
        """
        h = self.sha256
        return f"/{STAGE}/+f/{h[:3]}/{h[3:16]}/{self.filename}"

    @property
    def page(self) -> str:
        return f"/{STAGE}/+simple/{self.project}/"


def make_wheel(project: str, version: str) -> Wheel:
    content = wheel_bytes(project, version, os.urandom(64))
    filename = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
    form = upload_body(project, version, content, filename)
    return Wheel(project, version, filename, hashlib.sha256(content).hexdigest(), form)


def wheel_set(prefix: str, count: int, projects: int) -> list[Wheel]:
    """
    C{count} wheels over C{projects} projects (C{prefix}-00 ...), versions 1.0, 1.1, ...
    """
    return [make_wheel(f"{prefix}-{i % projects:02d}", f"1.{i // projects}") for i in range(count)]


# ---------------------------------------------------------------- nodes


class TxNode(DevpiTx):
    """
    devpi-tx as a primary or a replica.
    """

    def __init__(self, workdir: Path, venv: Path, name: str, extra: list[str]) -> None:
        super().__init__(workdir, venv)
        self.name = name
        self.extra = extra
        self.poll_interval = STATUS_POLL_S

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]


class DevpiNode(DevpiServer):
    """
    devpi-server as a primary or a replica; initialised once (not timed).
    """

    def __init__(self, workdir: Path, venv: Path, name: str, init_args: list[str], extra: list[str]) -> None:
        super().__init__(workdir, venv)
        self.name = name
        self.init_args = init_args
        self.extra = extra
        self.poll_interval = STATUS_POLL_S
        self.init_s: float | None = None

    def init(self) -> None:
        if (self.serverdir / ".nodeinfo").exists():
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        subprocess.run(
            [str(self.venv / "bin" / "devpi-init"), "--serverdir", str(self.serverdir), *self.init_args],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
            env=self.env(),
            cwd=str(self.workdir),
        )
        self.init_s = round(time.perf_counter() - t0, 2)

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]


def spawn(node: Server) -> None:
    """
    Start the node's process (it must have been initialised) without waiting for it.
    """
    node.workdir.mkdir(parents=True, exist_ok=True)
    with open(node.logfile, "ab") as log:
        node.proc = subprocess.Popen(
            node.command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(node.workdir),
            env=node.env(),
            start_new_session=True,
        )


def vm_hwm_mib(node: Server) -> float | None:
    """
    The peak resident set size of the node's process so far.
    """
    if node.proc is None:
        return None
    try:
        with open(f"/proc/{node.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def check_alive(node: Server) -> None:
    if node.proc is None or node.proc.poll() is not None:
        code = None if node.proc is None else node.proc.returncode
        raise RuntimeError(f"{node.name} exited ({code}); see {node.logfile}:\n{node.log_tail()}")


# ---------------------------------------------------------------- counted HTTP


class Tally:
    """
    Every answer of the replica by status, and the connection errors.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.conn_errors = 0
        self.samples: list[str] = []

    def add(self, status: int, method: str, path: str, raw: bytes, where: str) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status >= 500 and len(self.samples) < 20:
                self.samples.append(f"{where}: {method} {path} -> {status} {raw[:160]!r}")

    def error(self) -> None:
        with self.lock:
            self.conn_errors += 1

    @property
    def count_5xx(self) -> int:
        with self.lock:
            return sum(n for s, n in self.statuses.items() if s >= 500)

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.statuses.values())


class Conn:
    """
    One keep-alive connection (reopened by http.client after an error);
    every answer is counted in C{tally} if given.
    """

    def __init__(self, port: int, tally: Tally | None = None, where: str = "") -> None:
        self.port = port
        self.tally = tally
        self.where = where
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, bytes]:
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            if self.tally is not None:
                self.tally.error()
            raise
        if self.tally is not None:
            self.tally.add(resp.status, method, path, raw, self.where)
        return resp.status, raw

    def try_request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """
        As L{request}, with a connection error as status 0.
        """
        try:
            return self.request(method, path, headers)
        except (OSError, http.client.HTTPException) as e:
            return 0, repr(e).encode()

    def status(self) -> dict | None:
        """
        The node's /+status result, or None if it does not answer it (yet).
        """
        code, raw = self.try_request("GET", "/+status", {"Accept": JSON_ACCEPT})
        if code != 200:
            return None
        return json.loads(raw)["result"]

    def close(self) -> None:
        self.conn.close()


class Uploader:
    """
    Uploads to the primary on one keep-alive connection, with a login token.
    """

    def __init__(self, port: int, auth: dict[str, str]) -> None:
        self.conn = Conn(port)
        self.auth = auth

    def upload(self, wheel: Wheel) -> float:
        """
        Upload; returns the moment of the primary's 200 (perf_counter) and
        raises on any other answer.
        """
        body, ctype = wheel.form
        status, raw = self.conn.request(
            "POST", f"/{STAGE}/", {"Content-Type": ctype, "Accept": JSON_ACCEPT, **self.auth}, body
        )
        done = time.perf_counter()
        if status not in (200, 201):
            raise RuntimeError(f"upload of {wheel.filename}: {status} {raw[:300]!r}")
        return done

    def close(self) -> None:
        self.conn.close()


def login(port: int) -> dict[str, str]:
    status, body = http_call(port, "POST", "/+login", body={"user": USER, "password": PASSWORD}, timeout=60)
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"login: {status} {body}")
    token = body["result"]["password"]
    return {"X-Devpi-Auth": base64.b64encode(f"{USER}:{token}".encode()).decode()}


def check_path(port: int, wheel: Wheel) -> None:
    """
    The primary's simple page links the file where L{Wheel.path} says.
    """
    conn = Conn(port)
    try:
        status, raw = conn.request("GET", wheel.page, {"Accept": HTML_ACCEPT})
    finally:
        conn.close()
    if status != 200 or wheel.path.split("/+f/", 1)[1].encode() not in raw:
        raise RuntimeError(f"{wheel.page} on the primary: {status}, no link to {wheel.path}: {raw[:400]!r}")


# ---------------------------------------------------------------- waits


def serial_of(conn: Conn) -> int | None:
    st = conn.status()
    return None if st is None else int(st["serial"])


def wait_serial(conn: Conn, node: Server, target: int, t0: float, budget: float) -> tuple[float, float]:
    """
    Poll the replica's /+status until its serial is at least C{target};
    returns (first answer, serial reached), seconds after C{t0}.
    """
    up = None
    deadline = time.perf_counter() + budget
    last = None
    while True:
        st = conn.status()
        now = time.perf_counter()
        if st is not None:
            if up is None:
                up = now - t0
            last = int(st["serial"])
            if last >= target:
                return up, now - t0
        if now > deadline:
            raise RuntimeError(f"{node.name}: serial {last} after {budget:.0f}s, wanted {target}")
        check_alive(node)
        time.sleep(STATUS_POLL_S)


def wait_served(conn: Conn, node: Server, wheel: Wheel, budget: float, poll: float, list_first: bool) -> dict:
    """
    Until the replica serves the file with the right sha256 (first, if
    C{list_first}, until its simple page lists it); the moments, perf_counter.
    """
    deadline = time.perf_counter() + budget
    out: dict = {"polls": 0}
    if list_first:
        while True:
            status, raw = conn.try_request("GET", wheel.page, {"Accept": HTML_ACCEPT})
            out["polls"] += 1
            if status == 200 and wheel.filename.encode() in raw:
                out["listed"] = time.perf_counter()
                break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{node.name}: {wheel.page} without {wheel.filename} after {budget:.0f}s")
            check_alive(node)
            time.sleep(poll)
    bad = 0
    while True:
        status, raw = conn.try_request("GET", wheel.path)
        out["polls"] += 1
        if status == 200:
            if hashlib.sha256(raw).hexdigest() == wheel.sha256:
                out["served"] = time.perf_counter()
                out["bad_bodies"] = bad
                return out
            bad += 1
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{node.name}: {wheel.path} not served right after {budget:.0f}s ({status})")
        check_alive(node)
        time.sleep(poll)


def serve_all(conn: Conn, node: Server, wheels: list[Wheel], budget: float, poll: float) -> dict:
    """
    Fetch every file from the replica in turn, each until it has the right sha256.
    """
    deadline = time.perf_counter() + budget
    polls = bad = 0
    for wheel in wheels:
        r = wait_served(conn, node, wheel, max(deadline - time.perf_counter(), 1.0), poll, False)
        polls += r["polls"]
        bad += r["bad_bodies"]
    return {"requests": polls, "bad_bodies": bad}


class Poller(threading.Thread):
    """
    A replica simple page every C{interval} seconds, counted in the tally.
    """

    def __init__(self, port: int, tally: Tally, path: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.conn = Conn(port, tally, "background")
        self.path = path
        self.interval = interval
        self.stop_ev = threading.Event()
        self.statuses: collections.Counter[int] = collections.Counter()

    def run(self) -> None:
        while not self.stop_ev.is_set():
            t0 = time.perf_counter()
            status, _ = self.conn.try_request("GET", self.path, {"Accept": HTML_ACCEPT})
            self.statuses[status] += 1
            self.stop_ev.wait(max(self.interval - (time.perf_counter() - t0), 0.0))
        self.conn.close()


# ---------------------------------------------------------------- one side


class Side:
    """
    A primary and a replica of one server, with what was measured.
    """

    def __init__(self, kind: str, workdir: Path, args) -> None:
        self.kind = kind
        self.workdir = workdir / kind
        self.workdir.mkdir(parents=True)
        self.secret = self.workdir / "secret"
        self.secret.write_bytes(base64.b64encode(os.urandom(32)))
        self.secret.chmod(0o600)
        self.args = args
        self.nodes: list[Server] = []
        self.primary = self.node("primary")
        self.res: dict = {"server": kind}

    def node(self, role: str, primary: Server | None = None, dirname: str | None = None) -> Server:
        workdir = self.workdir / (dirname or role)
        secret = ["--secretfile", str(self.secret)]
        if self.kind == "devpi-tx":
            venv = Path(self.args.devpi_tx_venv)
            if role == "primary":
                extra = ["--role", "primary", "--no-root-pypi", *secret]
                n = TxNode(workdir, venv, "devpi-tx primary", extra)
            else:
                assert primary is not None
                url = f"http://127.0.0.1:{primary.port}"
                n = TxNode(workdir, venv, f"devpi-tx {dirname or role}", ["--primary-url", url, *secret])
        else:
            venv = Path(self.args.peers_venv)
            if role == "primary":
                n = DevpiNode(
                    workdir, venv, "devpi-server primary", ["--no-root-pypi"], ["--role", "primary", *secret]
                )
            else:
                assert primary is not None
                url = f"http://127.0.0.1:{primary.port}"
                n = DevpiNode(
                    workdir,
                    venv,
                    f"devpi-server {dirname or role}",
                    ["--role", "replica", "--primary-url", url],
                    ["--primary-url", url, *secret],
                )
        self.nodes.append(n)
        return n

    def stop_all(self) -> None:
        for n in reversed(self.nodes):
            n.stop()

    def say(self, text: str) -> None:
        print(f"  [{self.kind}] {text}", flush=True)

    def run(self, big: bool) -> None:
        args, res = self.args, self.res
        tally = Tally()
        self.tally = tally
        primary = self.primary
        self.say(f"primary on 127.0.0.1:{primary.port}, {self.workdir}")
        primary.start()
        primary.setup()
        res["version"] = primary.version()
        auth = login(primary.port)
        uploader = Uploader(primary.port, auth)

        # 1. initial sync
        initial = wheel_set("init", args.initial, 30)
        t0 = time.perf_counter()
        for i, w in enumerate(initial):
            uploader.upload(w)
            if i == 0:
                check_path(primary.port, w)
        wall = time.perf_counter() - t0
        res["setup_upload_rate"] = round(len(initial) / wall, 1)
        pconn = Conn(primary.port)
        target = serial_of(pconn)
        res["s1_primary_serial"] = target
        self.say(f"{len(initial)} uploads to the primary in {wall:.1f}s; primary serial {target}")
        replica = self.node("replica", primary)
        replica.init()
        if getattr(replica, "init_s", None) is not None:
            res["replica_init_s"] = replica.init_s
        rconn = Conn(replica.port, tally, "status/files")
        t0 = time.perf_counter()
        spawn(replica)
        up, at_serial = wait_serial(rconn, replica, target, t0, INITIAL_SYNC_BUDGET_S)
        served = serve_all(rconn, replica, initial, INITIAL_SYNC_BUDGET_S, 0.01)
        res["s1_up_s"] = round(up, 3)
        res["s1_serial_s"] = round(at_serial, 3)
        res["s1_files_s"] = round(time.perf_counter() - t0, 3)
        res["s1_file_requests"] = served["requests"]
        res["s1_bad_bodies"] = served["bad_bodies"]
        res["s1_primary_serial_after"] = serial_of(pconn)
        self.say(
            f"1. replica up {up:.2f}s, serial {target} at {at_serial:.2f}s, "
            f"{len(initial)} files served at {res['s1_files_s']:.2f}s ({served['requests']} GETs)"
        )

        # 2. live lag
        live = wheel_set("live", args.live, 10)
        listed, served_l, uploads = [], [], []
        poll = args.poll_ms / 1000
        for w in live:
            t_send = time.perf_counter()
            t_ok = uploader.upload(w)
            r = wait_served(rconn, replica, w, FOLLOW_BUDGET_S, poll, True)
            uploads.append(t_ok - t_send)
            listed.append(r["listed"] - t_ok)
            served_l.append(r["served"] - t_ok)
        res["s2_uploads"] = len(live)
        res["s2_upload_p50_ms"] = rnd(pct(uploads, 0.5))
        res["s2_listed_p50_ms"] = rnd(pct(listed, 0.5))
        res["s2_listed_max_ms"] = rnd(max(listed) * 1000)
        res["s2_served_p50_ms"] = rnd(pct(served_l, 0.5))
        res["s2_served_p90_ms"] = rnd(pct(served_l, 0.9))
        res["s2_served_max_ms"] = rnd(max(served_l) * 1000)
        res["s2_served_ms"] = [rnd(x * 1000) for x in served_l]
        self.say(
            f"2. live lag over {len(live)} uploads: listed p50 {res['s2_listed_p50_ms']} / max "
            f"{res['s2_listed_max_ms']} ms, served p50 {res['s2_served_p50_ms']} / max "
            f"{res['s2_served_max_ms']} ms"
        )

        # 3. restarted primary, with the background poller on
        poller = Poller(replica.port, tally, initial[0].page, BACKGROUND_POLL_S)
        poller.start()
        try:
            uploader.close()
            pconn.close()
            res["primary_rss_first_mib"] = vm_hwm_mib(primary)
            t0 = time.perf_counter()
            primary.stop()
            res["s3_primary_stop_s"] = round(time.perf_counter() - t0, 3)
            time.sleep(PRIMARY_DOWN_S)
            t0 = time.perf_counter()
            primary.start()
            t_up = time.perf_counter()
            res["s3_primary_start_s"] = round(t_up - t0, 3)
            uploader = Uploader(primary.port, auth)
            w = make_wheel("restart", "1.0")
            t_ok = uploader.upload(w)
            r = wait_served(rconn, replica, w, FOLLOW_BUDGET_S, poll, False)
            res["s3_upload_ms"] = rnd((t_ok - t_up) * 1000)
            res["s3_follow_s"] = round(r["served"] - t_up, 3)
            res["s3_after_upload_s"] = round(r["served"] - t_ok, 3)
            self.say(
                f"3. primary stopped in {res['s3_primary_stop_s']}s, answering {res['s3_primary_start_s']}s "
                f"after its start; the upload served by the replica {res['s3_follow_s']}s after that "
                f"({res['s3_after_upload_s']}s after the upload's 200)"
            )

            # 4. replica restarted after missing uploads
            res["replica_rss_first_mib"] = vm_hwm_mib(replica)
            rconn.close()
            t0 = time.perf_counter()
            replica.stop()
            res["s4_replica_stop_s"] = round(time.perf_counter() - t0, 3)
            missed = wheel_set("missed", args.missed, 5)
            for w in missed:
                uploader.upload(w)
            pconn = Conn(primary.port)
            target = serial_of(pconn)
            rconn = Conn(replica.port, tally, "status/files")
            t0 = time.perf_counter()
            spawn(replica)
            up, at_serial = wait_serial(rconn, replica, target, t0, FOLLOW_BUDGET_S)
            served = serve_all(rconn, replica, missed, FOLLOW_BUDGET_S, 0.01)
            res["s4_up_s"] = round(up, 3)
            res["s4_serial_s"] = round(at_serial, 3)
            res["s4_files_s"] = round(time.perf_counter() - t0, 3)
            res["s4_file_requests"] = served["requests"]
            self.say(
                f"4. replica up {up:.2f}s, serial {target} at {at_serial:.2f}s, {len(missed)} files served "
                f"at {res['s4_files_s']:.2f}s"
            )
            time.sleep(1.0)  # a second more of background polls with the replica in sync
        finally:
            poller.stop_ev.set()
            poller.join(REQUEST_TIMEOUT_S + 5)
        res["background_requests"] = sum(n for s, n in poller.statuses.items() if s)
        res["background_refused"] = poller.statuses.get(0, 0)
        res["background_5xx"] = sum(n for s, n in poller.statuses.items() if s >= 500)
        res["background_statuses"] = {str(k): v for k, v in sorted(poller.statuses.items())}

        # 5, 6.
        res["replica_rss_end_mib"] = vm_hwm_mib(replica)
        res["primary_rss_end_mib"] = vm_hwm_mib(primary)
        rss = [x for x in (res.get("replica_rss_first_mib"), res["replica_rss_end_mib"]) if x is not None]
        res["replica_rss_max_mib"] = max(rss) if rss else None
        res["replica_requests"] = tally.total
        res["replica_5xx"] = tally.count_5xx
        res["replica_conn_errors"] = tally.conn_errors
        res["replica_statuses"] = {str(k): v for k, v in sorted(tally.statuses.items())}
        res["replica_5xx_samples"] = tally.samples
        self.say(
            f"5. {tally.total} answers from the replica, {tally.count_5xx} 5xx "
            f"({res['replica_statuses']}), {tally.conn_errors} connection errors; "
            f"background poller {res['background_statuses']}"
        )
        self.say(
            f"6. replica VmHWM {res.get('replica_rss_first_mib')} MiB (first process), "
            f"{res['replica_rss_end_mib']} MiB (restarted); primary {res['primary_rss_end_mib']} MiB"
        )
        uploader.close()
        rconn.close()
        pconn.close()
        for line in tally.samples:
            self.say(f"   5xx: {line}")

        if big:
            replica.stop()
            self.big(primary, tally)

    def big(self, primary: Server, tally: Tally) -> None:
        """
        7. a new replica's initial sync of a big state.
        """
        args, res = self.args, self.res
        projects, versions = args.big_projects, args.big_versions
        count = projects * versions
        shas: list[tuple[str, str] | None] = [None] * count

        def make(i: int) -> tuple[bytes, str]:
            w = make_wheel(f"big-{i % projects:05d}", f"1.{i // projects}")
            shas[i] = (w.path, w.sha256)
            return w.form

        t0 = time.perf_counter()
        b = upload_pool(primary.port, count, make, 4, BIG_BUILD_BUDGET_S, "7. uploads")
        if not b["complete"]:
            raise RuntimeError(f"7: only {b['uploads']} of {count} uploads within {BIG_BUILD_BUDGET_S:.0f}s")
        res["s7_uploads"] = count
        res["s7_build_rate"] = b["rate"]
        pconn = Conn(primary.port)
        target = serial_of(pconn)
        pconn.close()
        res["s7_primary_serial"] = target
        wall = time.perf_counter() - t0
        self.say(f"7. {count} uploads in {wall:.1f}s ({b['rate']}/s); primary serial {target}")
        replica = self.node("replica", primary, "replica-big")
        rconn = Conn(replica.port, tally, "big status/files")
        samples: list[tuple[float, int, int | None]] = []
        t0 = time.perf_counter()
        spawn(replica)
        deadline = t0 + BIG_SYNC_BUDGET_S
        at_serial = at_files = None
        while True:
            st = rconn.status()
            now = time.perf_counter() - t0
            if st is not None:
                serial, pending = int(st["serial"]), st.get("replica-files-pending")
                samples.append((round(now, 3), serial, pending))
                if at_serial is None and serial >= target:
                    at_serial = now
                if serial >= target and pending == 0:
                    at_files = now
                    break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"7: replica at {samples[-1:]} after {BIG_SYNC_BUDGET_S:.0f}s; {target}?")
            check_alive(replica)
            time.sleep(BIG_STATUS_POLL_S)
        res["s7_serial_s"] = round(at_serial, 3)
        res["s7_files_pending_0_s"] = round(at_files, 3)
        res["s7_rss_at_sync_mib"] = vm_hwm_mib(replica)
        res["s7_samples"] = samples
        res["s7_per_thousand"] = per_thousand(samples, target)
        # The summary is of whole thousands only: a part at either end is a
        # few samples at 0.2 s apart.
        rates = [
            r["entries_per_s"]
            for r in res["s7_per_thousand"]
            if r["entries_per_s"] and r["to"] - r["from"] == 1000 and r["from"] % 1000 == 0
        ]
        res["s7_entries_per_s"] = round(target / at_serial, 1) if at_serial else None
        if rates:
            res["s7_rate_first_thousand"] = rates[0]
            res["s7_rate_last_thousand"] = rates[-1]
            res["s7_rate_min"] = min(rates)
            res["s7_rate_max"] = max(rates)
            res["s7_rate_last_first"] = round(rates[-1] / rates[0], 2)
        self.say(
            f"7. replica serial {target} at {at_serial:.2f}s ({res['s7_entries_per_s']} entries/s), no file "
            f"pending at {at_files:.2f}s; per thousand: "
            + ", ".join(f"{r['from']}: {r['entries_per_s']}" for r in res["s7_per_thousand"])
        )
        t1 = time.perf_counter()
        bad = 0
        for path, sha in shas:  # type: ignore[misc]
            status, raw = rconn.request("GET", path)
            if status != 200 or hashlib.sha256(raw).hexdigest() != sha:
                bad += 1
        res["s7_verify_s"] = round(time.perf_counter() - t1, 2)
        res["s7_files_wrong"] = bad
        res["s7_rss_end_mib"] = vm_hwm_mib(replica)
        self.say(
            f"7. {count} files fetched from the replica in {res['s7_verify_s']}s, {bad} wrong or missing; "
            f"replica VmHWM {res['s7_rss_end_mib']} MiB"
        )
        rconn.close()


def per_thousand(samples: list[tuple[float, int, int | None]], target: int) -> list[dict]:
    """
    When the serial passed each multiple of 1,000 (interpolated linearly
    between the samples), and the entries per second in between.
    """

    def crossing(serial: int) -> float | None:
        prev = None
        for t, s, _ in samples:
            if s >= serial:
                if prev is None or prev[1] == s:
                    return t
                pt, ps = prev
                return pt + (t - pt) * (serial - ps) / (s - ps)
            prev = (t, s)
        return None

    start = next((s for _, s, _ in samples if s >= 0), 0)
    marks = [start, *range((start // 1000 + 1) * 1000, target, 1000), target]
    out = []
    for a, b in zip(marks, marks[1:], strict=False):
        ta, tb = crossing(a), crossing(b)
        rate = round((b - a) / (tb - ta), 1) if ta is not None and tb is not None and tb > ta else None
        out.append({"from": a, "to": b, "t_from_s": rnd(ta), "t_to_s": rnd(tb), "entries_per_s": rate})
    return out


def rnd(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


# ---------------------------------------------------------------- report

#: (key, label) of the table's rows.
ROWS = (
    ("setup_upload_rate", "setup: uploads/s to the primary (one client, token auth)"),
    ("replica_init_s", "devpi-init of the replica s (not in the times below)"),
    ("s1_up_s", "1. initial sync: replica answers /+status after its start s"),
    ("s1_serial_s", "1. initial sync of the uploads: serial equals the primary's s"),
    ("s1_files_s", "1. initial sync: every file served and verified s"),
    ("s2_upload_p50_ms", "2. live: upload p50 ms (primary)"),
    ("s2_listed_p50_ms", "2. live lag: simple page lists it, p50 ms"),
    ("s2_listed_max_ms", "2. live lag: simple page lists it, max ms"),
    ("s2_served_p50_ms", "2. live lag: file served and verified, p50 ms"),
    ("s2_served_p90_ms", "2. live lag: file served and verified, p90 ms"),
    ("s2_served_max_ms", "2. live lag: file served and verified, max ms"),
    ("s3_primary_stop_s", "3. primary stop s"),
    ("s3_primary_start_s", "3. primary start until /+api answers s"),
    ("s3_upload_ms", "3. upload after the restart ms (from answering to its 200)"),
    ("s3_follow_s", "3. restarted primary: from answering until the replica serves the upload s"),
    ("s3_after_upload_s", "3.   of which after the upload's 200 s"),
    ("s4_replica_stop_s", "4. replica stop s"),
    ("s4_up_s", "4. restarted replica answers /+status s"),
    ("s4_serial_s", "4. missed uploads: serial equals the primary's s"),
    ("s4_files_s", "4. missed uploads: files served and verified s"),
    ("replica_requests", "5. answers from the replica (all requests)"),
    ("replica_5xx", "5. 5xx answers from the replica"),
    ("background_requests", "5.   of them background polls (3 and 4)"),
    ("background_5xx", "5.   5xx among the background polls"),
    ("background_refused", "5.   connection errors of the polls (replica down)"),
    ("replica_conn_errors", "connection errors in all (replica starting or down)"),
    ("replica_rss_first_mib", "6. replica VmHWM MiB, first process (1-3)"),
    ("replica_rss_end_mib", "6. replica VmHWM MiB, restarted process (4)"),
    ("replica_rss_max_mib", "6. replica peak RSS MiB"),
    ("primary_rss_end_mib", "primary VmHWM MiB (after its restart)"),
)

BIG_ROWS = (
    ("s7_uploads", "uploads (projects x versions)"),
    ("s7_build_rate", "build: uploads/s to the primary (4 clients, Basic auth)"),
    ("s7_primary_serial", "primary serial"),
    ("s7_serial_s", "replica: serial equals the primary's s"),
    ("s7_entries_per_s", "replica: entries/s overall (its start included)"),
    ("s7_rate_first_thousand", "entries/s, first whole thousand serials"),
    ("s7_rate_last_thousand", "entries/s, last whole thousand serials"),
    ("s7_rate_min", "entries/s, slowest thousand"),
    ("s7_rate_max", "entries/s, fastest thousand"),
    ("s7_rate_last_first", "last / first whole thousand"),
    ("s7_files_pending_0_s", "replica: no file pending s"),
    ("s7_verify_s", "then every file fetched from the replica and checked s"),
    ("s7_files_wrong", "files wrong or missing"),
    ("s7_rss_at_sync_mib", "replica VmHWM MiB at sync"),
    ("s7_rss_end_mib", "replica VmHWM MiB after the fetches"),
)


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def target_cell(key: str) -> str:
    if key not in TARGETS:
        return ""
    op, value = TARGETS[key]
    return {"<=": "≤ ", "<": "< ", "==": ""}[op] + fmt(value)


def met(key: str, value) -> str:
    if key not in TARGETS or not isinstance(value, int | float):
        return ""
    op, limit = TARGETS[key]
    ok = {"<=": value <= limit, "<": value < limit, "==": value == limit}[op]
    return " ✓" if ok else " ✗"


def table(runs: dict[str, dict]) -> str:
    tx, dv = runs.get("devpi-tx", {}), runs.get("devpi-server", {})
    out = [
        "| measurement | devpi-tx | devpi-server | devpi-server / devpi-tx | target | devpi earlier |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in ROWS:
        a, b = tx.get(key), dv.get(key)
        if a is None and b is None:
            continue
        ratio = "-"
        if isinstance(a, int | float) and isinstance(b, int | float) and a and key != "replica_5xx":
            ratio = f"{b / a:.1f}x"
        out.append(
            f"| {label} | {fmt(a)}{met(key, a)} | {fmt(b)}{met(key, b)} | {ratio} | {target_cell(key)} | "
            f"{DEVPI_EARLIER.get(key, '')} |"
        )
    return "\n".join(out)


def big_table(res: dict) -> str:
    out = ["| 7. devpi-tx, a new replica of a big state | value |", "|---|---|"]
    for key, label in BIG_ROWS:
        if key in res:
            out.append(f"| {label} | {fmt(res[key])} |")
    rows = res.get("s7_per_thousand") or []
    if rows:
        out.append("")
        out.append("| serials | entries/s |")
        out.append("|---|---|")
        for r in rows:
            out.append(f"| {r['from']:,}-{r['to']:,} | {fmt(r['entries_per_s'])} |")
    return "\n".join(out)


# ---------------------------------------------------------------- main


def _sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devpi-tx-venv", default=default_tx_venv(), help="venv with devpi-tx (twistd)")
    ap.add_argument(
        "--peers-venv",
        default=os.environ.get("BENCH_PEERS_VENV") or "/work/peers-venv",
        help="venv with devpi-server (default: $BENCH_PEERS_VENV or /work/peers-venv)",
    )
    ap.add_argument("--skip-devpi", action="store_true", help="devpi-tx only")
    ap.add_argument("--skip-big", action="store_true", help="leave out scenario 7")
    ap.add_argument("--quick", action="store_true", help="60 initial, 20 live, 20 missed, 200 x 10 for 7")
    ap.add_argument("--initial", type=int, default=300, help="uploads before the replica starts (300)")
    ap.add_argument("--live", type=int, default=100, help="uploads of the live-lag scenario (100)")
    ap.add_argument("--missed", type=int, default=20, help="uploads while the replica is down (20)")
    ap.add_argument("--big-projects", type=int, default=1000, help="projects of scenario 7 (1000)")
    ap.add_argument("--big-versions", type=int, default=10, help="versions per project of scenario 7 (10)")
    ap.add_argument("--poll-ms", type=float, default=2.0, help="pause between the live-lag polls (2 ms)")
    ap.add_argument("--workdir", help="scratch dir (default: a new temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (server dirs, logs)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.initial, args.live, args.missed, args.big_projects = 60, 20, 20, 200
    if not 1 <= args.initial <= 5000 or not 1 <= args.live <= 5000 or not 1 <= args.missed <= 5000:
        ap.error("--initial, --live, --missed: 1 to 5,000")
    if not 1 <= args.big_projects <= 10_000 or not 1 <= args.big_versions <= 100:
        ap.error("--big-projects: 1 to 10,000; --big-versions: 1 to 100")
    if not 0 <= args.poll_ms <= 1000:
        ap.error("--poll-ms: 0 to 1000")
    if not (Path(args.devpi_tx_venv) / "bin" / "twistd").exists():
        ap.error(f"no twistd in {args.devpi_tx_venv}/bin (use --devpi-tx-venv)")
    if not args.skip_devpi and not (Path(args.peers_venv) / "bin" / "devpi-server").exists():
        ap.error(f"no devpi-server in {args.peers_venv}/bin (use --peers-venv or --skip-devpi)")
    sys.setswitchinterval(0.001)
    signal.signal(signal.SIGTERM, _sigterm)
    base = Path(args.workdir).resolve() if args.workdir else None
    if base:
        base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-replication-", dir=base))
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k not in ("json", "workdir", "keep")},
        "targets": {k: list(v) for k, v in TARGETS.items()},
        "devpi_earlier": DEVPI_EARLIER,
        "runs": {},
    }
    kinds = ["devpi-tx"] + ([] if args.skip_devpi else ["devpi-server"])
    failed = False
    t_all = time.perf_counter()
    for kind in kinds:
        side = Side(kind, workdir, args)
        print(f"{kind}:", flush=True)
        t0 = time.perf_counter()
        try:
            side.run(big=kind == "devpi-tx" and not args.skip_big)
        except KeyboardInterrupt:
            print("interrupted; stopping the servers", file=sys.stderr)
            failed = True
        except Exception as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            for n in side.nodes:
                print(f"--- last lines of {n.logfile}:\n{n.log_tail()}", file=sys.stderr)
            failed = True
        finally:
            side.stop_all()
        side.res["wall_s"] = round(time.perf_counter() - t0, 1)
        results["runs"][kind] = side.res
        if failed:
            break
    results["wall_s"] = round(time.perf_counter() - t_all, 1)
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.keep or failed:
        print(f"scratch dir kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    runs = results["runs"]
    if runs:
        m = results["machine"]
        print()
        print(
            f"{results['date']}, {m['cpus']} CPUs, Python {m['python']}, "
            + ", ".join(f"{k} {r.get('version')}" for k, r in runs.items())
            + f", {results['wall_s']:.0f} s, load average {m['loadavg_start'][0]} -> {m['loadavg_end'][0]}"
        )
        print()
        print(table(runs))
        if "s7_serial_s" in runs.get("devpi-tx", {}):
            print()
            print(big_table(runs["devpi-tx"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

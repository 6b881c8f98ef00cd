"""
Servers for the scale-out tests: a throwaway PostgreSQL cluster and an
S3-compatible object store (moto's server mode), each started once per
test session on an ephemeral loopback port and stopped at its end.

`.ci/run` installs PostgreSQL (Debian's package) and the test extras
install moto; where either is missing the tests that need it are skipped
with the reason (say, on a laptop without PostgreSQL).  Nothing here
reaches beyond 127.0.0.1.

Use the fixtures C{pg_dsn} (a fresh, empty database per test) and
C{s3_endpoint} (a fresh bucket per test), both marked C{scaleout}.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import attrs
import pytest


class Unavailable(Exception):
    """
    A server the scale-out tests need cannot be started here; the message
    says why (the fixtures skip with it, a benchmark stops with it).
    """


def free_port() -> int:
    """
    A loopback port nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def postgres_bindir() -> str | None:
    """
    The directory of PostgreSQL's server programs (initdb, postgres,
    pg_ctl): on the PATH, else Debian's versioned directory.
    """
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


@attrs.frozen
class PostgresCluster:
    """
    A running PostgreSQL server for the tests, trusting local connections
    of role C{devpi}.
    """

    port: int
    datadir: str
    bindir: str
    run_as: str | None

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://devpi@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """
        A new empty database; its DSN.
        """
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def _ctl(self, *args: str) -> None:
        command = [os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, *args]
        subprocess.run(_as_user(command, self.run_as), check=True, capture_output=True, timeout=60)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode, "-w")

    def start(self) -> None:
        self._ctl("start", "-w", "-l", os.path.join(self.datadir, "server.log"))


def _as_user(command: list[str], user: str | None) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", user, "--", *command] if user else command


def start_postgres() -> PostgresCluster:
    """
    Start a throwaway cluster in a new temporary directory.

    @raise Unavailable: PostgreSQL or psycopg is not installed.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise Unavailable("PostgreSQL's server programs (initdb) are not installed; .ci/run installs them")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed (pip install -e '.[test]')") from None
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no postgres user to run PostgreSQL as") from None
        run_as = "postgres"
    top = tempfile.mkdtemp(prefix="devpi-tx-pg-")
    datadir = os.path.join(top, "data")
    if run_as:
        shutil.chown(top, user=run_as)
    subprocess.run(
        _as_user(
            [os.path.join(bindir, "initdb"), "-D", datadir, "-U", "devpi", "--auth=trust", "-E", "UTF8"],
            run_as,
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    with open(os.path.join(datadir, "postgresql.conf"), "a") as conf:
        conf.write(
            f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{top}'\n"
            "max_connections = 200\nfsync = on\nshared_buffers = 32MB\n"
        )
    cluster = PostgresCluster(port=port, datadir=datadir, bindir=bindir, run_as=run_as)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    try:
        cluster = start_postgres()
    except Unavailable as e:
        pytest.skip(str(e))
    try:
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except Exception:
            pass
        shutil.rmtree(os.path.dirname(cluster.datadir), ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_cluster: PostgresCluster) -> str:
    """
    The DSN of a new empty database on the session's PostgreSQL server.
    """
    return pg_cluster.create_database()


@attrs.frozen
class S3Server:
    """
    A running S3-compatible server; C{env} holds the standard AWS variables
    that point a client at it.
    """

    endpoint: str
    process: subprocess.Popen

    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region_name=self.env["AWS_DEFAULT_REGION"],
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def create_bucket(self) -> str:
        name = "b-" + uuid.uuid4().hex[:16]
        self.client().create_bucket(Bucket=name)
        return name


def start_s3() -> S3Server:
    """
    Start moto's S3 server on a free loopback port.

    @raise Unavailable: moto or boto3 is not installed.
    """
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        raise Unavailable("moto[server] and boto3 are not installed (pip install -e '.[test]')") from None
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, "moto server")
    except BaseException:
        proc.kill()
        raise
    return S3Server(endpoint=f"http://127.0.0.1:{port}", process=proc)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    try:
        server = start_s3()
    except Unavailable as e:
        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch) -> tuple[S3Server, str]:
    """
    A new empty bucket on the session's S3 server, with the standard AWS
    variables set to reach it (AWS_ENDPOINT_URL among them).
    """
    for name, value in S3Server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    return s3_server, s3_server.create_bucket()

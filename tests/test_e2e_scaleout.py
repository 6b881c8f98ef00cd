"""
Two devpi-tx nodes on one state (PostgreSQL) and one file store (S3, moto's
server), each a real process with its own server directory and the same
secret file, after C{devpi-tx init --storage ... --files ...} run once:
twine uploads to one node and pip installs from the other; concurrent
uploads split across both lose nothing; a node killed in the middle of an
upload leaves nothing visible; the database restarted under load gives
503s while it is down and the nodes recover without a restart.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.distfiles import make_wheel, upload_form
from tests.scaleout import PostgresCluster, S3Server
from tests.serverproc import ServerProcess
from tests.test_e2e_private_index import ALICE_PW, BIN, Tools, basic, http, write

pytestmark = [pytest.mark.e2e, pytest.mark.scaleout]

STAGE = "alice/dev"
ALICE = basic("alice", ALICE_PW)


class Cluster:
    """
    The shared state, the store and two nodes.
    """

    def __init__(self, workdir: Path, dsn: str, s3: S3Server, bucket: str) -> None:
        self.dsn = dsn
        self.s3 = s3
        self.bucket = bucket
        self.env = {**S3Server.env, "AWS_ENDPOINT_URL": s3.endpoint}
        secret = workdir / "secret"
        secret.write_bytes(base64.b64encode(os.urandom(32)))
        secret.chmod(0o600)
        self.shared = ("--storage", dsn, "--files", f"s3://{bucket}/files", "--secretfile", str(secret))
        init = subprocess.run(
            [
                sys.executable,
                "-m",
                "devpi_tx.cli.main",
                "init",
                "--serverdir",
                str(workdir / "a" / "serverdir"),
            ]
            + list(self.shared),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert init.returncode == 0, init.stdout + init.stderr
        self.a = ServerProcess(workdir / "a", self.shared, env=self.env)
        self.b = ServerProcess(workdir / "b", self.shared, env=self.env)

    def objects(self) -> list[str]:
        listed = self.s3.client().list_objects_v2(Bucket=self.bucket, Prefix="files/")
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def unfinished_uploads(self) -> list:
        return self.s3.client().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])

    def serials(self) -> list[int]:
        with psycopg.connect(self.dsn) as conn:
            return [row[0] for row in conn.execute("SELECT serial FROM devpi_changelog ORDER BY serial")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pg_cluster: PostgresCluster, s3_server: S3Server) -> Iterator[Cluster]:
    made = Cluster(
        tmp_path_factory.mktemp("scaleout"),
        pg_cluster.create_database(),
        s3_server,
        s3_server.create_bucket(),
    )
    made.a.start()
    made.b.start()
    try:
        reply = http("PUT", f"{made.a.url}/alice", b'{"password": "%s"}' % ALICE_PW.encode())
        assert reply.status == 201, reply.text
        reply = http("PUT", f"{made.b.url}/{STAGE}", b'{"bases": []}', ALICE)
        assert reply.status == 200, reply.text
        yield made
    finally:
        made.a.stop()
        made.b.stop()


def upload(node: ServerProcess, name: str, version: str, payload: bytes = b"") -> int:
    return upload_wheel(node, name, version, make_wheel(name, version, payload=payload))


def upload_wheel(node: ServerProcess, name: str, version: str, wheel: tuple[str, bytes]) -> int:
    content_type, body = upload_form(name, version, *wheel)
    return http("POST", f"{node.url}/{STAGE}/", body, {"Content-Type": content_type, **ALICE}).status


def key_of(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"files/{digest[:3]}/{digest[3:]}"


def versions(node: ServerProcess, project: str) -> list[str]:
    reply = http("GET", f"{node.url}/{STAGE}/{project}", headers={"Accept": "application/json"})
    return sorted(reply.json()["result"]) if reply.status == 200 else []


def test_twine_to_one_node_pip_from_the_other(cluster: Cluster, tmp_path: Path) -> None:
    tools = Tools(tmp_path)
    dist = write(tmp_path, make_wheel("shared-pkg", "1.0"))
    uploaded = tools.twine(f"{cluster.a.url}/{STAGE}/", dist)
    assert uploaded.returncode == 0, uploaded
    target = tmp_path / "site"
    tools.ok(
        BIN / "python", "-m", "pip", "install", "--no-deps", "--target", target,
        "--index-url", f"{cluster.b.url}/{STAGE}/+simple/", "shared-pkg==1.0",
    )  # fmt: skip
    assert (target / "shared_pkg.py").read_text().startswith("VERSION = '1.0'")
    assert key_of(dist.path.read_bytes()) in cluster.objects()


def test_concurrent_uploads_across_both_nodes_lose_nothing(cluster: Cluster) -> None:
    before = set(cluster.objects())
    nodes = [cluster.a, cluster.b] * 4
    wheels = [make_wheel("busy", f"1.{n}", payload=os.urandom(16)) for n in range(8)]

    def send(n: int) -> int:
        return upload_wheel(nodes[n], "busy", f"1.{n}", wheels[n])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert statuses == [200] * 8
    expected = [f"1.{n}" for n in range(8)]
    deadline = time.monotonic() + 10
    while versions(cluster.b, "busy") != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert versions(cluster.a, "busy") == versions(cluster.b, "busy") == expected
    serials = cluster.serials()
    assert serials == list(range(len(serials)))
    added = set(cluster.objects()) - before
    # Each wheel stored once under its digest (and its METADATA, when made).
    assert {key_of(data) for _, data in wheels} <= added
    assert len(added) <= 16
    assert cluster.unfinished_uploads() == []


def test_a_node_killed_mid_upload_leaves_nothing_visible(cluster: Cluster) -> None:
    before = cluster.objects()
    serial = cluster.serials()[-1]
    filename, data = make_wheel("half", "1.0", payload=os.urandom(200_000))
    content_type, body = upload_form("half", "1.0", filename, data)
    auth = ALICE["Authorization"]
    with socket.create_connection(("127.0.0.1", cluster.a.port)) as sock:
        head = (
            f"POST /{STAGE}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Authorization: {auth}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(0.2)
        cluster.a._signal(9)
        cluster.a.stop()
    assert versions(cluster.b, "half") == []
    assert cluster.objects() == before
    assert cluster.serials()[-1] == serial
    cluster.a.start()
    assert upload(cluster.a, "half", "1.0") == 200
    assert versions(cluster.b, "half") == ["1.0"] or _eventually(
        lambda: versions(cluster.b, "half") == ["1.0"]
    )


def _eventually(check, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_the_database_restarted_under_load(cluster: Cluster, pg_cluster: PostgresCluster) -> None:
    assert upload(cluster.a, "steady", "1.0") == 200
    pg_cluster.stop()
    try:
        for node in (cluster.a, cluster.b):
            filename, data = make_wheel("steady", "2.0")
            content_type, body = upload_form("steady", "2.0", filename, data)
            headers = {"Content-Type": content_type, "Accept": "application/json", **ALICE}
            reply = http("POST", f"{node.url}/{STAGE}/", body, headers)
            assert reply.status == 503, reply.text
            message = reply.json()["message"]
            assert message.startswith("state unavailable: ") and "\n" not in message, message
    finally:
        pg_cluster.start()
    assert _eventually(lambda: upload(cluster.b, "steady", "2.0") == 200)
    assert _eventually(lambda: upload(cluster.a, "steady", "3.0") == 200)
    assert _eventually(lambda: versions(cluster.b, "steady") == ["1.0", "2.0", "3.0"])
    assert cluster.a.log_text().count("Traceback") == 0


def test_a_request_echoing_the_serial_reads_its_write_on_the_other_node(cluster: Cluster) -> None:
    filename, data = make_wheel("echoed", "1.0")
    content_type, body = upload_form("echoed", "1.0", filename, data)
    reply = http("POST", f"{cluster.a.url}/{STAGE}/", body, {"Content-Type": content_type, **ALICE})
    assert reply.status == 200, reply.text
    serial = reply.headers["X-Devpi-Serial"]
    page = http("GET", f"{cluster.b.url}/{STAGE}/+simple/echoed/", headers={"X-Devpi-Serial": serial})
    assert page.status == 200 and filename in page.text
    assert int(page.headers["X-Devpi-Serial"]) >= int(serial)

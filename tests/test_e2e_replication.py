"""
Replication end to end: a primary and a replica, each a twistd subprocess
on a loopback port, sharing a secret file, with a fake upstream for the
primary's root/pypi.  Uploads with twine to the primary are installed with
pip from the replica; devpi-client and twine work through the replica; the
replica keeps serving reads while the primary is down and follows it again
once it is back; a replica that was down catches up; a file the primary
serves with the wrong bytes is never kept.

The tests run in file order and build on each other's state.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import pytest

from tests.distfiles import make_wheel
from tests.serverproc import DevpiClient, ServerProcess
from tests.test_e2e_mirror import PROJECTS, upstream  # noqa: F401 (a fixture)
from tests.test_e2e_private_index import ALICE_PW, Tools, pip_download, write

pytestmark = pytest.mark.e2e

#: How long the replica may take to follow, in seconds (it takes
#: milliseconds; the bound is for a loaded machine).
FOLLOW_TIMEOUT = 20.0


def call(
    url: str,
    method: str = "GET",
    body: object = None,
    auth: tuple[str, str] | None = None,
    accept: str = "application/json",
):
    """
    One request; the status, headers and body (JSON decoded if it is).
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", accept)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, headers, raw = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw


def twine(tools: Tools, url: str, *dists) -> None:
    result = tools.twine(url, *dists)
    assert result.returncode == 0, result


def status(server: ServerProcess) -> dict:
    code, _, body = call(f"{server.url}/+status")
    assert code == 200, body
    return body["result"]


def wait_until(what: str, check, timeout: float = FOLLOW_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def in_sync(primary: ServerProcess, replica: ServerProcess) -> bool:
    want = status(primary)["serial"]
    got = status(replica)
    return got["serial"] == want and got["replica-files-pending"] == 0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("replication")


@pytest.fixture(scope="module")
def secret(workdir: Path) -> Path:
    path = workdir / "secret"
    path.write_bytes(base64.b64encode(os.urandom(32)))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def primary(workdir: Path, secret: Path, upstream) -> ServerProcess:  # noqa: F811
    _, url = upstream
    server = ServerProcess(
        workdir / "primary", ("--role", "primary", "--secretfile", str(secret), "--mirror-url", url)
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replica(workdir: Path, secret: Path, primary: ServerProcess) -> ServerProcess:
    server = ServerProcess(
        workdir / "replica",
        ("--primary-url", primary.url, "--secretfile", str(secret), "--proxy-timeout", "10"),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tools(workdir: Path) -> Tools:
    return Tools(workdir / "tools")


@pytest.fixture(scope="module")
def dist(workdir: Path) -> Path:
    return workdir / "dist"


def test_the_replica_follows_the_primary_from_an_empty_directory(primary, replica) -> None:
    wait_until("the replica has the primary's state", lambda: in_sync(primary, replica))
    found = status(replica)
    assert found["role"] == "REPLICA" and found["primary-uuid"] == status(primary)["uuid"]
    nodeinfo = json.loads((replica.serverdir / ".nodeinfo").read_text())
    assert nodeinfo["role"] == "replica" and nodeinfo["primary-uuid"] == found["primary-uuid"]
    polling = status(primary)["polling_replicas"]
    assert found["uuid"] in polling
    assert found["replica-serials-behind"] == 0 and found["replica-lag-seconds"] == 0
    code, _, _ = call(f"{replica.url}/+status?max-lag=5")
    assert code == 200
    code, _, _ = call(f"{replica.url}/+status?max-lag=soon")
    assert code == 400


def test_devpi_and_twine_work_through_the_replica(primary, replica, tools, dist, workdir) -> None:
    client = DevpiClient(workdir / "devpi")
    client.ok("use", replica.url)
    client.ok("user", "-c", "alice", f"password={ALICE_PW}", "email=alice@example.com")
    client.ok("login", "alice", "--password", ALICE_PW)
    client.ok("index", "-c", "dev", "bases=root/pypi", "volatile=True")
    wheel = write(dist, make_wheel("repl-a", "1.0"))
    twine(tools, f"{replica.url}/alice/dev/", wheel)
    # Read-your-writes: the replica answered once it had the upload.
    code, _, body = call(f"{replica.url}/alice/dev/repl-a")
    assert code == 200 and "1.0" in body["result"]
    code, _, body = call(f"{primary.url}/alice/dev/repl-a")
    assert code == 200 and "1.0" in body["result"]


def test_uploads_to_the_primary_install_from_the_replica(primary, replica, tools, dist, workdir) -> None:
    wheel = write(dist, make_wheel("repl-b", "2.0"))
    twine(tools, f"{primary.url}/alice/dev/", wheel)
    wait_until("the replica has the upload", lambda: in_sync(primary, replica))
    target = workdir / "download-b"
    result = pip_download(tools, f"{replica.url}/alice/dev/+simple/", "repl-b==2.0", target)
    assert result.returncode == 0, result
    assert (target / wheel.name).read_bytes() == wheel.data


def test_a_mirror_page_is_fetched_by_the_primary_and_served_by_the_replica(primary, replica) -> None:
    project = PROJECTS[0]
    before = status(primary)["serial"]
    code, _, body = call(f"{replica.url}/root/pypi/+simple/{project}/", accept="text/html")
    assert code == 200, body
    assert f"{project.replace('-', '_')}-" in body.decode()
    # The primary fetched and committed it; the replica answered once it
    # had that commit.
    after = status(primary)["serial"]
    assert after > before and status(replica)["serial"] >= after


def test_reads_go_on_while_the_primary_is_down_and_sync_resumes(primary, replica, tools, dist) -> None:
    primary.stop()
    code, _, body = call(f"{replica.url}/alice/dev/+simple/repl-b/", accept="text/html")
    assert code == 200
    code, _, body = call(
        f"{replica.url}/alice", method="PATCH", body={"email": "x@example.com"}, auth=("alice", ALICE_PW)
    )
    assert code in (502, 503, 504), (code, body)
    primary.start()
    wheel = write(dist, make_wheel("repl-c", "1.0"))
    twine(tools, f"{primary.url}/alice/dev/", wheel)
    wait_until("the replica follows the restarted primary", lambda: in_sync(primary, replica))


def test_a_replica_that_was_down_catches_up(primary, replica, tools, dist) -> None:
    replica.stop()
    wheels = [write(dist / "many", make_wheel("repl-many", f"1.{n}")) for n in range(20)]
    twine(
        tools,
        f"{primary.url}/alice/dev/",
        *wheels,
    )
    replica.start()
    wait_until("the restarted replica caught up", lambda: in_sync(primary, replica))
    code, _, body = call(f"{replica.url}/alice/dev/repl-many")
    assert code == 200 and len(body["result"]) == 20


def test_a_file_the_primary_serves_damaged_is_not_kept(primary, replica, tools, dist) -> None:
    replica.stop()
    wheel = write(dist, make_wheel("repl-bad", "1.0"))
    twine(tools, f"{primary.url}/alice/dev/", wheel)
    stored = primary.serverdir / "+files" / wheel.sha256[:3] / wheel.sha256[3:]
    assert stored.read_bytes() == wheel.data
    stored.write_bytes(b"X" * len(wheel.data))
    replica.start()
    wait_until(
        "the replica reports the damaged file",
        lambda: (
            status(replica)["serial"] == status(primary)["serial"] and status(replica)["replication-errors"]
        ),
    )
    assert not (replica.serverdir / "+files" / wheel.sha256[:3] / wheel.sha256[3:]).exists()
    code, _, page = call(
        f"{replica.url}/alice/dev/+simple/repl-bad/", accept="application/vnd.pypi.simple.v1+json"
    )
    assert code == 200
    [link] = page["files"]
    # Asked for, it is fetched again, damaged again, and refused.
    code, _, body = call(urljoin(f"{replica.url}/alice/dev/+simple/repl-bad/", link["url"]), accept="*/*")
    assert code == 502 and b"sha256 mismatch" in body


def test_a_replica_stops_when_its_primary_is_another(primary, replica, secret, upstream, workdir) -> None:  # noqa: F811
    _, url = upstream
    primary.stop()
    other = ServerProcess(
        workdir / "other-primary",
        ("--role", "primary", "--secretfile", str(secret), "--mirror-url", url),
        port=primary.port,
    )
    other.start()
    try:
        wait_until("the replica exits", lambda: replica._proc.poll() is not None)
        assert replica.stop() == 3
        assert "replication stopped" in replica.log_text() and "primary_uuid" in replica.log_text()
    finally:
        other.stop()

"""
A replica's sync and file replication against a real devpi-tx primary in
memory (its site, its changelog routes and its files), on one clock.
"""

from __future__ import annotations

import hashlib

import pytest
from treq.client import HTTPClient

from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.model import releases
from devpi_tx.replica.files import FileReplicator
from devpi_tx.replica.primary import PrimaryLink
from devpi_tx.replica.sync import ReplicaSync
from devpi_tx.storage.files import LocalFileStore
from devpi_tx.storage.sqlite import SQLiteStorage

from .conftest import synchronous
from .distfiles import make_sdist, make_wheel, upload_form
from .memhttp import in_memory_agent
from .primaryserver import REPLICA, Server


def rows(storage) -> list[tuple]:
    """
    The whole changelog as stored: serials, times and entry texts.
    """
    return [tuple(frame) for frame in storage.changelog_frames(0, 1 << 40)]


def upload(server: Server, auth: dict, name: str, version: str, filename: str, data: bytes) -> None:
    content_type, body = upload_form(name, version, filename, data)
    answer = server.client.request(
        "POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **auth}, accept=None
    )
    assert answer.code == 200, answer.body
    server.context.derived_blobs.flush()  # the wheel's METADATA, as half a second later


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.scaleout)])
def primary_storage(request) -> str | None:
    """
    The primary's state: SQLite, or PostgreSQL (replication keeps working
    with a primary whose state is shared by several nodes).
    """
    return None if request.param == "sqlite" else request.getfixturevalue("pg_dsn")


def test_a_replica_follows_a_real_primary(tmp_path, primary_storage):
    server = Server(tmp_path, storage=primary_storage)
    client, clock = server.client, server.clock
    root = client.login("root", "rootpw")
    assert client.request("PUT", "/alice", {"password": "secret"}, headers=root).code == 201
    alice = client.login("alice", "secret")
    assert client.request("PUT", "/alice/dev", {"type": "stage"}, headers=alice).code < 300
    wheel_name, wheel = make_wheel("pkg", "1.0")
    upload(server, alice, "pkg", "1.0", wheel_name, wheel)

    nodeinfo: dict = {}
    storage = SQLiteStorage(str(tmp_path / "replica.sqlite"))
    files = LocalFileStore(str(tmp_path / "replica-files"))
    http = UpstreamHTTP(HTTPClient(in_memory_agent(client.connections, clock)), clock)
    link = PrimaryLink(
        "http://127.0.0.1:3141",
        REPLICA,
        token=lambda: server.tokens.issue(REPLICA),
        load_primary_uuid=lambda: nodeinfo.get("primary-uuid"),
        save_primary_uuid=lambda uuid: nodeinfo.__setitem__("primary-uuid", uuid),
    )
    replicator = FileReplicator(storage, files, http, link, clock=clock, run_in_thread=synchronous)
    fatal: list[str] = []
    sync = ReplicaSync(storage, http, link, clock=clock, on_fatal=fatal.append, files=replicator)
    replicator.startService()
    sync.startService()

    def pump() -> None:
        for _ in range(10):
            client.flush()
            clock.advance(0)

    pump()
    assert (fatal, sync.errors, replicator.errors) == ([], [], [])
    assert nodeinfo["primary-uuid"] == server.context.uuid
    assert rows(storage) == rows(server.storage)
    assert sync.streaming and sync.in_sync_at is not None
    wheel_entry = storage.get(releases.file_key(releases.relpath("alice/dev", _sha(wheel), wheel_name)))
    assert files.exists(_sha(wheel)) and files.exists(wheel_entry["core_metadata_sha256"])

    # Later commits arrive on the open stream, their files after them.
    sdist_name, sdist = make_sdist("pkg", "1.0")
    upload(server, alice, "pkg", "1.0", sdist_name, sdist)
    pump()
    assert storage.serial == server.storage.serial
    assert rows(storage) == rows(server.storage)
    assert files.exists(_sha(sdist))
    assert replicator.pending == 0 and replicator.files_in_sync_at is not None
    assert (fatal, sync.errors, replicator.errors) == ([], [], [])

    stop(server, sync)
    replicator.stopService()
    storage.close()


def stop(server: Server, sync: ReplicaSync) -> None:
    """
    The primary ends its streams first (as when it stops), so that no
    connection is dropped in the middle of one.
    """
    server.feed.stop()
    for _ in range(5):
        server.client.flush()
        server.clock.advance(0)
    assert not sync.streaming
    sync.stopService()
    server.client.flush()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_refusals_of_a_real_primary(tmp_path):
    server = Server(tmp_path)
    client, clock = server.client, server.clock
    http = UpstreamHTTP(HTTPClient(in_memory_agent(client.connections, clock)), clock)
    storage = SQLiteStorage(str(tmp_path / "replica.sqlite"))
    tokens = {"value": "not.a-token.at-all"}
    nodeinfo = {"primary-uuid": "f" * 32}
    link = PrimaryLink(
        "http://127.0.0.1:3141",
        REPLICA,
        token=lambda: tokens["value"],
        load_primary_uuid=lambda: nodeinfo["primary-uuid"],
        save_primary_uuid=lambda uuid: nodeinfo.__setitem__("primary-uuid", uuid),
    )
    fatal: list[str] = []
    sync = ReplicaSync(storage, http, link, clock=clock, on_fatal=fatal.append)
    sync.startService()
    for _ in range(5):
        client.flush()
        clock.advance(0)
    refusal = f"expected {server.context.uuid} as primary_uuid, replica sent {'f' * 32}"
    assert fatal == [f"the primary refused this replica: {refusal}"]  # devpi's message, from the JSON
    sync.stopService()

    nodeinfo["primary-uuid"] = None
    sync = ReplicaSync(storage, http, link, clock=clock, on_fatal=fatal.append)
    sync.startService()
    client.flush()
    assert (
        sync.errors[-1]["message"]
        == "the primary refused the replica's credentials (403): Wrong authorization value."
    )
    tokens["value"] = server.tokens.issue(REPLICA)
    clock.advance(0.5)
    for _ in range(5):
        client.flush()
        clock.advance(0)
    assert storage.serial == server.storage.serial and sync.connected
    stop(server, sync)
    storage.close()

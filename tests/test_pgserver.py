"""
A server whose state is on PostgreSQL (C{--storage}): the option, init,
the start-up checks, a whole request cycle in process, and the 503 a
request gets while the state's database cannot be reached.
"""

from __future__ import annotations

import io
import os

import attrs
import psycopg
import pytest
from argon2 import PasswordHasher
from treq.testing import StubTreq
from twisted.internet import reactor

from devpi_tx.cli.main import main as devpi_tx_main
from devpi_tx.config import ConfigError, build_config
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.serverdir import read_nodeinfo
from devpi_tx.service import build_context
from devpi_tx.startup import check_state
from devpi_tx.storage.backends import check_storage
from devpi_tx.storage.errors import StorageUnavailable
from devpi_tx.storage.postgresql import PostgresStorage

from .conftest import Client, synchronous, synchronous_passwords
from .distfiles import make_wheel, upload_form


def test_storage_option_takes_postgresql_urls_only(tmp_path):
    config = build_config(
        {"serverdir": str(tmp_path), "storage": "postgres://devpi@127.0.0.1/devpi"}, environ={}
    )
    assert config.storage == "postgres://devpi@127.0.0.1/devpi"
    assert build_config({"serverdir": str(tmp_path)}, environ={}).storage is None
    with pytest.raises(ConfigError, match="^option storage: expected a postgresql:// URL") as raised:
        build_config({"serverdir": str(tmp_path), "storage": "mysql://u:pw@example.com/db"}, environ={})
    assert "pw" not in str(raised.value)
    env = {"DEVPISERVER_STORAGE": "postgresql://devpi@127.0.0.1/x"}
    assert build_config({"serverdir": str(tmp_path)}, environ=env).storage == env["DEVPISERVER_STORAGE"]
    with pytest.raises(ConfigError, match="environment variable DEVPISERVER_STORAGE"):
        build_config({"serverdir": str(tmp_path)}, environ={"DEVPISERVER_STORAGE": "/var/db"})


def test_a_503_with_one_line_while_the_state_is_unavailable(client, context, monkeypatch):
    from twisted.logger import globalLogPublisher

    def unavailable(key):
        raise StorageUnavailable("the state database postgresql://devpi@127.0.0.1/devpi is unavailable: down")

    monkeypatch.setattr(context.storage, "get", unavailable)
    monkeypatch.setattr(context.storage, "_encoded", unavailable)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        answer = client.get("/root/pypi")
        raw = client.get("/root/pypi/+simple/", accept="text/html")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert answer.code == 503
    assert answer.message == (
        "state unavailable: the state database postgresql://devpi@127.0.0.1/devpi is unavailable: down"
    )
    assert raw.code == 503
    assert not any(event.get("log_failure") for event in events)  # no traceback logged


def test_a_503_when_a_write_finds_the_state_unavailable(client, context, monkeypatch):
    """
    C{storage.write()} raising (PostgreSQL's begin or commit, in a thread)
    is the same one-line 503 as a read's.
    """
    from contextlib import asynccontextmanager

    write = context.storage.write

    @asynccontextmanager
    async def unavailable(durable: bool = True):
        # The body runs; the database goes away before the commit.
        async with write(durable) as tx:
            yield tx
            raise StorageUnavailable("the state database postgresql://devpi@127.0.0.1/devpi is busy")

    monkeypatch.setattr(context.storage, "write", unavailable)
    answer = client.request("PUT", "/alice", {"password": "alicepw", "email": "alice@example.com"})
    assert answer.code == 503
    assert answer.message.startswith("state unavailable: the state database postgresql://")
    assert context.storage.get("user/alice") is None


@pytest.mark.scaleout
def test_init_creates_the_schema_and_a_start_without_it_is_refused(tmp_path, pg_dsn, capsys, monkeypatch):
    serverdir = str(tmp_path / "server")
    config = build_config({"serverdir": serverdir, "storage": pg_dsn, "no-root-pypi": True}, environ={})
    # Not initialised: nothing to check yet (the first start initialises).
    check_state(config)
    with pytest.raises(Exception, match="holds no devpi-tx state"):
        PostgresStorage(pg_dsn)
    assert devpi_tx_main(["init", "--serverdir", serverdir, "--storage", pg_dsn, "--no-root-pypi"]) == 0
    assert "created user root" in capsys.readouterr().out
    storage = PostgresStorage(pg_dsn)
    assert storage.serial == 0 and storage.get("user/root")  # type: ignore[truthy-bool]
    # devpi-tx passwd writes the password there too, not into a SQLite file.
    monkeypatch.setattr("sys.stdin", io.StringIO("new root pw\n"))
    assert devpi_tx_main(["passwd", "root", "--serverdir", serverdir, "--storage", pg_dsn]) == 0
    storage.catch_up()
    assert PasswordHasher().verify(storage.get("user/root")["pwhash"], "new root pw")  # type: ignore[index]
    assert not os.path.exists(os.path.join(serverdir, ".sqlite"))
    storage.close()
    check_state(config)
    # The tables dropped behind the server's back: the start stops in one line.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE devpi_meta")
    with pytest.raises(
        ConfigError, match="^option storage: .* holds no devpi-tx state; create it with: devpi-tx init"
    ):
        check_state(config)


@pytest.mark.scaleout
def test_a_server_on_postgresql_serves_users_indexes_and_files(config, upstream, pg_dsn):
    context = build_context(
        attrs.evolve(config, storage=pg_dsn),
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(upstream), reactor),
        reactor=reactor,
    )
    try:
        assert isinstance(context.storage, PostgresStorage)
        client = Client(context)
        answer = client.request("PUT", "/alice", {"password": "alicepw", "email": "alice@example.com"})
        assert answer.code == 201, answer.body
        alice = client.login("alice", "alicepw")
        assert client.request("PUT", "/alice/dev", {"bases": ""}, headers=alice).code == 200
        filename, data = make_wheel("pkg-a", "1.0")
        content_type, body = upload_form("pkg-a", "1.0", filename, data)
        answer = client.request(
            "POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **alice}, accept=None
        )
        assert answer.code == 200, answer.body
        record = client.get("/alice/dev/pkg-a/1.0").json["result"]
        href = record["+links"][0]["href"].replace("http://127.0.0.1:3141", "")
        download = client.get(href, accept=None)
        assert (download.code, download.body) == (200, data)
        serial = context.storage.serial
    finally:
        context.close()
    # Another node on the same database sees it all.
    other = PostgresStorage(pg_dsn)
    assert other.serial == serial
    assert other.get("user/alice")["username"] == "alice"  # type: ignore[index]
    other.close()


@pytest.mark.scaleout
def test_the_service_tree_watches_other_nodes_commits(config, pg_dsn):
    from twisted.internet.testing import MemoryReactorClock

    from devpi_tx.service import make_service
    from devpi_tx.startup import FoundPlugins
    from devpi_tx.storage.coordination import LocalCoordinator

    reactor = MemoryReactorClock()
    config = attrs.evolve(config, storage=pg_dsn, listen=("tcp:0:interface=127.0.0.1",))
    # (PostgreSQL's coordinator works in threads, which this reactor does not run.)
    coordinator = LocalCoordinator("node")
    root = make_service(config, reactor, plugins=FoundPlugins([], [], []), coordinator=coordinator)
    names = [service.name for service in root]
    assert names[:2] == ["state", "state-watcher"]
    watcher = root.getServiceNamed("state-watcher")
    root.startService()
    assert watcher in reactor.getReaders()
    other = PostgresStorage(pg_dsn)
    with other.transaction() as tx:
        tx.set("from/other", 1)
    other.close()
    reactor.advance(1.0)
    assert watcher._storage.get("from/other") == 1
    root.stopService()
    assert watcher not in reactor.getReaders()


def test_the_coordinator_follows_the_state(config):
    from devpi_tx.storage.backends import coordinator_for
    from devpi_tx.storage.coordination import LocalCoordinator
    from devpi_tx.storage.pgcoordination import PostgresCoordinator

    local = coordinator_for(config, None, None, "node-a")
    assert isinstance(local, LocalCoordinator) and not local.shared
    shared_config = attrs.evolve(config, storage="postgresql://devpi@127.0.0.1:9/devpi")
    shared = coordinator_for(shared_config, None, None, "node-a")
    assert isinstance(shared, PostgresCoordinator) and shared.shared
    assert shared.holder == "node-a"


@pytest.mark.scaleout
def test_nodes_of_one_state_answer_with_one_uuid(config, upstream, pg_dsn, tmp_path):
    contexts = []
    try:
        for name in ("a", "b"):
            serverdir = tmp_path / name
            contexts.append(
                build_context(
                    attrs.evolve(config, storage=pg_dsn, serverdir=str(serverdir)),
                    passwords=synchronous_passwords(),
                    run_in_thread=synchronous,
                    upstream_http=UpstreamHTTP(StubTreq(upstream), reactor),
                    reactor=reactor,
                )
            )
        a, b = contexts
        own = [read_nodeinfo(str(tmp_path / name))["uuid"] for name in ("a", "b")]
        assert own[0] != own[1]
        assert a.uuid == b.uuid == own[0]
        answer = Client(b).get("/+api")
        assert answer.headers.getRawHeaders("X-Devpi-Uuid") == [own[0]]
    finally:
        for context in contexts:
            context.close()


def test_a_node_of_its_own_answers_with_its_own_uuid(context, config):
    assert context.uuid == read_nodeinfo(config.serverdir)["uuid"]


def test_a_url_libpq_cannot_parse_is_one_line_naming_the_option(config):
    bad = attrs.evolve(config, storage="postgresql://devpi:s3cret@127.0.0.1/devpi?sslmod=require")
    with pytest.raises(ConfigError, match="^option storage: not a valid PostgreSQL URL: ") as raised:
        check_storage(bad)
    assert "sslmod" in str(raised.value) and "s3cret" not in str(raised.value)


@pytest.mark.scaleout
def test_a_node_initialising_after_another_did_completes_instead_of_failing(config, pg_dsn):
    from devpi_tx.serverdir import _initial_state

    # Node B looked (empty state), then node A initialised, then B writes.
    first = PostgresStorage(pg_dsn, create=True)
    late = PostgresStorage(pg_dsn)
    try:
        done_a: list[str] = []
        _initial_state(first, attrs.evolve(config, no_root_pypi=True), "hash-a", done_a)
        done_b: list[str] = []
        _initial_state(late, attrs.evolve(config, no_root_pypi=True), "hash-b", done_b)
        assert done_a == ["created user root"]
        assert done_b == ["state already present; completing initialisation"]
        assert late.get("user/root")["pwhash"] == "hash-a"  # type: ignore[index]
    finally:
        first.close()
        late.close()


def test_without_the_drivers_the_options_say_which_extra_to_install(config, monkeypatch):
    import sys

    from devpi_tx.storage.backends import open_storage_for
    from devpi_tx.storage.filestore import open_file_store

    for module in ("psycopg", "botocore", "devpi_tx.storage.postgresql"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ConfigError, match=r"^option storage: needs the scale-out extra: pip install "):
        open_storage_for(attrs.evolve(config, storage="postgresql://devpi@127.0.0.1/devpi"))
    with pytest.raises(ConfigError, match=r"^option files: needs the scale-out extra: pip install "):
        open_file_store(attrs.evolve(config, files="s3://bucket/prefix"))

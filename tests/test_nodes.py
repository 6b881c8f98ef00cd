"""
What a node sharing its state with others does differently, in memory:
a request carrying a newer X-Devpi-Serial waits for it (read-your-writes),
and a mirrored page or file another node is fetching is taken from the
state rather than fetched again.  The other node is simulated: the test
commits what it would have (the PostgreSQL storage tells each node of the
others' commits as of its own).
"""

from __future__ import annotations

import hashlib
import posixpath

import attrs
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from devpi_tx.config import ConfigError, ServerConfig, build_config
from devpi_tx.model import releases
from devpi_tx.service import make_service
from devpi_tx.storage.coordination import FetchLeases, LeaderOnly, LocalCoordinator
from devpi_tx.web.changefeed import ChangeFeed
from devpi_tx.web.readyourwrites import SerialWait

from .conftest import Answer, result_of
from .distfiles import make_wheel
from .fakeupstream import Release
from .test_coordination import FakeCoordinator

JSON = "application/vnd.pypi.simple.v1+json"


def start(client, path: str, headers: dict[str, str] | None = None):
    """
    Send a request and pump the server once: the Deferred of its answer,
    which has not fired if the server holds it back.
    """
    d = client.http.request(
        "GET", "http://127.0.0.1:3141" + path, headers={"Accept": JSON, **(headers or {})}
    )
    client.flush()
    return d


def answered(d) -> bool:
    """
    Whether the answer's head has come (C{d.called} is true already while
    it waits on the connection's).
    """
    box: list = []
    d.addBoth(lambda result: box.append(result) or result)
    return bool(box)


def answer(client, d) -> Answer:
    client.flush()
    response = result_of(d)
    body = response.content()
    client.flush()
    return Answer(response, result_of(body))


def commit(context, key: str = "x") -> int:
    with context.storage.transaction() as tx:
        tx.set(key, {"n": context.storage.serial})
    return context.storage.serial


@pytest.fixture
def feed_clock(client):
    """
    The site's wait on a changelog feed of its own, on a L{Clock}.
    """
    clock = Clock()
    feed = ChangeFeed(client.context.storage, clock)
    client.site.serial_wait = SerialWait(lambda: client.context.storage.serial, feed.wait_for, 2.0)
    yield clock
    feed.stop()


def test_serial_wait_is_an_option_with_a_default():
    assert ServerConfig(serverdir="x").serial_wait == 2.0
    assert build_config({"serial-wait": "0.5", "serverdir": "x"}).serial_wait == 0.5
    assert build_config({"serial-wait": "0", "serverdir": "x"}).serial_wait == 0
    with pytest.raises(ConfigError, match="serial-wait"):
        build_config({"serial-wait": "-1", "serverdir": "x"})


def test_a_request_without_the_header_or_with_an_old_serial_waits_for_nothing(client, feed_clock):
    serial = client.context.storage.serial
    for headers in ({}, {"X-Devpi-Serial": str(serial)}, {"X-Devpi-Serial": "0"}, {"X-Devpi-Serial": "x"}):
        d = start(client, "/root/pypi", headers)
        assert answered(d), headers
        assert answer(client, d).code == 200
    assert client.site.serial_wait.waited == 0


def test_a_request_with_a_newer_serial_waits_until_the_state_reaches_it(client, feed_clock):
    serial = client.context.storage.serial
    d = start(client, "/root/pypi", {"X-Devpi-Serial": str(serial + 2)})
    assert not answered(d)
    commit(client.context)
    feed_clock.advance(0)
    client.flush()
    assert not answered(d)  # one serial short
    reached = commit(client.context)
    feed_clock.advance(0)
    got = answer(client, d)
    assert got.code == 200
    assert got.header("X-Devpi-Serial") == str(reached) == str(serial + 2)
    assert client.site.serial_wait.gave_up == 0


def test_at_the_bound_the_request_is_answered_from_what_the_node_has(client, feed_clock):
    serial = client.context.storage.serial
    d = start(client, "/root/pypi", {"X-Devpi-Serial": str(serial + 5)})
    feed_clock.advance(1.9)
    client.flush()
    assert not answered(d)
    feed_clock.advance(0.1)
    got = answer(client, d)
    assert got.code == 200
    assert got.header("X-Devpi-Serial") == str(serial)
    assert client.site.serial_wait.gave_up == 1


def test_a_client_gone_while_waiting_stops_the_wait(client, feed_clock):
    serial = client.context.storage.serial
    d = start(client, "/root/pypi", {"X-Devpi-Serial": str(serial + 1)})
    d.cancel()
    d.addErrback(lambda failure: None)
    client.flush()
    feed_clock.advance(2)
    assert client.site.serial_wait.gave_up == 0  # cancelled, not timed out


def test_a_zero_bound_never_waits(client, feed_clock):
    client.site.serial_wait.bound = 0
    d = start(client, "/root/pypi", {"X-Devpi-Serial": str(client.context.storage.serial + 1)})
    assert answered(d)


def test_the_server_waits_on_its_changefeed_by_default(client):
    wait = client.site.serial_wait
    assert wait.bound == 2.0
    assert wait._wait_for == client.context.changefeed.wait_for


# -- one fetch across nodes ---------------------------------------------------


@pytest.fixture
def elsewhere(client):
    """
    A coordinator saying another node holds every lease the test names,
    and a clock for the wait.
    """
    clock = Clock()
    coordinator = FakeCoordinator()
    leases = FetchLeases(coordinator, client.context.storage, clock, poll=0.5, bound=10)
    client.context.mirrors.leases = leases
    client.context.mirror_files.leases = leases
    return clock, coordinator, leases


@pytest.fixture
def hello(upstream):
    filename, data = make_wheel("hello", "1.0")
    upstream.add("hello", Release(filename, data), serial=5)
    return filename, data


def test_the_single_nodes_wiring_skips_the_leases(context):
    assert isinstance(context.coordinator, LocalCoordinator)
    assert context.mirrors.leases.shared is False
    assert context.mirror_files.leases is context.mirrors.leases


def test_a_page_another_node_fetches_is_served_from_its_commit(client, upstream, hello, elsewhere):
    clock, coordinator, leases = elsewhere
    filename, data = hello
    coordinator.held_elsewhere.add("mirror/root/pypi/hello")
    d = start(client, "/root/pypi/+simple/hello/")
    clock.advance(0.5)
    client.flush()
    assert not answered(d)
    # The other node commits the page it fetched.
    sha = hashlib.sha256(data).hexdigest()
    link = {"url": f"https://example.com/files/{filename}", "filename": filename, "sha256": sha}
    page = {"links": [link], "versions": ["1.0"], "etag": '"e"', "serial": 5}
    result_of(Deferred.fromCoroutine(client.context.mirrors._store("root/pypi", "hello", page, None)))
    clock.advance(0)
    got = answer(client, d)
    assert got.code == 200, got.body
    assert [f["filename"] for f in got.json["files"]] == [filename]
    assert upstream.count("/simple/") == 0
    assert leases.taken_over == 1
    # Fresh now, as if fetched here.
    assert answer(client, start(client, "/root/pypi/+simple/hello/")).code == 200
    assert upstream.count("/simple/") == 0


def test_a_page_whose_lease_is_free_is_fetched_under_it(client, upstream, hello, elsewhere):
    clock, coordinator, leases = elsewhere
    got = answer(client, start(client, "/root/pypi/+simple/hello/"))
    assert got.code == 200
    assert upstream.count("/simple/") == 1
    assert coordinator.released == ["mirror/root/pypi/hello"]


def test_a_page_the_other_node_never_commits_is_fetched_at_the_bound(client, upstream, hello, elsewhere):
    clock, coordinator, leases = elsewhere
    coordinator.held_elsewhere.add("mirror/root/pypi/hello")
    d = start(client, "/root/pypi/+simple/hello/")
    clock.pump([0.5] * 20)
    assert answer(client, d).code == 200
    assert upstream.count("/simple/") == 1
    assert leases.waited_in_vain == 1


def test_a_file_another_node_downloads_is_served_once_it_stored_it(client, upstream, hello, elsewhere):
    clock, coordinator, leases = elsewhere
    filename, data = hello
    got = answer(client, start(client, "/root/pypi/+simple/hello/"))
    url = got.json["files"][0]["url"]
    path = posixpath.normpath(posixpath.join("/root/pypi/+simple/hello/", url.split("#")[0]))
    relpath = path.lstrip("/")
    coordinator.held_elsewhere.add(releases.file_key(relpath))
    d = start(client, path)
    client.flush()
    assert not answered(d)
    # The other node stored the file (in the shared file store) and its entry.
    context = client.context
    writer = context.files.writer()
    writer.write(data)
    sha256 = writer.commit()
    with context.storage.transaction() as tx:
        entry = tx.get(releases.file_key(relpath))
        tx.set(releases.file_key(relpath), dict(entry, sha256=sha256, size=len(data), stored=True))
        tx.set(releases.blob_key(sha256), 1)
    clock.advance(0)
    got = answer(client, d)
    assert got.code == 200
    assert got.body == data
    assert upstream.count("/files/") == 0
    assert leases.taken_over == 1


def test_the_mirror_cache_evicts_on_the_leading_node_only(config):
    reactor = MemoryReactorClock()
    coordinator = FakeCoordinator(leading=False)
    config = attrs.evolve(config, mirror_cache_size=10_000_000, offline_mode=True)
    root = make_service(config, reactor, coordinator=coordinator)
    leader = root.getServiceNamed("leader-only:mirror-cache")
    assert isinstance(leader, LeaderOnly)
    root.startService()
    try:
        assert not leader.child.running  # another node leads
        coordinator.leading = True
        reactor.advance(10)
        assert leader.child.running
        coordinator.leading = False
        reactor.advance(10)
        assert not leader.child.running
    finally:
        result_of(root.stopService())
    assert coordinator.resigned == ["mirror-cache"]

"""
The bound on mirrored files (--mirror-cache-size): least recently used
files are evicted in the background (on a task.Clock here), never a blob
an upload links, and fetched again when asked for.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from devpi_tx.mirror.cachebound import MirrorCache, MirrorCacheService
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.model import releases
from devpi_tx.service import build_context
from devpi_tx.storage.files import LocalFileStore

from .conftest import Client, synchronous, synchronous_passwords
from .distfiles import upload_form
from .fakeupstream import Release

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json"
SIZE = 1000
LIMIT = 3500  # three files and a half; an eviction goes down to 3150


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bounded(config, upstream, clock):
    context = build_context(
        attrs.evolve(config, mirror_cache_size=LIMIT),
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(upstream), clock),
        reactor=clock,
    )
    service = MirrorCacheService(context.mirror_cache, clock)
    service.startService()
    yield context
    service.stopService()
    context.close()


@pytest.fixture
def client(bounded) -> Client:
    return Client(bounded)


def data_of(name: str) -> bytes:
    return name.encode() * (SIZE // len(name)) + b"x" * (SIZE % len(name))


@pytest.fixture
def projects(upstream) -> dict[str, bytes]:
    files = {}
    for name in ("p1", "p2", "p3", "p4", "p5"):
        filename = f"{name}-1.0.tar.gz"
        files[name] = data_of(name)
        upstream.add(name, Release(filename, files[name]))
    return files


def file_url(client, name: str) -> str:
    base = f"/root/pypi/+simple/{name}/"
    answer = client.get(base, accept=PIP_ACCEPT)
    assert answer.code == 200, answer.body
    return posixpath.normpath(posixpath.join(base, answer.json["files"][0]["url"]))


def fetch(client, name: str, projects) -> None:
    answer = client.get(file_url(client, name), accept=None)
    assert answer.code == 200, answer.body
    assert answer.body == projects[name]


def stored(context, projects) -> list[str]:
    """
    The projects whose file is stored (entry and blob on disk).
    """
    found = []
    for name, data in projects.items():
        sha = hashlib.sha256(data).hexdigest()
        entry = releases.get_file(context.storage, releases.relpath("root/pypi", sha, f"{name}-1.0.tar.gz"))
        on_disk = context.files.exists(sha)
        if entry is not None and entry.get("stored"):
            assert on_disk, f"{name} is stored without its blob"
            found.append(name)
        elif entry is not None:
            assert not on_disk or context.storage.get(releases.blob_key(sha)), f"{name}'s blob was left"
    return found


def test_least_recently_used_files_are_evicted_off_the_request_path(
    client, bounded, clock, projects, upstream
):
    cache = bounded.mirror_cache
    for name in ("p1", "p2", "p3"):
        fetch(client, name, projects)
    assert cache.size == 3 * SIZE and len(cache) == 3
    fetch(client, "p1", projects)  # served from the store: now the most recently used
    assert upstream.served == {f"{n}-1.0.tar.gz": SIZE for n in ("p1", "p2", "p3")}
    fetch(client, "p4", projects)
    # Past the bound, and answered; the eviction waits for the clock.
    assert cache.size == 4 * SIZE
    assert stored(bounded, projects) == ["p1", "p2", "p3", "p4"]
    clock.advance(0)
    assert stored(bounded, projects) == ["p1", "p3", "p4"]
    assert cache.size == 3 * SIZE and cache.evictions == 1 and cache.evicted_bytes == SIZE
    assert cache.paths()[0].endswith("p3-1.0.tar.gz")
    # Evicted, fetched again on its next request.
    fetch(client, "p2", projects)
    assert upstream.served["p2-1.0.tar.gz"] == 2 * SIZE
    clock.advance(0)
    assert stored(bounded, projects) == ["p1", "p2", "p4"]
    status = client.get("/+status").json["result"]["mirror-cache"]
    assert status == {"size": 3000, "limit": LIMIT, "files": 3, "evictions": 2, "evicted-bytes": 2000}


def test_a_blob_an_upload_links_is_never_evicted(client, bounded, clock, projects, alice):
    assert client.request("PUT", "/alice/dev", {"bases": ""}, headers=alice).code == 200
    for name in ("p1", "p2", "p3"):
        fetch(client, name, projects)
    # The same bytes as the least recently used mirrored file, uploaded.
    content_type, body = upload_form("p1", "1.0", "p1-1.0.tar.gz", projects["p1"])
    answer = client.request(
        "POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **alice}, accept=None
    )
    assert answer.code == 200, answer.body
    fetch(client, "p4", projects)
    clock.advance(0)
    assert stored(bounded, projects) == ["p1", "p3", "p4"]
    # p1 went to the back of the queue: p3 goes next.
    fetch(client, "p5", projects)
    clock.advance(0)
    assert stored(bounded, projects) == ["p1", "p4", "p5"]
    sha = hashlib.sha256(projects["p1"]).hexdigest()
    private = client.get(f"/alice/dev/+f/{sha[:3]}/{sha[3:16]}/p1-1.0.tar.gz", accept=None)
    assert private.code == 200 and private.body == projects["p1"]


def test_a_blob_held_by_a_write_in_flight_stays(client, bounded, clock, projects):
    for name in ("p1", "p2", "p3", "p4"):
        fetch(client, name, projects)
    bounded.blobs.hold(hashlib.sha256(projects["p1"]).hexdigest())
    clock.advance(0)
    assert stored(bounded, projects) == ["p1", "p3", "p4"]


def test_a_blob_wanted_again_while_it_is_removed_is_put_back(bounded, projects, clock):
    client = Client(bounded)
    for name in ("p1", "p2", "p3", "p4"):
        fetch(client, name, projects)
    cache = bounded.mirror_cache
    threads: list[tuple[Deferred, object, tuple]] = []

    def in_thread(f, *args):
        d = Deferred()
        threads.append((d, f, args))
        return d

    cache._run = in_thread
    sha = hashlib.sha256(projects["p1"]).hexdigest()
    done = cache.evict()
    path = releases.relpath("root/pypi", sha, "p1-1.0.tar.gz")
    assert not releases.get_file(bounded.storage, path).get("stored")  # committed first
    assert bounded.files.exists(sha)  # the file is removed by "threads"
    d, f, args = threads.pop()
    claimed = f(*args)  # renamed away
    assert not bounded.files.exists(sha)
    # Meanwhile an upload of the same bytes found the blob there (before
    # it went) and kept it without writing it again; it holds it.
    bounded.blobs.hold(sha)
    d.callback(claimed)
    assert threads == []  # nothing left to delete: it was put back
    assert done.called and bounded.files.exists(sha)
    assert cache.evicted_bytes == 0 and cache.evictions == 1


def test_eviction_of_a_claimed_blob_finishes_when_nobody_wants_it(bounded, projects):
    client = Client(bounded)
    for name in ("p1", "p2", "p3", "p4"):
        fetch(client, name, projects)
    cache = bounded.mirror_cache
    threads = []
    cache._run = lambda f, *args: threads.append((f, args)) or Deferred()
    cache.evict()
    (f, args) = threads.pop()
    leftovers = f(*args)
    claimed = [path for _, path in leftovers]
    assert claimed and all(os.path.exists(path) for path in claimed)
    # Stopped there (the process died): the store sweeps them when it opens.
    LocalFileStore(bounded.files.root)
    assert not any(os.path.exists(path) for path in claimed)


def test_a_restart_orders_the_files_by_their_downloads(bounded, config, projects, clock, upstream):
    client = Client(bounded)
    for name in ("p3", "p1", "p2"):
        fetch(client, name, projects)
        clock.advance(1)
    fetch(client, "p3", projects)  # recency is in memory only
    again = MirrorCache(
        bounded.storage, bounded.files, bounded.blobs, limit=LIMIT, clock=clock, run_in_thread=synchronous
    )
    again.load()
    assert [path.split("/")[-1] for path in again.paths()] == [
        "p3-1.0.tar.gz",
        "p1-1.0.tar.gz",
        "p2-1.0.tar.gz",
    ]
    assert again.size == 3 * SIZE


def test_entries_another_writer_unstores_or_removes_leave_the_cache(client, bounded, projects):
    for name in ("p1", "p2"):
        fetch(client, name, projects)
    cache = bounded.mirror_cache
    first, second = cache.paths()
    with bounded.storage.transaction() as tx:
        entry = tx.get(releases.file_key(first))
        tx.set(releases.file_key(first), dict(entry, stored=False))
        tx.delete(releases.file_key(second))
    assert len(cache) == 0 and cache.size == 0


def test_the_service_evicts_on_its_timer(bounded, clock, projects):
    cache = bounded.mirror_cache
    client = Client(bounded)
    for name in ("p1", "p2", "p3"):
        fetch(client, name, projects)
    cache.limit = 2500  # a bound lowered under it (a restart with a smaller one, say)
    clock.advance(59)
    assert len(cache) == 3
    clock.advance(1)
    assert stored(bounded, projects) == ["p2", "p3"]  # 2000 bytes: under 90 % of the bound


def test_a_replica_cannot_bound_its_cache(config, upstream):
    replica = attrs.evolve(config, mirror_cache_size=LIMIT, role="replica", primary_url="http://primary:3141")
    with pytest.raises(ValueError, match="mirror-cache-size"):
        build_context(replica, upstream_http=UpstreamHTTP(StubTreq(upstream), Clock()), reactor=Clock())


def test_a_long_eviction_goes_in_paced_batches_and_stops_with_the_service(bounded, projects, clock):
    client = Client(bounded)
    for name in ("p1", "p2", "p3"):
        fetch(client, name, projects)
    cache = MirrorCache(
        bounded.storage,
        bounded.files,
        bounded.blobs,
        limit=0,
        clock=clock,
        run_in_thread=synchronous,
        batch=1,
    )
    cache.load()
    done = cache.evict()
    assert len(cache) == 2 and not done.called  # one batch, then a pause on the clock
    assert cache.evicting and cache.evict() is not done
    clock.advance(10)
    assert len(cache) == 1 and not done.called
    stopped = cache.stop()
    assert not stopped.called  # it waits for the eviction, whose pause ends now
    clock.advance(0)
    assert len(cache) == 1 and done.called and stopped.called
    assert done.result == 2

"""
The replica fetching the files its state names (L{devpi_tx.replica.files}),
from a fake primary in memory or from a local copy, on a L{Clock}.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from devpi_tx.mirror.errors import UpstreamError
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.model import releases
from devpi_tx.model.errors import NotFound
from devpi_tx.model.metadata import wheel_metadata
from devpi_tx.replica.files import FileOptions, FileReplicator
from devpi_tx.replica.primary import PrimaryLink
from devpi_tx.storage.files import LocalFileStore
from devpi_tx.storage.sqlite import SQLiteStorage

from .conftest import result_of, synchronous
from .distfiles import make_wheel

STAGE = "alice/dev"
SAME = object()


class FilePrimary(Resource):
    """
    Serves C{/<relpath>} from C{content}; with C{hold}, answers wait until
    the test calls L{answer} (C{"half"}: after half of the body).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.content: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.hold = False
        self.held: list = []

    def render_GET(self, request):
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append({"path": request.path.decode(), "headers": headers})
        if self.hold == "half":
            data = self.body(request)
            request.setHeader("Content-Length", str(len(data)))
            request.write(data[: len(data) // 2])
            self.held.append(request)
            return NOT_DONE_YET
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self.body(request)

    def body(self, request) -> bytes:
        data = self.content.get(request.path.decode().lstrip("/"))
        if data is None:
            request.setResponseCode(404)
            return b"no such file"
        return data

    def answer(self, count: int | None = None) -> None:
        answering, self.held = self.held[:count], self.held[count:] if count else []
        for request in answering:
            request.write(self.body(request))
            request.finish()

    @property
    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]


def relpath_of(data: bytes, basename: str, stage: str = STAGE) -> str:
    return releases.relpath(stage, hashlib.sha256(data).hexdigest(), basename)


class Replica:
    def __init__(self, tmp_path, **options) -> None:
        self.clock = Clock()
        self.primary = FilePrimary()
        self.stub = StubTreq(self.primary)
        self.storage = SQLiteStorage(str(tmp_path / "replica.sqlite"))
        self.files = LocalFileStore(str(tmp_path / "+files"))
        link = PrimaryLink(
            "http://primary.example",
            replica_uuid="r" * 32,
            token=lambda: "token",
            load_primary_uuid=lambda: "p" * 32,
            save_primary_uuid=lambda uuid: None,
        )
        self.replicator = FileReplicator(
            self.storage,
            self.files,
            UpstreamHTTP(self.stub, self.clock),
            link,
            clock=self.clock,
            run_in_thread=synchronous,
            options=FileOptions(**options),
        )

    def add(
        self, data: bytes, basename: str, *, stage: str = STAGE, tell: bool = True, served=SAME, **extra
    ) -> str:
        """
        Commit a file entry (as an applied entry would) and serve the file
        on the primary (or C{served}: other bytes, or L{None} for none);
        return its relpath.
        """
        path = relpath_of(data, basename, stage)
        sha256 = hashlib.sha256(data).hexdigest()
        entry = {
            "rel": "releasefile",
            "project": "pkg",
            "version": "1.0",
            "sha256": sha256,
            "size": len(data),
        }
        entry.update(extra)
        changes = {releases.file_key(path): entry, releases.blob_key(sha256): 1}
        if served is not None:
            self.primary.content[path] = data if served is SAME else served
        self.commit(changes, tell=tell)
        return path

    def commit(self, changes: dict, *, tell: bool = True) -> None:
        with self.storage.transaction() as tx:
            for key, value in changes.items():
                tx.delete(key) if value is None else tx.set(key, value)
        if tell:
            self.replicator.entry_applied(changes)

    def flush(self) -> None:
        for _ in range(5):
            self.stub.flush()
            self.clock.advance(0)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def stored(self, data: bytes) -> bool:
        return self.files.exists(hashlib.sha256(data).hexdigest())

    def temporary_files(self) -> list[str]:
        return os.listdir(self.files.tmpdir)


@pytest.fixture
def replica(tmp_path):
    r = Replica(tmp_path)
    r.replicator.startService()
    r.flush()
    yield r
    if r.replicator.running:
        r.replicator.stopService()
    r.storage.close()


def test_a_new_file_is_fetched_with_the_replica_headers(replica):
    replica.primary.hold = True
    path = replica.add(b"release bytes", "pkg-1.0.tar.gz")
    assert replica.replicator.pending == 1
    assert replica.replicator.files_in_sync_at == 0  # the state scanned at start had none
    replica.clock.advance(3)
    replica.primary.answer()
    replica.flush()
    assert replica.stored(b"release bytes")
    assert replica.primary.paths == ["/" + path]
    headers = replica.primary.requests[0]["headers"]
    assert headers["x-devpi-replica-filerepl"] == "YES"
    assert headers["authorization"] == "Bearer token"
    assert headers["x-devpi-replica-uuid"] == "r" * 32
    assert headers["x-devpi-expected-primary-id"] == "p" * 32
    assert replica.replicator.pending == 0
    assert replica.replicator.files_in_sync_at == 3
    assert replica.temporary_files() == []


def test_a_file_already_stored_is_not_fetched(replica):
    writer = replica.files.writer()
    writer.write(b"have it")
    writer.commit()
    replica.add(b"have it", "pkg-1.0.tar.gz")
    replica.flush()
    assert replica.primary.paths == []
    assert replica.replicator.pending == 0


def test_a_mismatching_download_is_not_kept_and_tried_again_later(replica):
    path = replica.add(b"the real bytes", "pkg-1.0.tar.gz", served=b"other bytes")
    replica.flush()
    assert not replica.stored(b"the real bytes") and not replica.stored(b"other bytes")
    assert replica.temporary_files() == []
    (error,) = replica.replicator.errors
    assert error["relpath"] == path and error["attempts"] == 1
    assert "sha256 mismatch" in error["message"]
    assert replica.replicator.pending == 1
    replica.advance(0.9)
    assert len(replica.primary.paths) == 1
    replica.advance(0.1)  # the first retry after a second
    assert len(replica.primary.paths) == 2
    replica.advance(1.9)
    assert len(replica.primary.paths) == 2
    replica.primary.content[path] = b"the real bytes"
    replica.advance(0.1)  # then after two
    assert replica.stored(b"the real bytes")
    assert replica.replicator.errors == [] and replica.replicator.pending == 0


def test_a_file_missing_on_the_primary_is_retried_until_the_state_drops_it(replica):
    path = replica.add(b"bytes", "pkg-1.0.tar.gz", served=None)
    replica.flush()
    assert "answered 404" in replica.replicator.errors[0]["message"]
    replica.commit(
        {releases.file_key(path): None, releases.blob_key(hashlib.sha256(b"bytes").hexdigest()): None}
    )
    assert replica.replicator.errors == [] and replica.replicator.pending == 0
    replica.advance(600)
    assert len(replica.primary.paths) == 1


def test_concurrency_is_bounded(tmp_path):
    replica = Replica(tmp_path, threads=2)
    replica.replicator.startService()
    replica.primary.hold = True
    datas = [f"file {i}".encode() for i in range(5)]
    for i, data in enumerate(datas):
        replica.add(data, f"pkg-1.{i}.tar.gz")
    replica.flush()
    assert len(replica.primary.held) == 2
    assert replica.replicator.pending == 5
    replica.primary.answer(1)
    replica.flush()
    assert len(replica.primary.held) == 2 and len(replica.primary.paths) == 3
    replica.primary.answer()
    replica.flush()
    replica.primary.answer()
    replica.flush()
    replica.primary.answer()
    replica.flush()
    assert all(replica.stored(data) for data in datas)
    assert len(replica.primary.paths) == 5
    replica.storage.close()


def test_an_on_demand_fetch_shares_the_queued_download(replica):
    replica.primary.hold = True
    path = replica.add(b"wanted now", "pkg-1.0.tar.gz")
    replica.flush()
    assert len(replica.primary.held) == 1
    asked = replica.replicator.fetch(path)
    again = replica.replicator.fetch(path)
    replica.flush()
    assert len(replica.primary.requests) == 1
    assert not asked.called
    replica.primary.answer()
    replica.flush()
    sha256 = hashlib.sha256(b"wanted now").hexdigest()
    assert result_of(asked) == result_of(again) == sha256
    assert replica.primary.paths == ["/" + path]
    assert replica.replicator.pending == 0


def test_the_queue_shares_an_on_demand_download(tmp_path):
    replica = Replica(tmp_path, skip_indexes=["alice/other"])
    replica.replicator.startService()
    replica.primary.hold = True
    path = replica.add(b"asked first", "pkg-1.0.tar.gz", tell=False)
    asked = replica.replicator.fetch(path)
    replica.flush()
    replica.replicator.entry_applied({releases.file_key(path): replica.storage.get(releases.file_key(path))})
    replica.flush()
    assert len(replica.primary.requests) == 1
    replica.primary.answer()
    replica.flush()
    assert result_of(asked) == hashlib.sha256(b"asked first").hexdigest()
    assert replica.replicator.pending == 0 and len(replica.primary.requests) == 1
    replica.storage.close()


def test_cancelling_an_on_demand_fetch_leaves_the_download_running(replica):
    replica.primary.hold = True
    path = replica.add(b"bytes", "pkg-1.0.tar.gz", tell=False)
    asked = replica.replicator.fetch(path)
    other = replica.replicator.fetch(path)
    asked.cancel()
    asked.addErrback(lambda failure: None)
    replica.flush()
    replica.primary.answer()
    replica.flush()
    assert result_of(other) == hashlib.sha256(b"bytes").hexdigest()


def test_on_demand_fetch_failures(replica):
    with pytest.raises(NotFound):
        result_of(replica.replicator.fetch(f"{STAGE}/+f/abc/def/nothing.tar.gz"))
    path = replica.add(b"bytes", "pkg-1.0.tar.gz", tell=False)
    replica.primary.content[path] = b"wrong"
    with pytest.raises(UpstreamError, match="sha256 mismatch"):
        result_of(replica.replicator.fetch(path))
    assert not replica.stored(b"wrong") and replica.temporary_files() == []


@pytest.mark.parametrize(
    ("skip", "stage", "skipped"),
    [
        (["alice/dev"], "alice/dev", True),
        (["alice/dev"], "alice/prod", False),
        (["mirror"], "root/pypi", True),
        (["mirror"], "alice/dev", False),
        (["all"], "alice/dev", True),
    ],
)
def test_skipped_indexes_are_fetched_only_on_demand(tmp_path, skip, stage, skipped):
    replica = Replica(tmp_path, skip_indexes=skip)
    replica.commit(
        {
            "user/alice": {"indexes": {"dev": {"type": "stage"}, "prod": {"type": "stage"}}},
            "user/root": {"indexes": {"pypi": {"type": "mirror"}}},
        }
    )
    replica.replicator.startService()
    replica.flush()
    path = replica.add(b"bytes", "pkg-1.0.tar.gz", stage=stage, mirror=stage == "root/pypi", stored=True)
    replica.flush()
    assert replica.stored(b"bytes") is not skipped
    assert result_of(replica.replicator.fetch(path)) == hashlib.sha256(b"bytes").hexdigest()
    assert replica.stored(b"bytes")
    replica.storage.close()


def test_a_mirrored_file_is_fetched_once_the_primary_stored_it(replica):
    data = b"mirrored"
    path = replica.add(data, "pkg-1.0.tar.gz", stage="root/pypi", mirror=True, url="https://up.example/p")
    replica.flush()
    assert replica.primary.paths == []
    replica.add(
        data, "pkg-1.0.tar.gz", stage="root/pypi", mirror=True, url="https://up.example/p", stored=True
    )
    replica.flush()
    assert replica.primary.paths == ["/" + path]
    assert replica.stored(data)


def test_an_unreferenced_blob_is_removed(replica):
    data = b"to be deleted"
    path = replica.add(data, "pkg-1.0.tar.gz")
    replica.flush()
    assert replica.stored(data)
    sha256 = hashlib.sha256(data).hexdigest()
    replica.commit({releases.file_key(path): None, releases.blob_key(sha256): None})
    assert not replica.stored(data)


def test_the_state_is_scanned_at_start(tmp_path):
    replica = Replica(tmp_path)
    replica.add(b"one", "pkg-1.0.tar.gz", tell=False)
    replica.add(b"two", "pkg-2.0.tar.gz", tell=False)
    writer = replica.files.writer()
    writer.write(b"two")
    writer.commit()
    replica.replicator.startService()
    assert replica.replicator.scanned_at is None
    replica.flush()
    assert replica.replicator.scanned_at == 0
    assert replica.stored(b"one")
    assert len(replica.primary.paths) == 1
    assert replica.replicator.files_in_sync_at == 0
    replica.storage.close()


def test_stop_cancels_downloads_and_retries(replica):
    replica.add(b"missing", "pkg-1.0.tar.gz", served=None)  # to be tried again later
    replica.primary.hold = "half"
    replica.add(b"arriving slowly", "pkg-2.0.tar.gz")
    replica.flush()
    assert replica.replicator.pending == 2
    assert len(replica.temporary_files()) == 1  # half of it
    stopped = replica.replicator.stopService()
    replica.flush()
    result_of(stopped)
    assert not replica.stored(b"arriving slowly")
    assert replica.temporary_files() == []
    assert replica.primary.held[0].channel is None  # the connection was dropped
    assert [call for call in replica.clock.getDelayedCalls() if call.active()] == []


def test_a_relpath_leaving_the_stage_is_refused(replica):
    data = b"sneaky"
    sha256 = hashlib.sha256(data).hexdigest()
    path = f"{STAGE}/+f/../../../../etc/passwd"
    replica.commit({releases.file_key(path): {"sha256": sha256, "rel": "releasefile"}})
    replica.flush()
    assert "refused file path" in replica.replicator.errors[0]["message"]
    assert replica.replicator.pending == 0  # not retried
    assert replica.primary.paths == []


# -- local copies ------------------------------------------------------------------------


def _place(root, relative: str, data: bytes) -> str:
    path = os.path.join(str(root), *relative.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("layout", ["ours", "our serverdir", "devpi", "devpi serverdir"])
@pytest.mark.parametrize("hard_links", [False, True])
def test_a_file_is_taken_from_the_search_path(tmp_path, layout, hard_links):
    data = b"found locally"
    sha256 = hashlib.sha256(data).hexdigest()
    path = relpath_of(data, "pkg-1.0.tar.gz")
    search = tmp_path / "elsewhere"
    relative = {
        "ours": f"{sha256[:3]}/{sha256[3:]}",
        "our serverdir": f"+files/{sha256[:3]}/{sha256[3:]}",
        "devpi": path,
        "devpi serverdir": f"+files/{path}",
    }[layout]
    source = _place(search, relative, data)
    replica = Replica(tmp_path, search_paths=[str(search)], hard_links=hard_links)
    replica.replicator.startService()
    replica.add(data, "pkg-1.0.tar.gz")
    replica.flush()
    assert replica.stored(data)
    assert replica.primary.paths == []
    linked = os.stat(source).st_ino == os.stat(replica.files.local_path(sha256)).st_ino
    assert linked is hard_links
    assert replica.temporary_files() == []
    replica.storage.close()


@pytest.mark.parametrize("hard_links", [False, True])
def test_a_local_copy_with_other_content_is_not_used(tmp_path, hard_links):
    data = b"the real one"
    path = relpath_of(data, "pkg-1.0.tar.gz")
    search = tmp_path / "elsewhere"
    _place(search, path, b"tampered")
    replica = Replica(tmp_path, search_paths=[str(search)], hard_links=hard_links)
    replica.replicator.startService()
    replica.add(data, "pkg-1.0.tar.gz")
    replica.flush()
    assert replica.stored(data) and not replica.stored(b"tampered")
    assert replica.primary.paths == ["/" + path]
    assert replica.temporary_files() == []
    replica.storage.close()


# -- a wheel's METADATA --------------------------------------------------------------------


def test_a_wheels_metadata_is_made_from_the_wheel(replica):
    basename, wheel = make_wheel("pkg", "1.0")
    meta = hashlib.sha256(wheel_metadata(_bytes_io(wheel), basename)).hexdigest()
    replica.add(wheel, basename, core_metadata_sha256=meta)
    replica.flush()
    assert replica.stored(wheel) and replica.files.exists(meta)
    assert len(replica.primary.paths) == 1  # the wheel only


def test_metadata_other_than_the_wheels_is_fetched(replica):
    basename, wheel = make_wheel("pkg", "1.0")
    upstream_metadata = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n\nas upstream had it\n"
    meta = hashlib.sha256(upstream_metadata).hexdigest()
    path = relpath_of(wheel, basename)
    replica.primary.content[path + ".metadata"] = upstream_metadata
    replica.add(wheel, basename, core_metadata_sha256=meta)
    replica.flush()
    assert replica.files.exists(meta)
    assert sorted(replica.primary.paths) == ["/" + path, "/" + path + ".metadata"]


def test_metadata_on_demand(replica):
    basename, wheel = make_wheel("pkg", "1.0")
    data = wheel_metadata(_bytes_io(wheel), basename)
    meta = hashlib.sha256(data).hexdigest()
    path = replica.add(wheel, basename, core_metadata_sha256=meta, tell=False)
    replica.primary.content[path + ".metadata"] = data
    assert result_of(replica.replicator.fetch(path + ".metadata")) == meta
    assert replica.primary.paths == ["/" + path + ".metadata"]
    assert not replica.stored(wheel)


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


def test_a_long_queue_done_at_once_needs_no_deep_recursion(tmp_path):
    """
    In memory every download ends at once: the queue's pump takes the next
    file in its loop, not from inside the previous one's completion.
    """
    replica = Replica(tmp_path, threads=2)
    datas = [f"file {i}".encode() for i in range(300)]
    for i, data in enumerate(datas):
        replica.add(data, f"pkg-{i}.tar.gz", tell=False)
    replica.replicator.startService()
    replica.flush()
    assert all(replica.stored(data) for data in datas)
    assert replica.replicator.pending == 0
    replica.storage.close()

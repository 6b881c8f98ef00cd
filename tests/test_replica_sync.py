"""
The replica following a primary's changelog (L{devpi_tx.replica.sync}),
against a fake primary in memory (StubTreq over a twisted.web resource
the test drives), on a L{Clock}.
"""

from __future__ import annotations

import json

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.model.changes import MEDIA_TYPE, encode_frame
from devpi_tx.replica.primary import PrimaryLink
from devpi_tx.replica.sync import ReplicaOptions, ReplicaSync
from devpi_tx.storage.sqlite import SQLiteStorage

from .conftest import result_of

PRIMARY_UUID = "a" * 32
OTHER_UUID = "b" * 32


class FakePrimary(Resource):
    """
    Answers C{/+changelog/<n>-} as a primary does: the frames it has from
    C{n} at once, then each one committed while the stream is open
    (L{commit}); L{end} ends the open streams (202 for those that got
    nothing); 404 beyond its next serial.  C{script} answers the next
    requests instead (functions of the request).
    """

    isLeaf = True

    def __init__(self, uuid: str = PRIMARY_UUID) -> None:
        super().__init__()
        self.uuid = uuid
        self.frames: list[bytes] = []
        self.requests: list[dict] = []
        self.script: list = []
        self.held: list = []

    def commit(self, changes: dict, timestamp: float | None = None) -> bytes:
        serial = len(self.frames)
        frame = encode_frame(serial, timestamp or 1700000000.0 + serial, json.dumps(changes, sort_keys=True))
        self.frames.append(frame)
        for request in self.held:
            if not request.startedWriting:
                self.head(request)
            request.write(frame)
        return frame

    def end(self) -> None:
        held, self.held = self.held, []
        for request in held:
            if not request.startedWriting:
                self.head(request, 202)
            request.finish()

    def head(self, request, code: int = 200, serial: int | None = None) -> None:
        request.setResponseCode(code)
        request.setHeader("X-Devpi-Primary-Uuid", self.uuid)
        request.setHeader("X-Devpi-Serial", str(len(self.frames) - 1 if serial is None else serial))
        if code == 200:
            request.setHeader("Content-Type", MEDIA_TYPE)

    def render_GET(self, request):
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append({"uri": request.uri.decode(), "headers": headers})
        if self.script:
            return self.script.pop(0)(request)
        start = int(request.path.decode().rsplit("/", 1)[1].rstrip("-"))
        if start > len(self.frames):
            self.head(request, 404)
            return b"serial beyond"
        if start < len(self.frames):
            self.head(request)
            request.write(b"".join(self.frames[start:]))
        self.held.append(request)
        request.notifyFinish().addErrback(lambda _: self.held.remove(request))
        return NOT_DONE_YET


class Replica:
    """
    A replica's sync over a fresh state, wired to a fake primary.
    """

    def __init__(self, tmp_path, primary: FakePrimary, known_uuid: str | None = None, files=None) -> None:
        self.clock = Clock()
        self.primary = primary
        self.stub = StubTreq(primary)
        self.storage = SQLiteStorage(str(tmp_path / "replica.sqlite"))
        self.fatal: list[str] = []
        self.nodeinfo = {"primary-uuid": known_uuid}
        self.tokens = 0
        link = PrimaryLink(
            "http://primary.example/",
            replica_uuid="r" * 32,
            token=self.token,
            load_primary_uuid=lambda: self.nodeinfo["primary-uuid"],
            save_primary_uuid=lambda uuid: self.nodeinfo.__setitem__("primary-uuid", uuid),
            outside_url="http://replica.example",
        )
        self.sync = ReplicaSync(
            self.storage,
            UpstreamHTTP(self.stub, self.clock),
            link,
            clock=self.clock,
            on_fatal=self.fatal.append,
            files=files,
            options=ReplicaOptions(),
        )

    def token(self) -> str:
        self.tokens += 1
        return f"token-{self.tokens}"

    def flush(self) -> None:
        for _ in range(5):
            self.stub.flush()
            self.clock.advance(0)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    @property
    def uris(self) -> list[str]:
        return [r["uri"] for r in self.primary.requests]


@pytest.fixture
def primary():
    return FakePrimary()


@pytest.fixture
def replica(tmp_path, primary):
    r = Replica(tmp_path, primary)
    yield r
    if r.sync.running:
        r.sync.stopService()
    r.storage.close()


def test_entries_are_applied_with_the_primarys_serials_and_the_headers_say_who_asks(replica, primary):
    primary.commit({"user/alice": {"username": "alice"}})
    primary.commit({"project/alice/dev/a": {"name": "a"}, "user/alice": None})
    replica.sync.startService()
    replica.flush()
    assert replica.storage.serial == 1
    assert replica.storage.get("project/alice/dev/a") == {"name": "a"}
    assert replica.storage.get("user/alice") is None
    assert replica.storage.changelog_entry(1)["timestamp"] == 1700000001.0
    assert replica.uris == ["/+changelog/0-?initial_fetch"]
    primary.end()
    replica.flush()
    assert replica.uris == ["/+changelog/0-?initial_fetch", "/+changelog/2-"]
    primary.commit({"k": 2})  # arrives on the open stream
    replica.flush()
    assert replica.storage.get("k") == 2
    first, second = primary.requests
    assert first["headers"]["authorization"] == "Bearer token-1"
    assert second["headers"]["authorization"] == "Bearer token-2"  # a fresh token each time
    assert first["headers"]["x-devpi-replica-uuid"] == "r" * 32
    assert first["headers"]["x-devpi-expected-primary-id"] == ""
    assert second["headers"]["x-devpi-expected-primary-id"] == PRIMARY_UUID
    assert first["headers"]["x-devpi-replica-outside-url"] == "http://replica.example"
    assert first["headers"]["accept"] == f"{MEDIA_TYPE}, application/json; q=0.5"
    assert replica.nodeinfo["primary-uuid"] == PRIMARY_UUID
    assert (replica.sync.primary_serial, replica.sync.connected) == (2, True)
    assert replica.sync.in_sync_at == replica.clock.seconds()


@pytest.mark.parametrize("size", [1, 2, 7, 40, 10_000])
def test_a_stream_in_pieces_of_any_size_applies_only_whole_entries(replica, primary, size):
    replica.sync.startService()
    replica.flush()
    (request,) = primary.held
    frames = [
        encode_frame(serial, 1.5, json.dumps({f"k/{serial}": {"v": "x" * serial, "\u00e9": serial}}))
        for serial in range(5)
    ]
    stream = b"".join(frames)
    primary.frames = frames
    ends = []
    for frame in frames:
        ends.append((ends[-1] if ends else 0) + len(frame))
    primary.head(request)
    for at in range(0, len(stream), size):
        request.write(stream[at : at + size])
        replica.flush()
        whole = sum(1 for end in ends if end <= at + size)
        assert replica.storage.serial == whole - 1
        assert replica.sync.streaming
    assert [replica.storage.get(f"k/{serial}")["v"] for serial in range(5)] == ["x" * s for s in range(5)]
    request.finish()
    replica.flush()
    assert not replica.sync.streaming
    assert replica.uris == ["/+changelog/0-?initial_fetch", "/+changelog/5-"]


def test_entries_that_arrive_together_are_synced_by_the_last(replica, primary, monkeypatch):
    imported = []
    import_entry = replica.storage.import_entry

    def spy(serial, timestamp, changes, durable=True):
        imported.append((serial, durable))
        import_entry(serial, timestamp, changes, durable=durable)

    monkeypatch.setattr(replica.storage, "import_entry", spy)
    for serial in range(3):
        primary.commit({f"k/{serial}": serial})
    replica.sync.startService()
    replica.flush()
    primary.commit({"k/3": 3})
    replica.flush()
    assert imported == [(0, False), (1, False), (2, True), (3, True)]


def test_a_cut_stream_leaves_no_partial_entry_and_the_next_request_resumes(replica, primary):
    for serial in range(3):
        primary.commit({f"k/{serial}": serial})
    cut = len(primary.frames[0]) + len(primary.frames[1]) // 2

    def cut_stream(request):
        primary.head(request)
        request.write(b"".join(primary.frames)[:cut])
        request.channel.transport.loseConnection()
        return NOT_DONE_YET

    primary.script.append(cut_stream)
    replica.sync.startService()
    replica.flush()
    assert replica.storage.serial == 0
    assert replica.storage.get("k/1") is None
    assert replica.storage.changelog_entry(1) is None
    assert "the stream from serial 0 broke after 1 entries" in replica.sync.errors[-1]["message"]
    assert replica.uris == ["/+changelog/0-?initial_fetch"]
    replica.advance(0.5)  # an entry was applied: the shortest pause
    assert replica.uris[1] == "/+changelog/1-"
    assert replica.storage.serial == 2


def test_a_stream_ended_in_the_middle_of_an_entry_is_an_error(replica, primary):
    primary.commit({"k/0": 0})
    primary.commit({"k/1": 1})

    def short(request):
        primary.head(request)
        return b"".join(primary.frames)[:-3]

    primary.script.append(short)
    replica.sync.startService()
    replica.flush()
    assert replica.sync.errors[-1]["message"] == "the stream from serial 0 ended in the middle of an entry"
    assert replica.storage.serial == 0
    replica.advance(0.5)
    assert replica.storage.serial == 1


def test_a_gap_in_serials_is_refused_and_the_connection_dropped(replica, primary):
    primary.commit({"k/0": 0})
    primary.commit({"k/1": 1})
    gap = encode_frame(2, 1.0, '{"k/2":2}')
    dropped = []

    def with_gap(request):
        primary.head(request)
        request.notifyFinish().addErrback(dropped.append)
        request.write(primary.frames[0] + gap)
        return NOT_DONE_YET

    primary.script.append(with_gap)
    replica.sync.startService()
    replica.flush()
    assert replica.storage.serial == 0
    assert replica.storage.get("k/2") is None
    assert dropped, "the replica kept reading after the gap"
    assert replica.sync.errors[-1]["message"] == "the primary sent entry 2 where 1 was due"
    replica.advance(0.5)
    assert replica.uris[1] == "/+changelog/1-"
    assert replica.storage.serial == 1


def test_garbage_is_an_error_and_asked_for_again(replica, primary):
    primary.commit({"k/0": 0})

    def garbage(request):
        primary.head(request)
        return b"<html>not frames</html>\n"

    primary.script.append(garbage)
    replica.sync.startService()
    replica.flush()
    assert replica.storage.serial == -1
    assert "bad frame header" in replica.sync.errors[-1]["message"]
    replica.advance(0.5)
    assert replica.storage.serial == 0


def test_another_content_type_is_an_error(replica, primary):
    def octets(request):
        primary.head(request)
        request.setHeader("Content-Type", "application/octet-stream")
        return b"x"

    primary.script.append(octets)
    replica.sync.startService()
    replica.flush()
    assert (
        replica.sync.errors[-1]["message"]
        == f"the primary answered application/octet-stream, not {MEDIA_TYPE}"
    )
    assert not replica.fatal


def test_202_polls_again_at_once(replica, primary):
    replica.sync.startService()
    replica.flush()
    for _ in range(3):
        primary.end()  # nothing came within the wait: 202
        replica.flush()
    assert replica.uris == ["/+changelog/0-?initial_fetch"] + ["/+changelog/0-"] * 3
    assert replica.clock.seconds() == 0  # no pause
    assert replica.sync.errors == []
    assert replica.sync.in_sync_at == 0.0 and replica.sync.primary_serial == -1


def test_learned_uuid_kept_and_a_changed_one_is_fatal(replica, primary):
    primary.commit({"k/0": 0})
    replica.sync.startService()
    replica.flush()
    assert replica.nodeinfo["primary-uuid"] == PRIMARY_UUID
    primary.uuid = OTHER_UUID
    primary.end()
    replica.flush()
    primary.commit({"k/1": 1})
    replica.flush()
    assert replica.fatal == [
        f"primary uuid changed from {PRIMARY_UUID} to {OTHER_UUID}; this replica belongs to another primary"
    ]
    assert replica.storage.serial == 0  # nothing of the other primary's answer applied
    asked = len(replica.uris)
    replica.advance(60)
    assert len(replica.uris) == asked
    assert replica.sync.fatal == replica.fatal[0]


def test_a_known_uuid_is_expected_from_the_first_answer(tmp_path, primary):
    replica = Replica(tmp_path, primary, known_uuid=OTHER_UUID)
    replica.sync.startService()
    replica.flush()
    primary.end()
    replica.flush()
    assert primary.requests[0]["headers"]["x-devpi-expected-primary-id"] == OTHER_UUID
    assert replica.fatal and "changed from " + OTHER_UUID in replica.fatal[0]
    assert replica.nodeinfo["primary-uuid"] == OTHER_UUID
    replica.storage.close()


def test_an_answer_without_the_primarys_uuid_is_refused(replica, primary):
    def anonymous(request):
        request.setHeader("Content-Type", MEDIA_TYPE)
        return primary.commit({"k/0": 0})

    primary.script.append(anonymous)
    replica.sync.startService()
    replica.flush()
    assert replica.storage.serial == -1
    assert "X-Devpi-Primary-Uuid" in replica.sync.errors[-1]["message"]
    assert replica.nodeinfo["primary-uuid"] is None


def test_backoff_doubles_to_its_cap_and_starts_again_after_an_answer(replica, primary):
    def refused(request):
        request.setResponseCode(403)
        return b"Authorization expired."

    primary.script.extend([refused] * 7)
    replica.sync.startService()
    replica.flush()
    times = [0.0]
    for _ in range(7):
        before = len(replica.uris)
        waited = 0.0
        while len(replica.uris) == before:
            replica.advance(0.25)
            waited += 0.25
        times.append(waited)
    assert times == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert "credentials (403): Authorization expired." in replica.sync.errors[-1]["message"]
    assert not replica.fatal and not replica.sync.connected
    primary.script.append(refused)
    primary.end()  # the eighth request is answered (202): connected again
    replica.flush()
    assert len(replica.uris) == 9
    replica.advance(0.25)
    assert len(replica.uris) == 9
    replica.advance(0.25)  # a refusal after an answer: the shortest pause again
    assert len(replica.uris) == 10


def test_errors_kept_are_bounded(replica, primary):
    def broken(request):
        request.setResponseCode(500)
        return b"oops"

    primary.script.extend([broken] * 30)
    replica.sync.startService()
    replica.advance(0)
    for _ in range(30):
        replica.advance(5)
    assert len(replica.sync.errors) == 20
    assert replica.sync.errors[-1]["message"] == "the primary answered 500: oops"


def test_a_primary_behind_the_replica_is_fatal(replica, primary):
    primary.commit({"k/0": 0})
    primary.commit({"k/1": 1})
    replica.sync.startService()
    replica.flush()
    assert replica.storage.serial == 1
    primary.frames[1:] = []  # the primary lost serial 1
    primary.end()
    replica.flush()
    assert replica.fatal == [
        "the primary is at serial 0, behind this replica's 1: "
        "it is not the primary this state came from, or it lost commits"
    ]


def test_a_404_without_a_serial_is_retried(replica, primary):
    def not_here(request):
        request.setResponseCode(404)
        return b"no such route"

    primary.script.append(not_here)
    replica.sync.startService()
    replica.flush()
    assert not replica.fatal
    assert "404" in replica.sync.errors[-1]["message"]
    replica.advance(0.5)
    assert len(replica.uris) > 1


def test_a_refusal_of_the_replica_is_fatal(replica, primary):
    def refused(request):
        request.setResponseCode(400)
        return f"expected {PRIMARY_UUID} as primary_uuid, replica sent {OTHER_UUID}".encode()

    primary.script.append(refused)
    replica.sync.startService()
    replica.flush()
    refusal = f"expected {PRIMARY_UUID} as primary_uuid, replica sent {OTHER_UUID}"
    assert replica.fatal == [f"the primary refused this replica: {refusal}"]
    assert len(replica.uris) == 1


def test_stop_drops_the_stream_and_ends_the_loop(replica, primary):
    primary.commit({"k/0": 0})
    replica.sync.startService()
    replica.flush()
    (request,) = primary.held
    dropped = []
    request.notifyFinish().addErrback(dropped.append)
    stopped = replica.sync.stopService()
    replica.flush()
    assert result_of(stopped) is None
    assert dropped and not replica.sync.streaming
    asked = len(replica.uris)
    replica.advance(60)
    assert len(replica.uris) == asked


def test_stop_during_a_pause_ends_the_loop(replica, primary):
    def broken(request):
        request.setResponseCode(500)
        return b""

    primary.script.append(broken)
    replica.sync.startService()
    replica.flush()
    assert result_of(replica.sync.stopService()) is None
    replica.advance(60)
    assert len(replica.uris) == 1
    assert replica.clock.getDelayedCalls() == []


def test_wait_for_serial(replica, primary):
    replica.sync.startService()
    replica.flush()
    reached = replica.sync.wait_for_serial(1, timeout=10)
    late = replica.sync.wait_for_serial(5, timeout=10)
    given_up = replica.sync.wait_for_serial(9, timeout=30)
    given_up.cancel()
    with pytest.raises(CancelledError):
        result_of(given_up)
    primary.commit({"k/0": 0})
    replica.flush()
    assert not reached.called
    primary.commit({"k/1": 1})
    replica.flush()
    assert result_of(reached) is True
    assert result_of(replica.sync.wait_for_serial(0, timeout=1)) is True
    assert not late.called
    replica.advance(10)
    assert result_of(late) is False
    pending = replica.sync.wait_for_serial(7, timeout=10)
    replica.sync.stopService()
    assert result_of(pending) is False
    assert [c for c in replica.clock.getDelayedCalls() if c.active()] == []


def test_the_files_replicator_hears_of_each_entry(tmp_path, primary):
    class Files:
        def __init__(self):
            self.seen = []

        def entry_applied(self, changes):
            self.seen.append(changes)
            if len(self.seen) == 1:
                raise RuntimeError("a bug in the files' queue stops nothing")

    files = Files()
    primary.commit({"file/a": {"sha256": "1" * 64}})
    primary.commit({"file/a": None})
    replica = Replica(tmp_path, primary, files=files)
    replica.sync.startService()
    replica.flush()
    assert files.seen == [{"file/a": {"sha256": "1" * 64}}, {"file/a": None}]
    assert replica.storage.serial == 1
    replica.sync.stopService()
    replica.storage.close()


def test_status_has_devpis_names(replica, primary):
    primary.commit({"k/0": 0})
    replica.sync.startService()
    replica.flush()
    status = replica.sync.status()
    assert status["primary-url"] == "http://primary.example"
    assert status["primary-uuid"] == PRIMARY_UUID
    assert status["primary-serial"] == 0
    assert status["replica-in-sync-at"] == 0.0
    assert status["replica-changelog-errors"] == []


def test_the_changelog_replicated_is_the_primarys(tmp_path):
    """
    Frames made from a real primary state's changelog rows, applied by the
    replica, give the same rows.
    """
    source = SQLiteStorage(str(tmp_path / "primary.sqlite"))
    with source.transaction() as tx:
        tx.set("user/alice", {"username": "alice", "indexes": {}})
    with source.transaction() as tx:
        tx.set("k", [1.25, "\u6f22", None])
        tx.delete("user/alice")
    primary = FakePrimary()
    rows = source._db.execute("SELECT serial, timestamp, changes FROM changelog ORDER BY serial").fetchall()
    primary.frames = [encode_frame(serial, timestamp, changes) for serial, timestamp, changes in rows]
    replica = Replica(tmp_path, primary)
    replica.sync.startService()
    replica.flush()
    mine = replica.storage._db.execute("SELECT serial, timestamp, changes FROM changelog ORDER BY serial")
    assert mine.fetchall() == rows
    replica.sync.stopService()
    replica.storage.close()
    source.close()

"""
Streams of changelog entries from a primary, in memory on one clock: the
backlog in bounded batches as the transport takes them, then each commit
as it happens, until idle; and what a replica leaves behind when it goes
away.
"""

from __future__ import annotations

import pytest

from devpi_tx.model.changes import MEDIA_TYPE, FrameParser
from devpi_tx.web.changefeed import ChangeStream

from .primaryserver import REPLICA, Server, bounded_get, dechunk, frames_read


@pytest.fixture
def primary(tmp_path):
    server = Server(tmp_path)
    yield server
    server.context.close()


# -- streams ----------------------------------------------------------------------


def test_a_stream_sends_the_log_then_each_commit_until_idle(primary):
    for n in range(5):
        primary.commit(n)
    answer = primary.raw("/+changelog/3-")
    assert answer.status == 200
    assert answer.header("Content-Type") == MEDIA_TYPE
    assert answer.header("X-Devpi-Primary-Uuid") == primary.context.uuid
    assert [e.serial for e in answer.entries()] == [3, 4, 5]
    primary.commit(5)
    primary.client.flush()
    assert [e.serial for e in answer.entries()] == [3, 4, 5, 6]
    # A batched commit's entry goes out before the batch is written.
    primary.commit(6, durable=False)
    primary.client.flush()
    assert primary.storage._written == 6
    assert [e.serial for e in answer.entries()][-1] == 7
    primary.entries_match(answer.entries())
    # Idle: a commit puts the end off; 30 s without one ends the stream.
    primary.clock.advance(29)
    primary.client.flush()
    primary.commit(7)
    primary.client.flush()
    primary.clock.advance(29)
    primary.client.flush()
    assert not answer.complete
    assert [e.serial for e in answer.entries()] == [3, 4, 5, 6, 7, 8]
    primary.clock.advance(1)
    primary.client.flush()
    assert answer.complete
    assert primary.feed.streams == set()
    primary.entries_match(answer.entries())


def test_frames_are_the_entries_of_real_requests(primary):
    primary.client.request("PUT", "/alice", {"password": "alicepw", "email": "alice@example.com"})
    alice = primary.client.login("alice", "alicepw")
    primary.client.request("PUT", "/alice/dev", {}, headers=alice)
    primary.client.request("PATCH", "/alice/dev", ["title=Dev é"], headers=alice)
    answer = primary.raw("/+changelog/0-")
    entries = answer.entries()
    assert [e.serial for e in entries] == list(range(primary.storage.serial + 1))
    primary.entries_match(entries)
    assert any("user/alice" in e.changes for e in entries)


def test_a_large_backlog_goes_out_in_bounded_batches_as_the_transport_drains(primary, monkeypatch):
    for n in range(300):
        primary.commit(n, size=400)
    entry_size = len(primary.storage.changelog_frames(0, 1)[0][2])
    primary.feed.batch_bytes = 10 * entry_size
    reads = frames_read(monkeypatch, primary.storage)
    conn, bounded = bounded_get(primary, "/+changelog/1-", limit=16 * 1024)
    client = primary.client
    rounds = 0
    while bounded.paused:
        rounds += 1
        [stream] = primary.feed.streams
        assert stream.paused
        # Paused: time passes, nothing more is read from the state.
        before = len(reads)
        primary.clock.advance(1)
        client.flush()
        assert len(reads) == before
        # Unsent (written to the transport, not yet read) stays within the
        # buffer and one frame.
        assert bounded.unread <= bounded.limit + entry_size + 100
        bounded.drain()
        client.flush()
    assert rounds >= 5  # (about 130 kB through a buffer of 16 kB)
    assert max(reads) <= 10  # every read a batch, never the whole log
    assert sum(reads) <= 300 + rounds * 10  # (a batch cut by a pause is read again)
    entries = FrameParser().feed(dechunk(conn.received))
    assert [e.serial for e in entries] == list(range(1, 301))
    primary.entries_match(entries)


def test_a_stream_yields_to_other_requests_between_turns(primary, monkeypatch):
    for n in range(50):
        primary.commit(n, size=400)
    primary.feed.turn_bytes = 4000
    primary.feed.batch_bytes = 1000
    reads = frames_read(monkeypatch, primary.storage)
    turns = []
    real_write = ChangeStream._write
    monkeypatch.setattr(ChangeStream, "_write", lambda self: turns.append(self.next) or real_write(self))
    answer = primary.raw("/+changelog/1-")
    assert [e.serial for e in answer.entries()] == list(range(1, 51))
    assert len(reads) > 10 and max(reads) <= 3
    # About 21 kB in turns of 4 kB, each a call of its own on the clock.
    assert len(turns) >= 5 and turns == sorted(turns)


# -- going away ---------------------------------------------------------------------


def test_a_replica_that_goes_away_leaves_nothing(primary):
    primary.commit(0)
    answer = primary.raw("/+changelog/1-")
    assert [e.serial for e in answer.entries()] == [1]
    [stream] = primary.feed.streams
    assert stream._idle_call is not None and stream._idle_call.active()
    idle_call = stream._idle_call
    answer.conn.close()
    primary.client.flush()
    assert primary.feed.streams == set()
    assert stream.ended and not idle_call.active()
    assert stream.done.called
    assert idle_call not in primary.clock.getDelayedCalls()
    # Commits after it reach no one and write nothing anywhere.
    primary.commit(1)
    primary.client.flush()
    assert primary.client.connections._pumps == []
    status = primary.client.get("/+status").json["result"]["polling_replicas"][REPLICA]
    assert (status["in-request"], status["is-streaming"]) == (False, False)


def test_a_replica_that_goes_away_while_waiting_leaves_nothing(primary):
    primary.commit(0)
    answer = primary.raw("/+changelog/2-")
    [(_, call)] = primary.feed._waiters.values()
    answer.conn.close()
    primary.client.flush()
    assert primary.feed._waiters == {}
    assert not call.active()
    primary.commit(1)
    primary.clock.advance(60)
    primary.client.flush()
    assert primary.feed.streams == set()


def test_a_replica_that_reads_nothing_is_dropped(primary):
    for n in range(100):
        primary.commit(n, size=400)
    conn, bounded = bounded_get(primary, "/+changelog/1-", limit=8 * 1024)
    client = primary.client
    assert bounded.paused
    primary.clock.advance(119)
    client.flush()
    assert len(primary.feed.streams) == 1
    primary.clock.advance(1)
    client.flush()
    assert primary.feed.streams == set()
    assert conn.closed


def test_stopping_the_feed_ends_streams_and_waits(primary):
    primary.commit(0)
    stream = primary.raw("/+changelog/1-")
    waiting = primary.raw("/+changelog/2")
    primary.feed.stop()
    primary.client.flush()
    assert stream.complete and [e.serial for e in stream.entries()] == [1]
    assert waiting.status == 202
    assert primary.client.get("/+changelog/0", headers=primary.headers()).code == 503


def test_a_stream_whose_read_fails_drops_the_connection(primary, monkeypatch):
    primary.commit(0)
    answer = primary.raw("/+changelog/1-")
    assert [e.serial for e in answer.entries()] == [1]

    def broken(start, max_bytes):
        raise OSError("disk gone")

    monkeypatch.setattr(primary.storage, "changelog_frames", broken)
    primary.commit(1)
    primary.client.flush()
    assert answer.conn.closed and not answer.complete
    assert [e.serial for e in answer.entries()] == [1]  # whole entries only
    assert primary.feed.streams == set()

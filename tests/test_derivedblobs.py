"""
Derived blobs written in batches.
"""

from __future__ import annotations

import hashlib

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from devpi_tx.storage.files import LocalFileStore
from devpi_tx.web.derivedblobs import DerivedBlobs


class Threads:
    """
    Jobs run when the test says so.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, function, *args):
        d: Deferred = Deferred()
        self.jobs.append((d, function, args))
        return d

    def run(self) -> None:
        jobs, self.jobs = self.jobs, []
        for d, function, args in jobs:
            d.callback(function(*args))


def make(tmp_path, in_use=lambda digest: True, **kwargs):
    files = LocalFileStore(str(tmp_path / "files"))
    clock, threads = Clock(), Threads()
    return DerivedBlobs(files, threads, clock, in_use, **kwargs), files, clock, threads


def test_blobs_of_a_while_are_written_by_one_job(tmp_path):
    blobs, files, clock, threads = make(tmp_path, delay=0.5)
    digests = [blobs.add(b"METADATA %d" % n) for n in range(3)]
    assert digests[0] == hashlib.sha256(b"METADATA 0").hexdigest()
    clock.advance(0.4)
    assert threads.jobs == []
    clock.advance(0.1)
    assert len(threads.jobs) == 1
    threads.run()
    assert all(files.exists(d) for d in digests)


def test_too_many_bytes_waiting_are_written_at_once(tmp_path):
    blobs, files, clock, threads = make(tmp_path, delay=0.5, max_bytes=10)
    blobs.add(b"12345678901")
    clock.advance(0)
    assert len(threads.jobs) == 1


def test_a_blob_whose_reference_went_meanwhile_is_removed(tmp_path):
    referenced: set[str] = set()
    blobs, files, clock, threads = make(tmp_path, in_use=referenced.__contains__)
    kept, gone = blobs.add(b"kept"), blobs.add(b"gone")
    referenced.add(kept)
    blobs.flush()
    threads.run()
    assert files.exists(kept)
    assert not files.exists(gone)


def test_settled_waits_for_a_blob_pending_or_being_written(tmp_path):
    blobs, files, clock, threads = make(tmp_path)
    first = blobs.add(b"first")
    waiting = blobs.settled(first)  # pending: written now
    assert not waiting.called and len(threads.jobs) == 1
    second = blobs.add(b"second")
    again = blobs.settled(first)  # being written: waits for that job
    threads.run()
    assert waiting.called and again.called and files.exists(first)
    assert not files.exists(second)
    blobs.flush()
    threads.run()
    assert files.exists(second)
    assert blobs.settled("0" * 64).called  # nothing to wait for


def test_nothing_is_written_once_stopped(tmp_path):
    blobs, files, clock, threads = make(tmp_path)
    waiting = blobs.add(b"waiting")
    blobs.stop()
    blobs.add(b"late")
    assert clock.getDelayedCalls() == []
    blobs.flush()
    assert threads.jobs == []
    assert not files.exists(waiting)

"""
Blob accounting, as plain calls over a state and a file store: no HTTP,
no reactor.
"""

from __future__ import annotations

import pytest

from devpi_tx.model import releases
from devpi_tx.model.blobs import BlobLedger
from devpi_tx.storage.files import LocalFileStore
from devpi_tx.storage.sqlite import SQLiteStorage


@pytest.fixture
def storage(tmp_path):
    s = SQLiteStorage(str(tmp_path / "state.sqlite"))
    yield s
    s.close()


@pytest.fixture
def files(tmp_path):
    return LocalFileStore(str(tmp_path / "+files"))


@pytest.fixture
def ledger(storage, files):
    return BlobLedger(storage, files)


def store(files, data: bytes) -> str:
    writer = files.writer()
    writer.write(data)
    return writer.commit()


def link(storage, sha256: str, basename: str = "pkg-1.0.tar.gz") -> set[str]:
    with storage.transaction() as tx:
        _, _, unused = releases.add_file(
            tx,
            "alice/dev",
            True,
            {"name": "pkg", "version": "1.0"},
            rel="releasefile",
            basename=basename,
            sha256=sha256,
            size=1,
            who="alice",
        )
    return unused


# -- the ledger ----------------------------------------------------------------


def test_an_unheld_unlinked_blob_is_unwanted_and_removed(ledger, files):
    digest = store(files, b"data")
    assert not ledger.wanted(digest)
    assert ledger.remove_unwanted([digest]) == [digest]
    assert not files.exists(digest)


def test_a_held_blob_stays_until_released_as_often_as_held(ledger, files):
    digest = store(files, b"data")
    ledger.hold(digest)
    ledger.hold(digest)
    ledger.release(digest)
    assert ledger.remove_unwanted([digest]) == []
    assert files.exists(digest)
    ledger.release(digest)
    assert ledger.held == {}
    assert ledger.remove_unwanted([digest]) == [digest]
    assert not files.exists(digest)


def test_a_linked_blob_is_wanted_until_its_last_link_goes(ledger, files, storage):
    digest = store(files, b"data")
    link(storage, digest)
    assert ledger.wanted(digest)
    assert ledger.remove_unwanted([digest]) == []
    with storage.transaction() as tx:
        unused = releases.delete_project(tx, "alice/dev", "pkg", volatile=True, force=False)
    assert unused == {digest}
    assert ledger.remove_unwanted(unused) == [digest]
    assert not files.exists(digest)


def test_a_removal_spares_the_blob_an_upload_in_flight_holds(ledger, files, storage):
    """
    An upload of the same file is written (and held) while a removal of
    its earlier link commits: the removal's cleanup leaves it alone.
    """
    digest = store(files, b"data")
    link(storage, digest)
    ledger.hold(digest)
    with storage.transaction() as tx:
        unused = releases.delete_project(tx, "alice/dev", "pkg", volatile=True, force=False)
    assert ledger.remove_unwanted(unused) == []
    link(storage, digest)
    ledger.release(digest)
    assert files.exists(digest)


def test_empty_digests_are_ignored(ledger):
    ledger.hold(None, "")
    ledger.release(None, "")
    assert ledger.held == {}
    assert ledger.remove_unwanted([None, ""]) == []


def test_sound_blobs_are_remembered_and_the_memory_bounded(ledger, monkeypatch):
    from devpi_tx.model import blobs

    monkeypatch.setattr(blobs, "MAX_SOUND", 2)
    for digest in "abc":
        ledger.mark_sound(digest)
    assert ledger.is_sound("c")
    ledger.mark_sound("d")  # over the bound: forgets the others
    assert ledger.sound == {"d"}
    assert not ledger.is_sound("a")

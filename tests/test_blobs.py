"""
Blob accounting and the METADATA blobs of wheels, as plain calls over a
state and a file store: no HTTP, no reactor.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from devpi_tx.model import metadata, releases
from devpi_tx.model.blobs import BlobLedger
from devpi_tx.model.errors import InvalidInput
from devpi_tx.storage.files import LocalFileStore
from devpi_tx.storage.sqlite import SQLiteStorage

from .distfiles import make_wheel, metadata_text


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


# -- METADATA blobs ------------------------------------------------------------------


def wheel_writer(files):
    basename, data = make_wheel("pkg", "1.0")
    writer = files.writer()
    writer.write(data)
    return basename, data, writer


def test_commit_upload_stores_a_wheels_metadata_as_a_blob(files):
    basename, data, writer = wheel_writer(files)
    sha256, size, meta_sha = metadata.commit_upload(files, writer, basename)
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    with open(files.local_path(meta_sha), "rb") as blob:
        assert blob.read() == metadata_text("pkg", "1.0").encode()


def test_commit_upload_of_other_files_stores_no_metadata(files):
    writer = files.writer()
    writer.write(b"sdist")
    sha256, size, meta_sha = metadata.commit_upload(files, writer, None)
    assert (size, meta_sha) == (5, None)
    assert files.exists(sha256)


def test_commit_upload_of_a_broken_wheel_raises_with_its_file_stored(files):
    writer = files.writer()
    writer.write(b"not a zip")
    with pytest.raises(InvalidInput, match="not a valid wheel"):
        metadata.commit_upload(files, writer, "pkg-1.0-py3-none-any.whl")
    assert files.exists(hashlib.sha256(b"not a zip").hexdigest())


@pytest.mark.parametrize("damage", ["none", "missing", "short"])
def test_repair_metadata_makes_a_damaged_blob_again(files, damage):
    basename, data, writer = wheel_writer(files)
    sha256, _, meta_sha = metadata.commit_upload(files, writer, basename)
    path = files.local_path(meta_sha)
    if damage == "missing":
        os.unlink(path)
    elif damage == "short":
        with open(path, "r+b") as blob:
            blob.truncate(10)
    assert metadata.repair_metadata(files, sha256, meta_sha, basename) == (damage != "none")
    with open(path, "rb") as blob:
        assert hashlib.sha256(blob.read()).hexdigest() == meta_sha


def test_repair_metadata_refuses_a_digest_the_wheel_does_not_give(files):
    basename, data, writer = wheel_writer(files)
    sha256, _, _ = metadata.commit_upload(files, writer, basename)
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(InvalidInput, match="no longer matches its recorded digest"):
        metadata.repair_metadata(files, sha256, other, basename)
    assert not files.exists(other)

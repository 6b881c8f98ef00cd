"""
The serial-numbered state and the content-addressed file store.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from zope.interface.verify import verifyObject

from devpi_tx.interfaces import IFileStore, IFileWriter, ILocalFileStore, IStorage, ITransaction
from devpi_tx.storage.files import LocalFileStore
from devpi_tx.storage.sqlite import SchemaError, SQLiteStorage

# -- the state, on each provider ------------------------------------------------
#
# Tests taking ``storage`` or ``open_state`` run on SQLite and on PostgreSQL
# (the latter marked scaleout: it needs the session's PostgreSQL server).
# Tests that build an SQLiteStorage themselves are about SQLite only: its
# batching of non-durable commits on a clock, its file and a writer killed
# mid-transaction, its PRAGMAs and its query trace.  PostgreSQL's own are in
# test_pgstorage.py.


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.scaleout)])
def open_state(request, tmp_path):
    """
    C{open_state(name="state", **kw)}: open (creating it on first use) the
    state called C{name}, on the provider of the test's parameter; two
    opens of one name are two processes (nodes) on one database.
    """
    opened = []
    databases: dict[str, str] = {}

    def open_state(name: str = "state", **kw):
        if request.param == "sqlite":
            s = SQLiteStorage(str(tmp_path / f"{name}.sqlite"), **kw)
        else:
            from devpi_tx.storage.postgresql import PostgresStorage

            if name not in databases:
                databases[name] = request.getfixturevalue("pg_cluster").create_database()
            s = PostgresStorage(databases[name], create=True, **kw)
        opened.append(s)
        return s

    open_state.provider = request.param
    yield open_state
    for s in opened:
        s.close()


@pytest.fixture
def storage(open_state):
    return open_state()


def _rows(s, table: str, columns: str) -> list[tuple]:
    """
    The rows of the state's table C{kv} or C{changelog}, in key or serial
    order, as stored.
    """
    order = columns.split(",")[0]
    if isinstance(s, SQLiteStorage):
        return s._db.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()
    return s._connection().execute(f"SELECT {columns} FROM devpi_{table} ORDER BY {order}").fetchall()


def test_provides_interfaces(storage):
    assert verifyObject(IStorage, storage)
    with storage.transaction() as tx:
        assert verifyObject(ITransaction, tx)


def test_new_state_has_serial_minus_one(storage):
    assert storage.serial == -1
    assert storage.changelog_entry(0) is None
    assert storage.last_commit_timestamp() is None


def test_each_commit_is_one_changelog_entry_with_next_serial(storage):
    with storage.transaction() as tx:
        tx.set("a", {"x": 1})
        tx.set("b", [1, 2])
    with storage.transaction() as tx:
        tx.set("a", {"x": 2})
        tx.delete("b")
    assert storage.serial == 1
    first, second = storage.changelog_entry(0), storage.changelog_entry(1)
    assert first["changes"] == {"a": {"x": 1}, "b": [1, 2]}
    assert second["changes"] == {"a": {"x": 2}, "b": None}
    assert storage.get("a") == {"x": 2}
    assert storage.get("b") is None


def test_transaction_without_changes_takes_no_serial(storage):
    with storage.transaction() as tx:
        tx.get("a")
    assert storage.serial == -1


def test_transaction_sees_its_own_writes_others_do_not(storage):
    with storage.transaction() as tx:
        tx.set("user/a", 1)
        assert tx.get("user/a") == 1
        assert tx.keys("user/") == ["user/a"]
        assert storage.get("user/a") is None
    assert storage.keys("user/") == ["user/a"]


def test_raising_transaction_leaves_no_trace(storage):
    with storage.transaction() as tx:
        tx.set("keep", "v1")
    with pytest.raises(RuntimeError):
        with storage.transaction() as tx:
            tx.set("keep", "v2")
            tx.set("new", "x")
            raise RuntimeError("boom")
    assert storage.serial == 0
    assert storage.get("keep") == "v1"
    assert storage.get("new") is None
    assert storage.changelog_entry(1) is None


def test_values_returned_are_copies(storage):
    with storage.transaction() as tx:
        tx.set("k", {"list": [1]})
    value = storage.get("k")
    value["list"].append(2)
    assert storage.get("k") == {"list": [1]}


def test_keys_by_prefix_are_sorted_and_exact(storage):
    with storage.transaction() as tx:
        for key in ["user/b", "user/a", "userx", "index/a"]:
            tx.set(key, 1)
    assert storage.keys("user/") == ["user/a", "user/b"]


def test_reopen_keeps_state_and_serial(open_state):
    s = open_state()
    with s.transaction() as tx:
        tx.set("k", "v")
    s.close()
    s = open_state()
    assert (s.serial, s.get("k")) == (0, "v")


def test_non_durable_commit_is_a_commit_and_leaves_full_sync_on(tmp_path):
    """
    durable=False only skips the fsync of that commit: the entry, serial and
    value are as for any commit, and later commits sync again.
    """
    path = str(tmp_path / "state.sqlite")
    s = SQLiteStorage(path)
    with s.transaction(durable=False) as tx:
        tx.set("mirror/x", {"links": []})
    assert s.serial == 0
    assert s.changelog_entry(0)["changes"] == {"mirror/x": {"links": []}}
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(RuntimeError):
        with s.transaction(durable=False) as tx:
            tx.set("mirror/y", 1)
            raise RuntimeError("boom")
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert s.get("mirror/y") is None
    s.close()
    s = SQLiteStorage(path)
    assert (s.serial, s.get("mirror/x")) == (0, {"links": []})
    s.close()


def test_sqlite_write_is_transaction_to_be_awaited(tmp_path):
    """
    SQLite's C{write()} commits as C{transaction()} does, on the calling
    thread and before the C{async with} completes (no turn of the
    reactor), non-durable ones batched alike: the same serials, entries
    and values.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.testing import MemoryReactorClock

    clocks = [MemoryReactorClock(), MemoryReactorClock()]
    by_tx = SQLiteStorage(str(tmp_path / "tx.sqlite"), clock=clocks[0])
    by_write = SQLiteStorage(str(tmp_path / "write.sqlite"), clock=clocks[1])
    steps = [(True, {"a": 1, "b": [2]}), (False, {"mirror/x": {"links": []}}), (True, {"a": None, "c": "3"})]
    for durable, changes in steps:
        with by_tx.transaction(durable=durable) as tx:
            for key, value in changes.items():
                tx.delete(key) if value is None else tx.set(key, value)

    async def write(durable: bool, changes: dict) -> None:
        async with by_write.write(durable=durable) as tx:
            for key, value in changes.items():
                tx.delete(key) if value is None else tx.set(key, value)

    for durable, changes in steps[:2]:
        assert Deferred.fromCoroutine(write(durable, changes)).called
    assert (len(by_write._pending), by_write._written) == (1, 0)  # batched, as transaction()'s
    assert Deferred.fromCoroutine(write(*steps[2])).called

    async def failing() -> None:
        async with by_write.write() as tx:
            tx.set("d", 4)
            raise RuntimeError("boom")

    failures: list = []
    Deferred.fromCoroutine(failing()).addErrback(failures.append)
    assert [f.check(RuntimeError) for f in failures] == [RuntimeError]
    assert by_write.serial == by_tx.serial == 2
    for table, columns in [("changelog", "serial, changes"), ("kv", "key, value, serial")]:
        assert _rows(by_write, table, columns) == _rows(by_tx, table, columns)
    by_tx.close()
    by_write.close()


def test_refuses_newer_schema(tmp_path):
    path = str(tmp_path / "state.sqlite")
    SQLiteStorage(path).close()
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='999' WHERE name='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(SchemaError, match="999"):
        SQLiteStorage(path)


def test_commit_by_other_process_is_seen_after_next_commit(open_state):
    a, b = open_state(), open_state()
    with a.transaction() as tx:
        tx.set("k", "from-a")
    assert a.get("k") == "from-a"
    with b.transaction() as tx:
        tx.set("k", "from-b")
    with a.transaction() as tx:
        tx.set("other", 1)
    assert a.serial == 2
    assert a.get("k") == "from-b"


_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from devpi_tx.storage.sqlite import SQLiteStorage
    s = SQLiteStorage({path!r})
    with s.transaction() as tx:
        tx.set("committed", "yes")
    db = s._db
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO kv (key, value, serial) VALUES ('half', '1', 1)")
    db.execute("INSERT INTO changelog (serial, timestamp, changes) VALUES (1, 0, '{{}}')")
    sys.stdout.write("mid-transaction\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_writer_killed_mid_transaction_leaves_state_intact(tmp_path):
    path = str(tmp_path / "state.sqlite")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", _WRITER.format(root=root, path=path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "mid-transaction" in proc.stdout
    s = SQLiteStorage(path)
    assert s.serial == 0
    assert s.get("committed") == "yes"
    assert s.get("half") is None
    with s.transaction() as tx:
        tx.set("after", 1)
    assert s.serial == 1
    s.close()


# -- file store ---------------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    return LocalFileStore(str(tmp_path / "+files"))


def test_file_store_provides_interfaces(files):
    assert verifyObject(IFileStore, files)
    assert verifyObject(ILocalFileStore, files)
    writer = files.writer()
    assert verifyObject(IFileWriter, writer)
    writer.abort()


def test_written_file_is_stored_under_its_sha256(files):
    writer = files.writer()
    writer.write(b"hello ")
    writer.write(b"world")
    digest = writer.commit()
    assert digest == hashlib.sha256(b"hello world").hexdigest()
    assert writer.size == 11
    assert files.exists(digest)
    with open(files.local_path(digest), "rb") as f:
        assert f.read() == b"hello world"
    assert os.listdir(files.tmpdir) == []


def test_file_committed_without_sync_is_stored_alike(files, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    writer = files.writer()
    writer.write(b"Metadata-Version: 2.1\n")
    digest = writer.commit(durable=False)
    assert synced == []
    with open(files.local_path(digest), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == digest
    writer = files.writer()
    writer.write(b"a wheel")
    writer.commit()
    assert len(synced) == 2  # the file, then its directory


def test_spooled_writer_touches_the_disk_only_when_it_must(files):
    tmp = lambda: os.listdir(files.tmpdir)  # noqa: E731
    small = files.writer(spool=10)
    small.write(b"12345")
    assert tmp() == []
    digest = small.commit()
    with open(files.local_path(digest), "rb") as f:
        assert f.read() == b"12345"
    big = files.writer(spool=10)
    big.write(b"123456")
    big.write(b"789012")  # past the spool: a temporary file now
    assert len(tmp()) == 1
    assert hashlib.sha256(b"123456789012").hexdigest() == big.commit()
    dropped = files.writer(spool=10)
    dropped.write(b"abc")
    dropped.abort()
    assert tmp() == []
    growing = files.writer(spool=10)
    growing.write(b"abc")
    growing.flush()  # as a mirror download does for its readers
    with open(growing.partial_path, "rb") as f:
        assert f.read() == b"abc"
    growing.abort()
    assert tmp() == []


def test_aborted_file_leaves_nothing(files):
    writer = files.writer()
    writer.write(b"partial")
    writer.abort()
    assert os.listdir(files.tmpdir) == []
    assert not files.exists(hashlib.sha256(b"partial").hexdigest())


def test_same_content_twice_is_stored_once(files):
    digests = []
    for _ in range(2):
        writer = files.writer()
        writer.write(b"same")
        digests.append(writer.commit())
    assert digests[0] == digests[1]
    assert os.listdir(files.tmpdir) == []


def test_remove_file(files):
    writer = files.writer()
    writer.write(b"x")
    digest = writer.commit()
    files.remove(digest)
    files.remove(digest)
    assert not files.exists(digest)


def test_stray_temporary_files_are_removed_on_open(tmp_path):
    store = LocalFileStore(str(tmp_path / "+files"))
    store.writer().write(b"crashed")  # never committed nor aborted
    assert os.listdir(store.tmpdir)
    LocalFileStore(str(tmp_path / "+files"))
    assert os.listdir(store.tmpdir) == []


@pytest.mark.parametrize("bad", ["../etc/passwd", "a" * 63, "G" * 64, "/" + "a" * 63])
def test_no_path_outside_the_store(files, bad):
    with pytest.raises(ValueError):
        files.local_path(bad)


def test_read_cache_is_bounded_and_reads_stay_right(open_state):
    s = open_state(cache_size=10)
    with s.transaction() as tx:
        for i in range(50):
            tx.set(f"k{i:02d}", i)
    assert len(s._cache) <= 10
    assert [s.get(f"k{i:02d}") for i in range(50)] == list(range(50))
    assert len(s._cache) <= 10


# -- batched non-durable transactions -----------------------------------------


@pytest.fixture
def batching(tmp_path):
    from twisted.internet.task import Clock

    clock = Clock()
    s = SQLiteStorage(str(tmp_path / "state.sqlite"), clock=clock, batch_delay=0.05, batch_size=3)
    yield s, clock
    s.close()


def _on_disk(s) -> int:
    row = s._db.execute("SELECT MAX(serial) FROM changelog").fetchone()
    return -1 if row[0] is None else row[0]


def test_batched_transactions_are_visible_at_once_and_written_together(batching):
    s, clock = batching
    seen = []
    s.subscribe(lambda serial, keys: seen.append((serial, keys)))
    with s.transaction(durable=False) as tx:
        tx.set("mirror/a", 1)
    with s.transaction(durable=False) as tx:
        tx.set("mirror/b", 2)
        tx.delete("mirror/a")
    # Each has its serial, its listeners' call and its values now ...
    assert s.serial == 1
    assert seen == [(0, frozenset({"mirror/a"})), (1, frozenset({"mirror/a", "mirror/b"}))]
    assert (s.get("mirror/a"), s.get("mirror/b")) == (None, 2)
    assert s.keys("mirror/") == ["mirror/b"]
    # ... and nothing is in the database until the batch is written.
    assert _on_disk(s) == -1
    clock.advance(0.05)
    assert _on_disk(s) == 1
    assert s.changelog_entry(0)["changes"] == {"mirror/a": 1}
    assert s.changelog_entry(1)["changes"] == {"mirror/a": None, "mirror/b": 2}
    assert s.keys("mirror/") == ["mirror/b"]
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again


def test_durable_commit_writes_pending_transactions_first(batching):
    s, clock = batching
    with s.transaction(durable=False) as tx:
        tx.set("file/x", {"stored": False})
    with s.transaction() as tx:
        entry = tx.get("file/x")
        tx.set("file/x", {**entry, "stored": True})
    assert s.serial == 1
    assert _on_disk(s) == 1
    assert s.changelog_entry(0)["changes"] == {"file/x": {"stored": False}}
    assert s.changelog_entry(1)["changes"] == {"file/x": {"stored": True}}
    assert clock.getDelayedCalls() == []  # nothing left to write


def test_close_writes_pending_transactions(tmp_path):
    from twisted.internet.task import Clock

    path = str(tmp_path / "state.sqlite")
    s = SQLiteStorage(path, clock=Clock())
    with s.transaction(durable=False) as tx:
        tx.set("mirror/a", 1)
    s.close()
    s = SQLiteStorage(path)
    assert (s.serial, s.get("mirror/a")) == (0, 1)
    s.close()


def test_pending_transactions_renumbered_after_another_writer(tmp_path):
    """
    Another process committed while transactions were pending: they take
    the serials after its commit, and stale cached values are dropped.
    """
    from twisted.internet.task import Clock

    path = str(tmp_path / "state.sqlite")
    clock = Clock()
    a, b = SQLiteStorage(path, clock=clock), SQLiteStorage(path)
    with a.transaction() as tx:
        tx.set("user/x", "old")
    assert a.get("user/x") == "old"
    with a.transaction(durable=False) as tx:
        tx.set("mirror/p", 1)
    with b.transaction() as tx:
        tx.set("user/x", "new")
    clock.advance(1)
    assert a.serial == 2
    assert a.changelog_entry(1)["changes"] == {"user/x": "new"}
    assert a.changelog_entry(2)["changes"] == {"mirror/p": 1}
    assert (a.get("user/x"), a.get("mirror/p")) == ("new", 1)
    a.close()
    b.close()


def test_failed_batch_write_is_retried(batching, monkeypatch):
    s, clock = batching
    with s.transaction(durable=False) as tx:
        tx.set("mirror/a", 1)
    real_write_entry = s._write_entry
    monkeypatch.setattr(s, "_write_entry", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    clock.advance(0.05)
    assert _on_disk(s) == -1
    assert s.get("mirror/a") == 1  # still visible, still pending
    monkeypatch.setattr(s, "_write_entry", real_write_entry)
    clock.advance(0.05)
    assert _on_disk(s) == 0
    assert s.changelog_entry(0)["changes"] == {"mirror/a": 1}


def test_a_full_batch_is_written_at_once(batching):
    s, clock = batching
    for n in range(3):
        with s.transaction(durable=False) as tx:
            tx.set(f"mirror/{n}", n)
    clock.advance(0)
    assert _on_disk(s) == 2
    assert clock.getDelayedCalls() == []


# -- changelog frames ------------------------------------------------------------


def _commit(s, n: int, durable: bool = True, size: int = 10) -> None:
    with s.transaction(durable=durable) as tx:
        tx.set(f"k/{n}", "x" * size)


def test_changelog_frames_are_the_stored_rows_in_order(storage):
    assert storage.changelog_frames(0, 1000) == []
    for n in range(5):
        _commit(storage, n)
    with storage.transaction() as tx:
        tx.delete("k/0")
        tx.set("k/é", {"b": [1, None], "a": "ü"})
    frames = storage.changelog_frames(0, 10**9)
    assert [serial for serial, _, _ in frames] == list(range(6))
    for serial, timestamp, text in frames:
        entry = storage.changelog_entry(serial)
        assert (timestamp, json.loads(text)) == (entry["timestamp"], entry["changes"])
        assert text == dict(_rows(storage, "changelog", "serial, changes"))[serial]  # as stored
    assert [serial for serial, _, _ in storage.changelog_frames(3, 10**9)] == [3, 4, 5]
    assert storage.changelog_frames(6, 10**9) == []
    assert storage.changelog_frames(60, 10**9) == []


def test_changelog_frames_stop_at_max_bytes_with_at_least_one(storage):
    for n in range(10):
        _commit(storage, n, size=100)
    size = len(storage.changelog_frames(0, 1)[0][2])
    assert size > 100
    # One entry whatever the limit; then entries until the limit is reached.
    assert [f[0] for f in storage.changelog_frames(0, 1)] == [0]
    assert [f[0] for f in storage.changelog_frames(4, size)] == [4]
    assert [f[0] for f in storage.changelog_frames(4, size + 1)] == [4, 5]
    assert [f[0] for f in storage.changelog_frames(4, 3 * size)] == [4, 5, 6]
    assert [f[0] for f in storage.changelog_frames(8, 3 * size)] == [8, 9]


def test_changelog_frames_include_pending_batched_commits_without_writing_them(batching):
    s, clock = batching
    _commit(s, 0)
    _commit(s, 1, durable=False)
    with s.transaction(durable=False) as tx:
        tx.set("k/2", {"z": 1, "a": [2]})
        tx.delete("k/1")
    assert (s.serial, _on_disk(s)) == (2, 0)
    pending = s.changelog_frames(0, 10**9)
    assert [f[0] for f in pending] == [0, 1, 2]
    assert [f[0] for f in s.changelog_frames(2, 10**9)] == [2]
    assert [f[0] for f in s.changelog_frames(1, 1)] == [1]
    assert _on_disk(s) == 0  # served from memory: the batch is not written early
    clock.advance(0.05)
    assert _on_disk(s) == 2
    # The same entries once written: same serials, timestamps and text.
    assert s.changelog_frames(0, 10**9) == pending


def test_absent_keys_are_remembered_within_bounds_and_forgotten_when_set(tmp_path):
    s = SQLiteStorage(str(tmp_path / "state.sqlite"), cache_size=10)
    queries = []
    s._db.set_trace_callback(queries.append)
    assert s.get("mirror/nothing") is None
    assert s.get("mirror/nothing") is None
    assert len([q for q in queries if q.startswith("SELECT value")]) == 1
    for n in range(50):
        s.get(f"made-up/{n}")
    assert len(s._cache.absent) == 10
    s._db.set_trace_callback(None)
    with s.transaction() as tx:
        tx.set("mirror/nothing", 1)
    assert s.get("mirror/nothing") == 1
    with s.transaction() as tx:
        tx.delete("mirror/nothing")
    assert s.get("mirror/nothing") is None
    s.close()


def test_a_fan_out_directory_removed_behind_the_store_is_made_again(tmp_path):
    import shutil

    store = LocalFileStore(str(tmp_path / "files"))
    writer = store.writer()
    writer.write(b"one")
    digest = writer.commit()
    shutil.rmtree(os.path.dirname(store.local_path(digest)))
    writer = store.writer()
    writer.write(b"one")
    assert writer.commit() == digest
    assert store.exists(digest)


# -- entries replicated from a primary ------------------------------------------------


def test_imported_entries_make_the_primarys_changelog_and_state(open_state):
    primary = open_state("primary")
    replica = open_state("replica")
    with primary.transaction() as tx:
        tx.set("user/alice", {"username": "alice", "indexes": {"dev": {"type": "stage"}}})
        tx.set("blob/" + "a" * 64, 1)
    with primary.transaction() as tx:
        tx.set("k", {"\u00e9": [1.5, None, True]})
        tx.delete("blob/" + "a" * 64)
    seen = []
    replica.subscribe(lambda serial, keys: seen.append((serial, keys)))
    for serial in range(primary.serial + 1):
        entry = primary.changelog_entry(serial)
        replica.import_entry(entry["serial"], entry["timestamp"], entry["changes"])
    assert replica.serial == primary.serial == 1
    assert seen == [
        (0, frozenset(["user/alice", "blob/" + "a" * 64])),
        (1, frozenset(["k", "blob/" + "a" * 64])),
    ]
    assert replica.get("k") == {"\u00e9": [1.5, None, True]}
    assert replica.get("blob/" + "a" * 64) is None
    assert replica.last_commit_timestamp() == primary.last_commit_timestamp()
    for table, columns in [("changelog", "serial, timestamp, changes"), ("kv", "key, value, serial")]:
        assert _rows(replica, table, columns) == _rows(primary, table, columns)
    replica.close()
    replica = open_state("replica")
    assert (replica.serial, replica.get("user/alice")["username"]) == (1, "alice")


@pytest.mark.parametrize("serial", [0, 1, 3])
def test_import_refuses_a_serial_that_does_not_follow(storage, serial):
    """
    After serial 1, entry 0 or 1 (applied already) and entry 3 (a gap) are
    refused; nothing changes and no listener hears of them.
    """
    from devpi_tx.storage.errors import SerialMismatch

    storage.import_entry(0, 1.0, {"a": 1})
    storage.import_entry(1, 2.0, {"a": 2})
    seen = []
    storage.subscribe(lambda s, keys: seen.append(s))
    with pytest.raises(SerialMismatch, match=f"entry {serial} does not follow serial 1"):
        storage.import_entry(serial, 3.0, {"a": 3})
    assert (storage.serial, storage.get("a"), seen) == (1, 2, [])
    assert storage.changelog_entry(2) is None
    storage.import_entry(2, 3.0, {"a": 3})
    assert (storage.serial, storage.get("a"), seen) == (2, 3, [2])


def test_import_refused_when_another_process_committed(open_state):
    from devpi_tx.storage.errors import SerialMismatch

    a, b = open_state(), open_state()
    a.import_entry(0, 1.0, {"a": 1})
    with b.transaction() as tx:
        tx.set("b", 1)
    with pytest.raises(SerialMismatch, match="on disk" if open_state.provider == "sqlite" else "database"):
        a.import_entry(1, 2.0, {"a": 2})
    assert a.serial == 1  # knows the serial on disk now
    assert a.get("a") == 1 and a.changelog_entry(1)["changes"] == {"b": 1}


def test_a_non_durable_import_is_a_commit_and_leaves_full_sync_on(tmp_path):
    path = str(tmp_path / "state.sqlite")
    s = SQLiteStorage(path)
    s.import_entry(0, 1.0, {"a": 1}, durable=False)
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(ValueError):
        s.import_entry(5, 1.0, {"a": 2}, durable=False)
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    s.close()
    s = SQLiteStorage(path)
    assert (s.serial, s.get("a"), s.changelog_entry(0)["timestamp"]) == (0, 1, 1.0)
    s.close()


def test_import_drops_cached_values_it_changes(storage):
    storage.import_entry(0, 1.0, {"a": 1, "b": 2})
    assert (storage.get("a"), storage.get("b"), storage.get("c")) == (1, 2, None)
    storage.import_entry(1, 2.0, {"a": None, "b": 3, "c": 4})
    assert (storage.get("a"), storage.get("b"), storage.get("c")) == (None, 3, 4)
    assert storage.keys("") == ["b", "c"]


def test_a_file_stored_by_a_hard_link_is_checked_first(files, tmp_path):
    source = tmp_path / "elsewhere"
    source.write_bytes(b"shared bytes")
    digest = hashlib.sha256(b"shared bytes").hexdigest()
    assert not files.link(str(source), hashlib.sha256(b"other").hexdigest())
    assert os.listdir(files.tmpdir) == []
    assert files.link(str(source), digest)
    assert os.stat(files.local_path(digest)).st_ino == source.stat().st_ino
    assert files.link(str(source), digest)  # already there: kept as it is
    assert os.listdir(files.tmpdir) == []
    with pytest.raises(OSError):
        files.link(str(tmp_path / "missing"), digest)


def test_a_failing_listener_neither_fails_the_commit_nor_silences_the_others(storage):
    told = []

    def failing(serial, keys):
        raise RuntimeError("a cache's bug")

    storage.subscribe(failing)
    storage.subscribe(lambda serial, keys: told.append((serial, keys)))
    with storage.transaction() as tx:
        tx.set("k", 1)
    assert told == [(storage.serial, frozenset({"k"}))]
    assert storage.get("k") == 1

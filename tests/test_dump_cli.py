"""
What goes wrong with C{devpi-tx export} and C{devpi-tx import} is one
line naming the path or option, and leaves the server directory usable
(a dump with a damaged file imports nothing); the progress shows on a
terminal as a bar, elsewhere as lines.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest

from devpi_tx.cli.main import main
from devpi_tx.dump.progress import Progress
from devpi_tx.storage.sqlite import SQLiteStorage

DUMP = Path(__file__).parent / "data" / "devpi6" / "dump"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def copy_dump(tmp_path: Path) -> Path:
    target = tmp_path / "dump"
    shutil.copytree(DUMP, target)
    return target


def edit(dump: Path, change) -> None:
    path = dump / "dataindex.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def keys(serverdir: Path) -> list[str]:
    storage = SQLiteStorage(str(serverdir / ".sqlite"))
    try:
        return storage.keys("")
    finally:
        storage.close()


def test_export_needs_a_server_directory(tmp_path, capsys):
    code, _, err = run(capsys, "export", "--serverdir", str(tmp_path / "none"), str(tmp_path / "d"))
    assert code == 1
    assert err == (
        f"devpi-tx export: error: {tmp_path / 'none'} is no devpi-tx server directory (no .nodeinfo); "
        "give one with --serverdir\n"
    )
    assert not (tmp_path / "d").exists()


def test_export_into_a_directory_that_is_not_empty(tmp_path, capsys):
    server = tmp_path / "server"
    assert run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(DUMP))[0] == 0
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("")
    code, _, err = run(capsys, "export", "--serverdir", str(server), str(tmp_path / "d"))
    assert (code, err) == (
        1,
        f"devpi-tx export: error: export directory {tmp_path / 'd'} must not exist or be empty\n",
    )
    assert os.listdir(tmp_path / "d") == ["x"]


def test_export_of_a_file_missing_from_the_store(tmp_path, capsys):
    server = tmp_path / "server"
    run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(DUMP))
    victim = next((server / "+files").glob("*/*"))
    victim.unlink()
    code, _, err = run(capsys, "export", "--serverdir", str(server), str(tmp_path / "d"))
    assert code == 1
    assert err.startswith(f"devpi-tx export: error: {victim} is missing: the file ")
    assert err.endswith(" is linked in the state but not stored\n")
    assert not (tmp_path / "d" / "dataindex.json").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "nothing", "import directory {d}/nothing does not exist"),
        (lambda d: d, "{d}/dataindex.json is missing: {d} is no dump of devpi-export or devpi-tx export"),
    ],
)
def test_import_of_no_dump(tmp_path, capsys, make, message):
    code, _, err = run(capsys, "import", "--serverdir", str(tmp_path / "s"), str(make(tmp_path)))
    assert (code, err) == (1, "devpi-tx import: error: " + message.format(d=tmp_path) + "\n")
    assert not (tmp_path / "s").exists()


def test_import_into_a_server_that_is_not_empty(tmp_path, capsys):
    server = tmp_path / "server"
    run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(DUMP))
    before = keys(server)
    code, _, err = run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(DUMP))
    assert code == 1
    assert err.startswith(f"devpi-tx import: error: {server} is not empty (it holds ")
    assert err.endswith("): import into a new server directory\n")
    assert keys(server) == before


def test_import_into_an_initialised_server(tmp_path, capsys):
    server = tmp_path / "server"
    assert (
        run(capsys, "init", "--serverdir", str(server), "--mirror-url", "http://127.0.0.1:9/simple/")[0] == 0
    )
    code, out, _ = run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(DUMP))
    assert code == 0, out
    # The dump's root replaces the initial one; root/pypi stays.
    storage = SQLiteStorage(str(server / ".sqlite"))
    try:
        root = storage.get("user/root")
    finally:
        storage.close()
    assert sorted(root["indexes"]) == ["mirror", "pypi"]
    dumped = json.loads((DUMP / "dataindex.json").read_text())["users"]["root"]
    assert root["pwhash"] == dumped["pwhash"]


def test_a_damaged_file_imports_nothing(tmp_path, capsys):
    dump = copy_dump(tmp_path)
    damaged = dump / "alice" / "dev" / "pkgb" / "2.0" / "pkgb-2.0.tar.gz"
    damaged.write_bytes(damaged.read_bytes() + b"x")
    server = tmp_path / "server"
    code, _, err = run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(dump))
    assert code == 1
    assert err.startswith(f"devpi-tx import: error: {damaged}: its sha256 is ")
    assert ", the dump says " in err
    assert keys(server) == ["user/root"]
    # Mended, it imports into the same directory.
    shutil.copy(DUMP / damaged.relative_to(dump), damaged)
    assert run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(dump))[0] == 0


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["indexes"]["alice/dev"]["files"][0].update(relpath="../../etc/passwd"),
            "index alice/dev, file '../../etc/passwd': file path '../../etc/passwd' leads outside the dump",
        ),
        (
            lambda d: d["indexes"]["bob/empty"]["indexconfig"].update(type="weird"),
            "{dump}: index bob/empty: unknown index type 'weird'",
        ),
        (
            lambda d: d["indexes"]["bob/empty"]["indexconfig"].update(frob=1),
            "{dump}: index bob/empty: indexconfig got unexpected keyword arguments: frob=1",
        ),
        (lambda d: d.update(dumpversion="7"), "{dump}/dataindex.json: dump version '7' is not one of 1, 2"),
        (
            lambda d: d["users"].update({"bad name": {}}),
            "{dump}/dataindex.json: username 'bad name' contains characters that aren't allowed. "
            "Any ascii symbol besides -.@_ is blocked.",
        ),
        (
            lambda d: (
                d["indexes"]["bob/empty"]["indexconfig"].update(bases=["alice/dev"])
                or d["indexes"]["alice/base"]["indexconfig"].update(bases=["bob/empty"])
                or d["indexes"]["alice/dev"]["indexconfig"].update(bases=["alice/base"])
            ),
            "{dump}: index bob/empty: bases would form a loop: "
            "bob/empty -> alice/dev -> alice/base -> bob/empty",
        ),
    ],
)
def test_bad_dumps_are_refused_before_anything_is_written(tmp_path, capsys, change, message):
    dump = copy_dump(tmp_path)
    edit(dump, change)
    server = tmp_path / "server"
    code, _, err = run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(dump))
    assert (code, err) == (1, "devpi-tx import: error: " + message.format(dump=dump) + "\n")
    assert not server.exists()


def test_bases_not_in_the_dump_are_left_out(tmp_path, capsys):
    dump = copy_dump(tmp_path)
    edit(dump, lambda d: d["indexes"].pop("root/mirror"))
    code, out, _ = run(capsys, "import", "--from-devpi", "--serverdir", str(tmp_path / "s"), str(dump))
    assert code == 0
    assert "warning: index alice/dev: bases root/mirror not in the dump; left out\n" in out


def test_progress_bar_on_a_terminal():
    stream = io.StringIO()
    now = [0.0]
    progress = Progress("import", 3, 3_000_000, stream, tty=True, clock=lambda: now[0])
    for _ in range(3):
        now[0] += 1
        progress.advance(1_000_000)
    progress.line("a warning")
    progress.finish()
    text = stream.getvalue()
    assert "\r[##########....................] import: 1/3 files, 1.0 MB/3.0 MB" in text
    assert "\r[##############################] import: 3/3 files, 3.0 MB/3.0 MB" in text
    assert "3.0 MB\na warning\n" in text
    assert text.endswith("\n")


def test_progress_lines_are_few():
    stream = io.StringIO()
    progress = Progress("export", 1000, 1000, stream, tty=False, clock=lambda: 0.0)
    for _ in range(1000):
        progress.advance(1)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[-1] == "export: 1000/1000 files, 1.0 KB/1.0 KB"


def test_the_export_reads_one_moment_of_the_state(tmp_path, capsys):
    """
    A server left running by mistake cannot make a dump inconsistent:
    the export reads the state as of its first read.
    """
    from devpi_tx.dump.exporter import Snapshot

    server = tmp_path / "server"
    run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(DUMP))
    snapshot = Snapshot(str(server / ".sqlite"))
    try:
        before = snapshot.get("user/alice")
        writer = SQLiteStorage(str(server / ".sqlite"))
        with writer.transaction() as tx:
            tx.set("user/alice", dict(before, title="changed"))
            tx.set("user/zed", {"username": "zed"})
        writer.close()
        assert snapshot.get("user/alice") == before
        assert snapshot.keys("user/") == ["user/alice", "user/bob", "user/root"]
    finally:
        snapshot.close()


def test_neither_runs_beside_a_server(tmp_path, capsys):
    """
    Both take the server directory's lock: a server (or another command)
    holding it makes them stop, naming it, before they change anything.
    """
    from devpi_tx.config import ServerConfig
    from devpi_tx.startup import take_serverdir

    server = tmp_path / "server"
    run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(DUMP))
    fresh = tmp_path / "fresh"
    for directory, argv in (
        (server, ["export", "--serverdir", str(server), str(tmp_path / "d")]),
        (fresh, ["import", "--from-devpi", "--serverdir", str(fresh), str(DUMP)]),
    ):
        lock = take_serverdir(ServerConfig(serverdir=str(directory)))
        try:
            code, _, err = run(capsys, *argv)
        finally:
            lock.release()
        assert code == 1
        assert err.startswith(f"devpi-tx {argv[0]}: error: server directory {directory} is in use by ")
        assert err.count("\n") == 1
    assert not (tmp_path / "d").exists()
    assert not (fresh / ".nodeinfo").exists()


def test_fsck_finds_nothing_after_an_import(tmp_path, capsys):
    server = tmp_path / "server"
    run(capsys, "import", "--from-devpi", "--serverdir", str(server), str(DUMP))
    code, out, _ = run(capsys, "fsck", "--serverdir", str(server))
    assert (code, out.splitlines()[-1]) == (0, "no problems found")

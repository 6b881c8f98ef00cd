"""
Offline maintenance: C{devpi-tx passwd}, C{gen-secret} and C{fsck}
(issue 17, item 6), on a server directory the in-memory server wrote.
"""

from __future__ import annotations

import io
import os
import stat

import pytest

from devpi_tx.cli import main as cli
from devpi_tx.cli import maintenance

from .distfiles import make_wheel
from .test_releases import upload


@pytest.fixture
def filled(client, context, alice):
    """
    A server directory with two uploads, the server's state closed.
    """
    assert client.request("PUT", "/alice/dev", {"volatile": False}, headers=alice).code == 200
    for version in ("1.0", "2.0"):
        assert upload(client, alice, "pkg", version, *make_wheel("pkg", version)).code == 200
    context.derived_blobs.flush()
    wheels = {
        version: context.storage.get(key)
        for version in ("1.0", "2.0")
        for key in context.storage.keys("file/alice/dev/")
        if key.endswith(f"pkg-{version}-py3-none-any.whl")
    }
    context.close()
    return context.config.serverdir, wheels


def blob(serverdir: str, sha256: str) -> str:
    return os.path.join(serverdir, "+files", sha256[:3], sha256[3:])


def test_fsck_finds_nothing_wrong_in_a_sound_directory(filled):
    serverdir, _ = filled
    report = maintenance.fsck(serverdir)
    assert report.clean and report.checked == 4  # two wheels, their METADATA


def test_fsck_finds_damage_and_repair_mends_what_it_can(filled, monkeypatch):
    serverdir, wheels = filled
    damaged, gone = wheels["1.0"]["sha256"], wheels["2.0"]["sha256"]
    with open(blob(serverdir, damaged), "r+b") as f:
        f.write(b"X")
    os.unlink(blob(serverdir, gone))
    stray = "ab" * 32
    os.makedirs(os.path.dirname(blob(serverdir, stray)), exist_ok=True)
    open(blob(serverdir, stray), "wb").write(b"nobody's")
    report = maintenance.fsck(serverdir)
    assert (report.damaged, report.missing, report.unlinked) == ([damaged], [gone], [stray])
    lines: list[str] = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert cli.main(["fsck", "--serverdir", serverdir]) == 2
    assert f"damaged: {damaged}" in lines and f"unlinked: {stray}" in lines
    report = maintenance.fsck(serverdir, repair=True)
    assert len([line for line in report.repaired if "unlinked (its bytes are gone" in line]) == 2
    assert not os.path.exists(blob(serverdir, stray))
    assert maintenance.fsck(serverdir).clean


def test_passwd_sets_a_password_offline(filled, client_factory=None):
    serverdir, _ = filled
    maintenance.set_password(serverdir, "alice", "new secret pw")
    from argon2 import PasswordHasher

    from devpi_tx.model import users
    from devpi_tx.storage.sqlite import open_storage

    storage = open_storage(serverdir)
    try:
        assert PasswordHasher().verify(users.get_user(storage, "alice")["pwhash"], "new secret pw")
    finally:
        storage.close()
    with pytest.raises(ValueError, match="no user 'bob'"):
        maintenance.set_password(serverdir, "bob", "x")


def test_passwd_reads_a_line_of_stdin_when_not_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\n"))
    assert maintenance.read_new_password() == "from stdin"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(ValueError, match="empty password"):
        maintenance.read_new_password()


def test_gen_secret_writes_a_private_file_and_keeps_an_old_one(tmp_path):
    path = str(tmp_path / "secret")
    maintenance.gen_secret(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(open(path).read().strip()) >= 32
    first = open(path).read()
    with pytest.raises(ValueError, match="--force"):
        maintenance.gen_secret(path)
    maintenance.gen_secret(path, force=True)
    assert open(path).read() != first


def test_a_command_a_person_can_mend_fails_in_one_plain_line(tmp_path, capsys):
    path = str(tmp_path / "secret")
    maintenance.gen_secret(path)
    assert cli.main(["gen-secret", "--secretfile", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert "ValueError" not in err and "--debug" not in err


def test_a_bad_size_names_its_option_once():
    from devpi_tx.config import ConfigError, build_config

    with pytest.raises(ConfigError) as info:
        build_config({"mirror-cache-size": "lots"}, None, environ={})
    assert str(info.value).startswith("option mirror-cache-size: ")

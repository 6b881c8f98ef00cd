"""
Start-up checks, the server directory's lock and one-line errors, in
process (L{devpi_tx.startup}, the twistd plugin's options, C{devpi-tx});
the same failures from real processes are in C{test_startup_errors.py}.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import sys

import pytest
from twisted.internet.defer import fail
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.web.server import Site

from devpi_tx import startup
from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.cli.main import main as cli_main
from devpi_tx.config import ConfigError, ServerConfig, build_config
from devpi_tx.options import ServerOptions, TwistdServerOptions
from devpi_tx.serverdir import (
    LOCK_NAME,
    ServerDirBusy,
    initialize,
    lock_serverdir,
    write_nodeinfo,
)
from devpi_tx.startup import ListeningService

MIRROR = "http://127.0.0.1:9/simple/"


def config_for(tmp_path, **kwargs) -> ServerConfig:
    kwargs.setdefault("serverdir", str(tmp_path / "server"))
    kwargs.setdefault("mirror_url", MIRROR)
    return ServerConfig(**kwargs)


# -- the environment -------------------------------------------------------------


@pytest.mark.parametrize(
    "environ, message",
    [
        (
            {"DEVPISERVER_PROT": "3142"},
            "environment variable DEVPISERVER_PROT names no option of devpi-tx; "
            "did you mean DEVPISERVER_PORT?",
        ),
        (
            {"DEVPISERVER_OUTSIDEURL": "http://x"},
            "environment variable DEVPISERVER_OUTSIDEURL names no option of devpi-tx; "
            "did you mean DEVPISERVER_OUTSIDE_URL?",
        ),
        (
            {"DEVPISERVER_FROBNICATE": "1"},
            "environment variable DEVPISERVER_FROBNICATE names no option of devpi-tx; "
            "unset it (twistd devpi --help lists the options)",
        ),
        (
            {"DEVPISERVER_PORT": "abc"},
            "environment variable DEVPISERVER_PORT: expected an integer, got 'abc'",
        ),
        (
            {"DEVPISERVER_OFFLINE_MODE": "perhaps"},
            "environment variable DEVPISERVER_OFFLINE_MODE: expected yes/no/true/false, got 'perhaps'",
        ),
    ],
)
def test_environment_errors_name_the_variable(environ, message):
    with pytest.raises(ConfigError) as info:
        build_config({}, environ=environ)
    assert str(info.value) == message


def test_empty_environment_variables_count_as_unset():
    assert build_config({}, environ={"DEVPISERVER_PORT": ""}).port == 3141


def test_a_config_file_value_is_reported_with_its_file(tmp_path):
    path = tmp_path / "devpi.yml"
    path.write_text("devpi-server:\n  port: abc\n")
    with pytest.raises(ConfigError) as info:
        build_config({}, str(path), environ={})
    assert str(info.value) == f"configfile {path}: option port: expected an integer, got 'abc'"


@pytest.mark.parametrize("host", ["999.1.1.1", "1.2.3", "", "a b", "[::1]"])
def test_a_host_that_is_no_address_is_refused(host):
    with pytest.raises(ConfigError, match="^option host: .* is not an IP address or host name"):
        build_config({"host": host}, environ={})


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1", "::", "localhost", "devpi.internal"])
def test_addresses_and_names_are_hosts(host):
    assert build_config({"host": host}, environ={}).host == host


def test_help_mentions_the_environment_and_the_lock():
    text = str(ServerOptions())
    assert "DEVPISERVER_" in text and "DEVPISERVER_PORT" in text
    assert "not implemented" not in text
    assert "--debug" in text and "traceback" in text
    assert ".lock" in text and "twistd.pid" in text
    # --listen's help is one paragraph (no docstring indentation in it).
    assert "Twisted endpoint to listen on (repeatable), e.g. tcp:3141:interface=127.0.0.1" in " ".join(
        text.split()
    )


# -- paths and state -----------------------------------------------------------------


def test_serverdir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    config = config_for(tmp_path, serverdir=str(tmp_path / "file" / "sub" / "server"))
    with pytest.raises(ConfigError) as info:
        startup.check_paths(config)
    assert str(info.value) == (
        f"option serverdir: cannot create {config.serverdir}: {tmp_path / 'file'} is a file, not a directory"
    )


def test_serverdir_that_is_a_file(tmp_path):
    (tmp_path / "server").write_text("")
    with pytest.raises(ConfigError, match="option serverdir: .* is a file, not a directory"):
        startup.check_paths(config_for(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only directory")
def test_serverdir_in_a_read_only_directory(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    config = config_for(tmp_path, serverdir=str(tmp_path / "ro" / "server"))
    with pytest.raises(ConfigError) as info:
        startup.check_paths(config)
    assert str(info.value) == (
        f"option serverdir: cannot create {config.serverdir}: this user may not write in {tmp_path / 'ro'}"
    )


def test_serverdir_that_cannot_be_created_is_told_on_creation(tmp_path):
    config = config_for(tmp_path, serverdir="/proc/devpi-tx/server")
    with pytest.raises(ConfigError) as info:
        startup.take_serverdir(config)
    assert str(info.value).startswith("option serverdir: cannot create /proc/devpi-tx/server: ")
    assert not os.path.exists("/proc/devpi-tx")


def test_secret_file_checks(tmp_path):
    short = tmp_path / "short"
    short.write_text("x" * 10)
    with pytest.raises(ConfigError, match=f"^option secretfile: {short} holds fewer than 32 bytes"):
        startup.check_paths(config_for(tmp_path, secretfile=str(short)))
    with pytest.raises(ConfigError, match="^option secretfile: .* is a directory"):
        startup.check_paths(config_for(tmp_path, secretfile=str(tmp_path)))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="^option secretfile: cannot create"):
        startup.check_paths(config_for(tmp_path, secretfile=str(tmp_path / "file" / "secret")))


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "cannot read"),
        ("version: [1\n", "is not valid YAML"),
        ("- a list\n", "must hold a mapping"),
    ],
)
def test_logger_cfg_checks(tmp_path, text, message):
    path = tmp_path / "logging.yml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=f"^option logger-cfg: .*{message}"):
        startup.check_paths(config_for(tmp_path, logger_cfg=str(path)))


def test_access_log_in_a_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="^option access-log: .* is not a directory"):
        startup.check_paths(config_for(tmp_path, access_log=str(tmp_path / "none" / "access.log")))


def test_a_replica_needs_the_primarys_secret(tmp_path):
    config = config_for(tmp_path, role="replica", primary_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError) as info:
        startup.check_state(config)
    assert str(info.value).startswith("option secretfile: a replica needs its primary's secret")
    assert not os.path.exists(config.serverdir)


def test_roles_of_the_state_and_the_options_must_agree(tmp_path):
    standalone = config_for(tmp_path, no_root_pypi=True, root_passwd="x")
    initialize(standalone, hasher=fast_hasher())
    replica = config_for(tmp_path, role="replica", primary_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="holds a standalone server's state, not a replica's"):
        startup.check_state(replica)
    write_nodeinfo(standalone.serverdir, {"uuid": "u", "role": "replica", "layout": 2})
    with pytest.raises(ConfigError, match="holds a replica's state; start it with --role replica"):
        startup.check_state(standalone)
    (tmp_path / "server" / ".nodeinfo").write_text("{")
    with pytest.raises(ConfigError, match="cannot be read"):
        startup.check_state(standalone)


def test_build_context_refuses_a_replica_on_a_standalone_state(tmp_path):
    from devpi_tx.service import build_context

    standalone = config_for(tmp_path, no_root_pypi=True, root_passwd="x")
    initialize(standalone, hasher=fast_hasher())
    before = sorted(os.listdir(standalone.serverdir))
    replica = config_for(tmp_path, role="replica", primary_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="not a replica's"):
        build_context(replica, reactor=MemoryReactor())
    assert sorted(os.listdir(standalone.serverdir)) == before


# -- endpoints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "listen, message",
    [
        (
            "foo:bar",
            "option listen: 'foo:bar' is not a server endpoint (unknown endpoint type 'foo'); give one like "
            "tcp:3141:interface=127.0.0.1 or ssl:3443:privateKey=key.pem:certKey=cert.pem",
        ),
        (
            "3152",
            "option listen: '3152' is not a server endpoint (a port alone is not one); "
            "give tcp:3152, or tcp:3152:interface=127.0.0.1",
        ),
        ("tcp:notaport", "option listen: 'tcp:notaport' is not a server endpoint (its port is not a number)"),
        (
            "tcp:1:bogus=2",
            "option listen: 'tcp:1:bogus=2' is not a server endpoint (unknown parameter 'bogus')",
        ),
        (
            "ssl:3443:privateKey=/nonexistent/key.pem",
            "option listen: 'ssl:3443:privateKey=/nonexistent/key.pem' is not a server endpoint "
            "(/nonexistent/key.pem: No such file or directory)",
        ),
        ("tcp:99999", "option listen 'tcp:99999': 99999 is not a port number (0 to 65535)"),
    ],
)
def test_bad_endpoints(tmp_path, listen, message):
    with pytest.raises(ConfigError) as info:
        startup.check_endpoints(config_for(tmp_path, listen=(listen,)), MemoryReactor())
    assert str(info.value).startswith(message)


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use(tmp_path, taken_port):
    config = config_for(tmp_path, port=taken_port)
    with pytest.raises(ConfigError) as info:
        startup.check_endpoints(config, MemoryReactor())
    assert str(info.value) == (
        f"option port: 127.0.0.1:{taken_port} is already in use (another server listens there); "
        "stop it, or choose another port"
    )
    listen = f"tcp:{taken_port}:interface=127.0.0.1"
    with pytest.raises(ConfigError, match=f"^option listen '{listen}': 127.0.0.1:{taken_port} is already"):
        startup.check_endpoints(config_for(tmp_path, listen=(listen,)), MemoryReactor())


def test_an_address_of_another_machine(tmp_path):
    # TEST-NET-1 (RFC 5737): never an address of this machine.
    with pytest.raises(ConfigError, match="^option host: 192.0.2.1 is not an address of this machine"):
        startup.check_endpoints(config_for(tmp_path, host="192.0.2.1", port=0), MemoryReactor())


def test_free_endpoints_pass(tmp_path):
    startup.check_endpoints(config_for(tmp_path, port=0), MemoryReactor())
    startup.check_endpoints(config_for(tmp_path, listen=(f"unix:{tmp_path}/sock",)), MemoryReactor())


class _Refusing:
    def __init__(self, error):
        self.error = error

    def listen(self, factory):
        return fail(self.error)


@pytest.mark.parametrize(
    "error, message",
    [
        (
            CannotListenError("127.0.0.1", 3141, OSError(errno.EADDRINUSE, "Address already in use")),
            "option port: 127.0.0.1:3141 is already in use (another server listens there); "
            "stop it, or choose another port",
        ),
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "12", None, "/x/sock.lock"),
            "option port: cannot listen on tcp:3141: No such file or directory (/x/sock.lock)",
        ),
    ],
)
def test_a_failure_to_listen_at_start_is_one_line(error, message):
    service = ListeningService(_Refusing(error), Site(None), "tcp:3141", ("option host", "option port"))
    with pytest.raises(startup.ListenError) as info:
        service.privilegedStartService()
    assert str(info.value) == message


# -- the lock ---------------------------------------------------------------------------


def test_one_lock_per_server_directory(tmp_path):
    first = lock_serverdir(str(tmp_path))
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(ServerDirBusy) as info:
        lock_serverdir(str(tmp_path))
    assert str(info.value) == (
        f"server directory {tmp_path} is in use by another devpi-tx process (pid {os.getpid()}); "
        "stop it first, or give another --serverdir"
    )
    first.write_pid(4242)
    with pytest.raises(ServerDirBusy, match=r"\(pid 4242\)"):
        lock_serverdir(str(tmp_path))
    first.release()
    assert not first.held
    second = lock_serverdir(str(tmp_path))
    second.release()


def test_take_serverdir_creates_the_directory_and_locks_it(tmp_path):
    config = config_for(tmp_path, serverdir=str(tmp_path / "a" / "b"))
    lock = startup.take_serverdir(config)
    try:
        assert os.listdir(config.serverdir) == [LOCK_NAME]
        with pytest.raises(ServerDirBusy):
            startup.take_serverdir(config)
    finally:
        lock.release()


# -- the plugin's options ------------------------------------------------------------------


class _Twistd(usage.Options):
    optParameters = [["pidfile", None, "twistd.pid"], ["logfile", None, None]]
    optFlags = [["nodaemon", "n"]]


def twistd_options(tmp_path, *argv, parent_argv=("--nodaemon",)):
    parent = _Twistd()
    parent.parseOptions(list(parent_argv))
    options = TwistdServerOptions()
    options.parent = parent
    options.parseOptions(["--mirror-url", MIRROR, "--listen", "tcp:0:interface=127.0.0.1", *argv])
    return parent, options


@pytest.fixture
def keep_excepthook():
    hook = sys.excepthook
    yield
    sys.excepthook = hook


def test_plugin_options_lock_and_move_the_pid_file(tmp_path, keep_excepthook):
    serverdir = tmp_path / "server"
    serverdir.mkdir()
    (serverdir / "twistd.pid").write_text("1\n")  # left by a crash: pid 1 lives
    parent, options = twistd_options(tmp_path, "--serverdir", str(serverdir))
    try:
        assert parent["pidfile"] == str(serverdir / "twistd.pid")
        assert not (serverdir / "twistd.pid").exists()
        assert parent["logfile"] is None
        assert options.lock.held
        with pytest.raises(SystemExit) as info:
            twistd_options(tmp_path, "--serverdir", str(serverdir))
        assert str(info.value.code) == (
            f"twistd devpi: error: server directory {serverdir} is in use by another devpi-tx process "
            f"(pid {os.getpid()}); stop it first, or give another --serverdir"
        )
    finally:
        options.lock.release()
    parent, options = twistd_options(
        tmp_path, "--serverdir", str(serverdir), parent_argv=["--pidfile", "/run/devpi.pid"]
    )
    options.lock.release()
    assert parent["pidfile"] == "/run/devpi.pid"
    # A daemon's log goes into the server directory too.
    assert parent["logfile"] == str(serverdir / "twistd.log")


def test_plugin_options_check_before_writing(tmp_path, keep_excepthook):
    with pytest.raises(SystemExit) as info:
        twistd_options(tmp_path, "--serverdir", str(tmp_path / "server"), "--listen", "foo:bar")
    assert str(info.value.code).startswith("twistd devpi: error: option listen: 'foo:bar' is not")
    assert os.listdir(tmp_path) == []


def test_excepthook_one_line(keep_excepthook, monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", stderr)
    startup.install_excepthook("twistd devpi")
    sys.excepthook(ConfigError, ConfigError("option x: wrong"), None)
    sys.excepthook(
        PermissionError, PermissionError(errno.EACCES, "Permission denied", "/srv/s/.sqlite"), None
    )
    sys.excepthook(KeyError, KeyError("uuid"), None)
    assert stderr.getvalue().splitlines() == [
        "twistd devpi: error: option x: wrong",
        "twistd devpi: error: /srv/s/.sqlite: Permission denied",
        "twistd devpi: error: KeyError: 'uuid' (run with --debug for the traceback)",
    ]


# -- devpi-tx -----------------------------------------------------------------------------


def test_init_help_describes_its_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["init", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in [
        "--serverdir DIR the server directory",
        "--no-root-pypi do not create the root/pypi mirror",
        "--root-passwd PASSWORD password of user root",
        "--root-passwd-hash HASH argon2 hash",
        "--mirror-url URL upstream simple index",
        "--secretfile FILE file with the secret",
        "--configfile FILE YAML config file",
        "--debug show the traceback",
    ]:
        assert words in text


def test_init_refuses_a_locked_directory(tmp_path, capsys):
    lock = lock_serverdir(str(tmp_path))
    try:
        assert cli_main(["init", "--serverdir", str(tmp_path), "--no-root-pypi"]) == 1
    finally:
        lock.release()
    assert capsys.readouterr().err == (
        f"devpi-tx init: error: server directory {tmp_path} is in use by another devpi-tx process "
        f"(pid {os.getpid()}); stop it first, or give another --serverdir\n"
    )
    assert os.listdir(tmp_path) == [LOCK_NAME]


def test_init_debug_shows_the_traceback(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        cli_main(["init", "--serverdir", str(tmp_path / "file" / "s"), "--debug"])

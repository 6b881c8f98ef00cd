"""
Start-up failures of C{twistd devpi} and C{devpi-tx init} as a person
sees them, from real processes: one line on standard error naming the
option or path, no traceback, and nothing created (neither the server
directory nor a pid file in the current directory); and one process per
server directory, with twistd started from one directory again and again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devpi_tx.serverdir import LOCK_NAME

from .serverproc import UNREACHABLE_MIRROR, ServerProcess, free_port, server_env, start_server

pytestmark = pytest.mark.e2e

#: twistd as its script runs it, under the interpreter running the tests.
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
DEVPI_TX = [sys.executable, "-m", "devpi_tx.cli.main"]
MISSPELT = ["environment variable DEVPISERVER_PROT names no option", "did you mean DEVPISERVER_PORT?"]


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        cwd=str(cwd),
        env=server_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """
    An empty current directory, C{place/cwd}, beside where the server
    directory (C{place/server}) would go.
    """
    (tmp_path / "cwd").mkdir()
    (tmp_path / "file").write_text("not a directory\n")
    return tmp_path


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def assert_refused(result: subprocess.CompletedProcess, prog: str, *words: str) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stdout + result.stderr, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result
    line = lines[0]
    assert line.startswith(f"{prog}: error: "), line
    for word in words:
        assert word in line, line
    return line


def assert_nothing_created(place: Path, serverdir: str | Path | None = None) -> None:
    assert os.listdir(place / "cwd") == []
    assert not (place / "server").exists()
    if serverdir is not None:
        assert not os.path.exists(serverdir)


def twistd(place: Path, *args: str, env: dict[str, str] | None = None, serverdir: str | None = None):
    serverdir = serverdir or str(place / "server")
    argv = [*TWISTD, "-n", "devpi", "--serverdir", serverdir, "--mirror-url", UNREACHABLE_MIRROR, *args]
    return run(argv, place / "cwd", env)


def init(place: Path, *args: str, env: dict[str, str] | None = None, serverdir: str | None = None):
    serverdir = serverdir or str(place / "server")
    argv = [*DEVPI_TX, "init", "--serverdir", serverdir, "--mirror-url", UNREACHABLE_MIRROR, *args]
    return run(argv, place / "cwd", env)


# -- twistd devpi -----------------------------------------------------------------------


def test_a_port_in_use(place, taken_port):
    line = assert_refused(twistd(place, "--port", str(taken_port)), "twistd devpi")
    assert line == (
        f"twistd devpi: error: option port: 127.0.0.1:{taken_port} is already in use "
        "(another server listens there); stop it, or choose another port"
    )
    assert_nothing_created(place)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--listen", "foo:bar"], ["option listen: 'foo:bar'", "unknown endpoint type 'foo'"]),
        (["--listen", "3152"], ["option listen: '3152'", "give tcp:3152"]),
        (["--listen", "tcp:notaport"], ["option listen: 'tcp:notaport'", "its port is not a number"]),
        (["--host", "999.1.1.1"], ["option host: '999.1.1.1' is not an IP address"]),
        (["--port", "http"], ["option port: expected an integer, got 'http'"]),
        (
            ["--role", "replica", "--primary-url", "http://127.0.0.1:9/"],
            ["option secretfile", "primary's secret"],
        ),
        (["--logger-cfg", "/nonexistent/logging.yml"], ["option logger-cfg: cannot read /nonexistent"]),
    ],
)
def test_bad_options(place, args, words):
    assert_refused(twistd(place, *args), "twistd devpi", *words)
    assert_nothing_created(place)


@pytest.mark.parametrize(
    "env, words",
    [
        (
            {"DEVPISERVER_PROT": "3142"},
            ["DEVPISERVER_PROT names no option", "did you mean DEVPISERVER_PORT?"],
        ),
        ({"DEVPISERVER_PORT": "abc"}, ["environment variable DEVPISERVER_PORT: expected an integer"]),
    ],
)
def test_bad_environment(place, env, words):
    assert_refused(twistd(place, env=env), "twistd devpi", *words)
    assert_nothing_created(place)


@pytest.mark.parametrize(
    "serverdir, words",
    [
        ("{place}/file/server", ["option serverdir: cannot create", "/file is a file, not a directory"]),
        ("/proc/devpi-tx-test/server", ["option serverdir: cannot create /proc/devpi-tx-test/server"]),
    ],
)
def test_a_serverdir_that_cannot_be_made(place, serverdir, words):
    serverdir = serverdir.format(place=place)
    assert_refused(twistd(place, serverdir=serverdir), "twistd devpi", *words)
    assert_nothing_created(place, serverdir)
    assert_refused(init(place, serverdir=serverdir), "devpi-tx init", *words)
    assert_nothing_created(place, serverdir)


def test_a_replica_on_a_standalone_state(place):
    assert init(place, "--no-root-pypi").returncode == 0
    before = sorted(os.listdir(place / "server"))
    result = twistd(place, "--role", "replica", "--primary-url", "http://127.0.0.1:9/")
    assert_refused(result, "twistd devpi", "holds a standalone server's state, not a replica's")
    assert sorted(os.listdir(place / "server")) == before
    assert os.listdir(place / "cwd") == []


def test_debug_shows_the_traceback(place):
    result = twistd(place, "--listen", "foo:bar", "--debug")
    assert result.returncode == 1
    # Refused while twistd parses its options: still the one line.
    assert result.stderr.startswith("twistd devpi: error: option listen"), result
    result = init(place, "--debug", serverdir=str(place / "file" / "server"))
    assert "Traceback" in result.stderr and "is a file, not a directory" in result.stderr


# -- devpi-tx init ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, words",
    [
        (
            {"DEVPISERVER_PROT": "3142"},
            ["DEVPISERVER_PROT names no option", "did you mean DEVPISERVER_PORT?"],
        ),
        (
            {"DEVPISERVER_ROLE": "replica", "DEVPISERVER_PRIMARY_URL": "http://127.0.0.1:9/"},
            ["option secretfile", "primary's secret"],
        ),
    ],
)
def test_init_bad_environment(place, env, words):
    assert_refused(init(place, env=env), "devpi-tx init", *words)
    assert_nothing_created(place)


def test_init_takes_no_server_options(place):
    result = init(place, "--listen", "foo:bar")
    assert result.returncode == 2 and "unrecognized arguments: --listen foo:bar" in result.stderr
    assert_nothing_created(place)


# -- one process per server directory -----------------------------------------------------


def answers(url: str) -> bool:
    request = urllib.request.Request(url + "/+api", headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status == 200


def test_a_second_server_on_the_same_directory_is_refused(place):
    first = start_server(place / "first")
    try:
        serverdir = first.serverdir
        assert (serverdir / LOCK_NAME).read_text() == f"{first.pid}\n"
        line = assert_refused(
            twistd(place, "--port", str(free_port()), serverdir=str(serverdir)), "twistd devpi"
        )
        assert line == (
            f"twistd devpi: error: server directory {serverdir} is in use by another devpi-tx process "
            f"(pid {first.pid}); stop it first, or give another --serverdir"
        )
        assert_refused(init(place, serverdir=str(serverdir)), "devpi-tx init", f"(pid {first.pid})")
        assert not (serverdir / "twistd.pid").exists()
        assert os.listdir(place / "cwd") == []
        assert answers(first.url)
    finally:
        first.stop()


class Twistd(ServerProcess):
    """
    C{twistd -n devpi}, as the README starts it, in C{workdir}.
    """

    @property
    def args(self) -> list[str]:
        return [
            *TWISTD, "-n", "devpi", "--serverdir", str(self.serverdir), "--listen", self.listen,
            "--mirror-url", UNREACHABLE_MIRROR, *self.extra_args,
        ]  # fmt: skip


def test_twistd_twice_from_one_directory(place):
    """
    Start, stop, start again from one directory, and a second server on
    another server directory from the same one: twistd's pid file is each
    server directory's, never the current directory's.
    """
    cwd = place / "cwd"
    first = Twistd(cwd, serverdir=place / "one")
    second = Twistd(cwd, serverdir=place / "two")
    try:
        first.start()
        assert (place / "one" / "twistd.pid").read_text().strip() == str(first.pid)
        second.start()
        assert answers(first.url) and answers(second.url)
        assert not (cwd / "twistd.pid").exists()
        first.stop()
        assert not (place / "one" / "twistd.pid").exists()
        first.start()
        assert answers(first.url)
        # Killed, it leaves its pid file; a pid recorded there that is
        # alive (pid 1, as after a container restarts) does not stop the
        # next start, since nothing else holds the lock.
        first._signal(signal.SIGKILL)
        assert first._proc is not None
        first._proc.wait(10)
        (place / "one" / "twistd.pid").write_text("1\n")
        first.start()
        assert answers(first.url)
        assert (place / "one" / LOCK_NAME).read_text() == f"{first.pid}\n"
    finally:
        first.stop()
        second.stop()
    assert sorted(p.name for p in cwd.iterdir()) == sorted(
        f"server-{proc.port}.log" for proc in (first, second)
    )


def test_twistd_as_a_daemon_keeps_its_files_in_the_server_directory(place):
    port = free_port()
    serverdir = place / "server"
    result = run(
        [*TWISTD, "devpi", "--serverdir", str(serverdir), "--port", str(port), "--access-log", "off",
         "--mirror-url", UNREACHABLE_MIRROR],
        place / "cwd",
    )  # fmt: skip
    assert result.returncode == 0, result
    pid = int((serverdir / "twistd.pid").read_text())
    try:
        assert answers(f"http://127.0.0.1:{port}")
        # The daemon's pid (not its parent's) is the one the lock names.
        assert (serverdir / LOCK_NAME).read_text() == f"{pid}\n"
        assert (serverdir / "twistd.log").exists()
        assert os.listdir(place / "cwd") == []
        refused = twistd(place, "--port", str(free_port()))
        assert_refused(refused, "twistd devpi", f"(pid {pid})")
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    assert not (serverdir / "twistd.pid").exists()

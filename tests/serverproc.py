"""
Run devpi-tx as a subprocess for end-to-end tests.

This is a helper module, not a test module.  It starts
C{python -m twisted devpi ...} (the C{twist} runner, which always stays in
the foreground and does not take twistd's C{-n}) on a free loopback port,
in its own process group, with its output in a log file, waits until
C{GET /+api} answers and stops it again (SIGTERM, then SIGKILL).  It also
runs the real C{devpi} client (L{DevpiClient}), on a pseudo-terminal when a
command prompts.

Typical use from a test module::

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        proc = start_server(tmp_path_factory.mktemp("server"))
        yield proc
        proc.stop()

Every server is started with C{--mirror-url http://127.0.0.1:9/simple/}
(nothing listens on the discard port), so no test ever reaches a public
package index.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

#: The root of the repository (where C{twisted/plugins/} lives), worked out
#: from this file's location.
REPO_ROOT: Path = Path(__file__).resolve().parent.parent

#: The upstream of root/pypi: a loopback port nobody listens on.
UNREACHABLE_MIRROR: str = "http://127.0.0.1:9/simple/"

#: How long to wait for the server to answer C{/+api}, in seconds.
START_TIMEOUT: float = 30.0

#: How long to wait for the server to exit after SIGTERM, in seconds.
STOP_TIMEOUT: float = 10.0


class ServerStartError(RuntimeError):
    """
    The server died or did not answer in time; the message holds its log.
    """


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """
    The environment for the server process: the repository root first on
    C{PYTHONPATH}, so that the twistd plugin in C{twisted/plugins/} is found
    however devpi-tx is installed, and no C{DEVPISERVER_*} variables leaking
    in from the caller.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVPISERVER_")}
    paths = [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


class ServerProcess:
    """
    A devpi-tx server running in a subprocess.

    @ivar url: the base URL, without a trailing slash
        (C{http://127.0.0.1:PORT}).
    @ivar serverdir: the server directory.
    @ivar logfile: where the server's stdout and stderr go.
    """

    def __init__(
        self,
        workdir: Path,
        extra_args: tuple[str, ...] = (),
        scheme: str = "http",
        port: int | None = None,
        serverdir: Path | None = None,
        listen: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """
        @param workdir: a directory for the log (and the default serverdir).
        @param extra_args: more arguments for C{twistd devpi}.
        @param scheme: C{http}, or C{https} when C{listen} is an C{ssl:}
            endpoint.
        @param port: the port; a free one by default.
        @param serverdir: the server directory; C{workdir/serverdir} by
            default.
        @param listen: the C{--listen} endpoint, which must use C{port};
            C{tcp:PORT:interface=127.0.0.1} by default.
        @param ssl_context: how to check the server's certificate while
            waiting for it (https only); by default one that trusts
            nothing but does not check either, as only liveness matters.
        @param env: extra environment variables for the server.
        """
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.serverdir = Path(serverdir) if serverdir is not None else self.workdir / "serverdir"
        self.scheme = scheme
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.listen = listen or f"tcp:{self.port}:interface=127.0.0.1"
        self.extra_args = tuple(extra_args)
        self.logfile = self.workdir / f"server-{self.port}.log"
        self._ssl_context = ssl_context
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def args(self) -> list[str]:
        """
        The full command line of the server.
        """
        return [
            sys.executable,
            "-m",
            "twisted",
            "--log-format=text",
            "devpi",
            "--serverdir",
            str(self.serverdir),
            "--listen",
            self.listen,
            "--mirror-url",
            UNREACHABLE_MIRROR,
            *self.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        """
        Everything the server printed so far.
        """
        try:
            return self.logfile.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> ServerProcess:
        """
        Start the server (again, once stopped: same port and directory)
        and wait until C{GET /+api} answers.

        @raise ServerStartError: if it exits or does not answer within
            C{timeout} seconds (it is killed in the latter case).
        """
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("server already running")
        with open(self.logfile, "ab") as log:
            self._proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                env=server_env(self._env),
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        context = self._ssl_context
        if context is None and self.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise ServerStartError(
                    f"server exited with code {code} before answering; "
                    f"command {self.args}\n--- server log ---\n{self.log_text()}"
                )
            try:
                request = urllib.request.Request(self.url + "/+api", headers={"Accept": "application/json"})
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError) as e:
                last_error = e
            time.sleep(0.1)
        raise ServerStartError(
            f"server did not answer {self.url}/+api within {timeout} s "
            f"(last error: {last_error!r}); command {self.args}\n"
            f"--- server log ---\n{self.log_text()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """
        Stop the server: SIGTERM to its process group, then SIGKILL if it
        has not exited within C{timeout} seconds.  Safe to call twice.

        @return: the exit code, or L{None} if it was never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout)
        return proc.returncode

    def _signal(self, signum: int) -> None:
        assert self._proc is not None
        try:
            # start_new_session made the server the leader of its own
            # process group, whose id is its pid.
            os.killpg(self._proc.pid, signum)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(
    tmp_path: Path,
    *extra_args: str,
    scheme: str = "http",
    listen: str | None = None,
    port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
) -> ServerProcess:
    """
    Start a devpi-tx server in C{tmp_path} (its serverdir is
    C{tmp_path/serverdir}, initialised on first start) and return it once it
    answers.  The caller must call C{.stop()}.

    For TLS pass C{scheme="https"} and a C{listen} endpoint such as
    C{ssl:PORT:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem}
    with the C{port} it uses (see L{free_port}).
    """
    if listen is not None and port is None:
        raise ValueError("give the port that the listen endpoint uses")
    return ServerProcess(
        tmp_path,
        extra_args,
        scheme=scheme,
        port=port,
        listen=listen,
        ssl_context=ssl_context,
        env=env,
    ).start(timeout)


@pytest.fixture
def devpi_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """
    A fixture giving a function that starts servers (same arguments as
    L{start_server} without C{tmp_path}); all of them are stopped at
    teardown.  Use it from a test module with::

        from tests.serverproc import devpi_server_factory  # noqa: F401
    """
    started: list[ServerProcess] = []

    def factory(*extra_args: str, **kwargs: Any) -> ServerProcess:
        proc = start_server(tmp_path_factory.mktemp("devpi-server"), *extra_args, **kwargs)
        started.append(proc)
        return proc

    yield factory
    for proc in reversed(started):
        proc.stop()


# -- the real devpi client --------------------------------------------------

#: Variables that would change what devpi-client (or requests under it)
#: does, dropped from its environment so that runs are reproducible.
_CLIENT_ENV_DROP: tuple[str, ...] = (
    "VIRTUAL_ENV",
    "WORKON_HOME",
    "PIP_CONFIG_FILE",
    "PIP_INDEX_URL",
    "UV_CONFIG_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


def devpi_executable() -> Path:
    """
    The C{devpi} script of devpi-client installed next to the running
    interpreter.
    """
    return Path(sys.executable).parent / "devpi"


def client_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """
    An environment for devpi-client: C{HOME} in a scratch directory (so that
    no real pip/uv configuration is read), no C{DEVPI_*} variables, and no
    proxies for loopback traffic.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DEVPI_")
        and k not in _CLIENT_ENV_DROP
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONIOENCODING"] = "utf-8"
    if extra:
        env.update(extra)
    return env


class ClientResult:
    """
    The outcome of one devpi-client command.
    """

    def __init__(self, args: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def output(self) -> str:
        """
        stdout and stderr together (devpi-client prints errors on either).
        """
        return self.stdout + self.stderr

    def json(self) -> Any:
        """
        stdout parsed as JSON (for C{devpi getjson}).
        """
        import json

        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return (
            f"<devpi {' '.join(self.args)}: exit {self.returncode}>\n"
            f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        )


class DevpiClient:
    """
    Runs the real C{devpi} command with its own C{--clientdir}, as a user
    would, one subprocess per command.
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.clientdir = self.workdir / "clientdir"
        self.home = self.workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.executable = devpi_executable()
        if not self.executable.exists():
            raise FileNotFoundError(
                f"devpi-client is not installed: no {self.executable} (pip install 'devpi-client>=7.3,<8')"
            )
        self.env = client_env(self.home, env)
        self.timeout = timeout

    def command(self, *args: str) -> list[str]:
        return [str(self.executable), "--clientdir", str(self.clientdir), *args]

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> ClientResult:
        """
        Run C{devpi ARGS...} with no standard input, in C{cwd} (the
        client's work directory by default).
        """
        completed = subprocess.run(
            self.command(*args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=str(cwd or self.workdir),
            env={**self.env, **(env or {})},
            timeout=self.timeout,
            check=False,
        )
        return ClientResult(
            list(args),
            completed.returncode,
            completed.stdout.decode("utf-8", "replace"),
            completed.stderr.decode("utf-8", "replace"),
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> ClientResult:
        """
        Run a command that must succeed.
        """
        result = self.run(*args, env=env)
        assert result.returncode == 0, result
        return result

    def fails(self, *args: str, env: dict[str, str] | None = None) -> ClientResult:
        """
        Run a command that must fail (exit with a non-zero code).
        """
        result = self.run(*args, env=env)
        assert result.returncode != 0, result
        return result

    def run_interactive(
        self, *args: str, dialogue: list[tuple[str, str]], timeout: float | None = None
    ) -> ClientResult:
        """
        Run C{devpi ARGS...} on a pseudo-terminal that is its controlling
        terminal, so that C{getpass} (which reads C{/dev/tty}) can be
        answered: for each C{(prompt, reply)} of C{dialogue} in turn, wait
        until C{prompt} has been printed, then type C{reply} and Enter.

        @return: the result, with everything printed on the terminal as
            C{stdout} (C{stderr} is empty).
        """
        import fcntl
        import select
        import termios

        timeout = self.timeout if timeout is None else timeout
        master, slave = os.openpty()

        def take_terminal() -> None:
            # Runs in the child after setsid(): make the pty (now on fd 0)
            # the controlling terminal, so that /dev/tty is the pty.
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            proc = subprocess.Popen(
                self.command(*args),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=str(self.workdir),
                env=self.env,
                start_new_session=True,
                preexec_fn=take_terminal,
            )
        finally:
            os.close(slave)
        output = b""
        answered_up_to = 0
        pending = list(dialogue)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise AssertionError(
                        f"devpi {' '.join(args)} did not finish in {timeout} s; "
                        f"waiting for {pending[:1]}; terminal output:\n" + output.decode("utf-8", "replace")
                    )
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        data = os.read(master, 4096)
                    except OSError:  # EIO: the child closed the terminal
                        data = b""
                    if not data:
                        break
                    output += data
                    # Answer each prompt once, looking for the next one
                    # only in what was printed after the previous one.
                    while pending:
                        found = output.find(pending[0][0].encode(), answered_up_to)
                        if found < 0:
                            break
                        prompt, reply = pending.pop(0)
                        answered_up_to = found + len(prompt.encode())
                        os.write(master, reply.encode() + b"\n")
                elif proc.poll() is not None:
                    break
        finally:
            os.close(master)
        returncode = proc.wait(timeout)
        text = output.decode("utf-8", "replace").replace("\r\n", "\n")
        return ClientResult(list(args), returncode, text, "")


@contextmanager
def upstream_process(workdir: Path, *projects: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """
    Run the fake upstream index (C{tests.upstream_server}) serving
    C{projects} in a process of its own; yield it and its simple URL, and
    stop it afterwards.
    """
    portfile = workdir / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream_server", str(portfile), *projects],
        cwd=REPO_ROOT,
        env=server_env(),
        stdout=open(workdir / "log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not portfile.exists() or not portfile.read_text():
            assert proc.poll() is None, (workdir / "log").read_text()
            assert time.monotonic() < deadline, "fake upstream did not start"
            time.sleep(0.1)
        yield proc, f"http://127.0.0.1:{portfile.read_text()}/simple/"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)

"""
pip and uv through the mirror, end to end: a fake upstream on a loopback
port (its own process), twistd devpi mirroring it, installs cold and warm,
through a private index that inherits from root/pypi, and after upstream
has gone away.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.serverproc import start_server, upstream_process
from tests.test_e2e_private_index import BIN, Tools

pytestmark = pytest.mark.e2e

PROJECTS = ["mirror-a", "mirror-b", "mirror-c"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    with upstream_process(tmp_path_factory.mktemp("upstream"), *PROJECTS) as started:
        yield started


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    _, url = upstream
    proc = start_server(tmp_path_factory.mktemp("server"), "--mirror-url", url)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Tools:
    return Tools(tmp_path_factory.mktemp("tools"))


def pip_install(tools: Tools, python: Path, index: str, *projects: str):
    return tools.run(
        python, "-m", "pip", "install", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--index-url", index, *projects,
    )  # fmt: skip


def imports(tools: Tools, python: Path, *projects: str) -> None:
    modules = ", ".join(p.replace("-", "_") for p in projects)
    tools.ok(python, "-c", f"import {modules}")


def test_pip_cold_then_warm(server, tools):
    index = f"{server.url}/root/pypi/+simple/"
    cold = tools.venv("cold")
    result = pip_install(tools, cold, index, "mirror-a", "mirror-b")
    assert result.returncode == 0, result
    imports(tools, cold, "mirror-a", "mirror-b")
    warm = tools.venv("warm")
    assert pip_install(tools, warm, index, "mirror-a", "mirror-b").returncode == 0
    imports(tools, warm, "mirror-a", "mirror-b")


def test_uv_through_the_mirror(server, tools):
    python = tools.venv("uv", with_pip=False)
    tools.ok(
        BIN / "uv", "pip", "install", "--python", python, "--no-deps",
        "--index-url", f"{server.url}/root/pypi/+simple/", "mirror-a",
    )  # fmt: skip
    imports(tools, python, "mirror-a")


def test_private_index_inherits_from_the_mirror(server, tools):
    devpi = [BIN / "devpi", "--clientdir", tools.workdir / "client"]
    tools.ok(*devpi, "use", server.url)
    tools.ok(*devpi, "login", "root", "--password", "")
    tools.ok(*devpi, "index", "-c", "root/dev", "bases=root/pypi")
    python = tools.venv("private")
    assert pip_install(tools, python, f"{server.url}/root/dev/+simple/", "mirror-c").returncode == 0
    imports(tools, python, "mirror-c")


def test_cached_installs_work_without_upstream(server, tools, upstream):
    proc, _ = upstream
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    python = tools.venv("offline")
    index = f"{server.url}/root/pypi/+simple/"
    assert pip_install(tools, python, index, "mirror-a", "mirror-b").returncode == 0
    imports(tools, python, "mirror-a", "mirror-b")
    assert "Traceback" not in server.log_text()

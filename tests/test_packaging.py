"""
The project as a person installs it: a non-editable install into a fresh
virtualenv provides the C{devpi} twistd plugin, and C{twistd -n devpi}
serves; the README's commands are the ones CI runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .serverproc import REPO_ROOT, UNREACHABLE_MIRROR, free_port


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.rst").read_text()
    return re.findall(r"^    (python3 .+)$", text, re.M)


def test_readme_starts_with_the_two_commands():
    head = (REPO_ROOT / "README.rst").read_text().splitlines()[:12]
    commands = readme_commands()
    assert commands[0] == "python3 -m pip install . && twistd -n devpi"
    assert commands[0] in "\n".join(head)
    assert commands[1] in "\n".join(head)


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci_lines


def test_plugin_directory_is_a_namespace():
    assert (REPO_ROOT / "twisted" / "plugins" / "devpi_tx_plugin.py").exists()
    assert not (REPO_ROOT / "twisted" / "__init__.py").exists()
    assert not (REPO_ROOT / "twisted" / "plugins" / "__init__.py").exists()


def _copy_sources(target: Path) -> None:
    """
    Copy the project without build leftovers, so the install is of exactly
    what is tracked.
    """
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("packaging")
    source = base / "src"
    _copy_sources(source)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        check=True,
        cwd=base,
        timeout=600,
    )
    return venv


@pytest.mark.e2e
def test_twistd_lists_the_devpi_plugin(fresh_venv, tmp_path):
    result = subprocess.run(
        [str(fresh_venv / "bin" / "twistd"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+devpi\s+devpi-tx", result.stdout, re.M), result.stdout


@pytest.mark.e2e
def test_twistd_devpi_serves_from_a_fresh_serverdir(fresh_venv, tmp_path):
    port = free_port()
    serverdir = tmp_path / "server"
    log = open(tmp_path / "server.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVPISERVER_", "PYTHONPATH"))}
    proc = subprocess.Popen(
        [
            str(fresh_venv / "bin" / "twistd"), "-n", "devpi",
            "--serverdir", str(serverdir), "--port", str(port),
            "--mirror-url", UNREACHABLE_MIRROR,
        ],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/+api", headers={"Accept": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    body = json.load(response)
                    serial = response.headers["X-Devpi-Serial"]
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.2)
        assert body["type"] == "apiconfig"
        assert serial == "0"
        assert (serverdir / ".nodeinfo").exists()
        text = (tmp_path / "server.log").read_text()
        assert "created user root" in text
        assert "created index root/pypi" in text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()

"""
The example plugin of docs/plugins.md (docs/example-plugin): an index
type, an authenticator and an event listener in one distribution.

In memory: its entry points found from a dist-info on C{sys.path}, each
kind working against the in-memory server.  End to end: the package built
and installed with pip (no index, no dependencies) into a fresh
virtualenv, and a server run from that virtualenv finds and uses all
three.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import site
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from twisted.internet import task

from devpi_tx.plugins import find_authenticators, find_event_listeners
from devpi_tx.service import build_context

from .conftest import Client, basic, synchronous, synchronous_passwords
from .distfiles import make_wheel, upload_form
from .serverproc import REPO_ROOT, DevpiClient, ServerProcess

EXAMPLE = REPO_ROOT / "docs" / "example-plugin"


def entry_points_txt() -> str:
    """
    The entry points of the example's pyproject.toml, as a dist-info has
    them (its simple TOML read by hand: tomllib is Python 3.11's).
    """
    lines = []
    for line in (EXAMPLE / "pyproject.toml").read_text().splitlines():
        if section := re.fullmatch(r'\[project\.entry-points\."([^"]+)"\]', line):
            lines.append(f"[{section.group(1)}]")
        elif lines and line.startswith("["):
            break
        elif lines and (point := re.fullmatch(r'(\S+) = "([^"]+)"', line)):
            lines.append(f"{point.group(1)} = {point.group(2)}")
    assert len(lines) == 6, lines
    return "\n".join(lines) + "\n"


@pytest.fixture
def example(tmp_path, monkeypatch):
    """
    The example importable, with its dist-info, and its users' file and
    events' log given by the environment.
    """
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(EXAMPLE / "devpi_tx_example.py", site_dir)
    info = site_dir / "devpi_tx_example-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: devpi-tx-example\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points_txt())
    monkeypatch.syspath_prepend(str(site_dir))
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"erin": {"password": "erinpw", "groups": ["devs"]}}))
    monkeypatch.setenv("DEVPI_TX_EXAMPLE_USERS", str(users))
    monkeypatch.setenv("DEVPI_TX_EXAMPLE_EVENTS", str(tmp_path / "events.jsonl"))
    return tmp_path


def upload_request(version: str) -> tuple[str, bytes]:
    filename, data = make_wheel("pkg-a", version)
    return upload_form("pkg-a", version, filename, data)


def test_the_example_is_found_and_works_in_memory(example, config, monkeypatch):
    assert [p.entry_point for p in find_authenticators()] == ["jsonfile"]
    assert [p.entry_point for p in find_event_listeners()] == ["eventlog"]
    import devpi_tx_example

    # Its threads run at once here.
    monkeypatch.setattr(devpi_tx_example, "deferToThread", synchronous)
    context = build_context(config, passwords=synchronous_passwords(), run_in_thread=synchronous)
    # Its events on a clock.
    clock = task.Clock()
    context.events.reactor = clock
    try:
        client = Client(context)
        root = client.login("root", "rootpw")
        answer = client.request("PUT", "/root/dev", {"acl_upload": [":group:devs"]}, headers=root)
        assert answer.code == 200, answer.body
        answer = client.request(
            "PUT",
            "/root/hidden",
            {"type": "hiding", "bases": ["root/dev"], "hide_versions": ["1.0"]},
            headers=root,
        )
        assert answer.code == 200, answer.body
        for version in ("1.0", "1.1"):
            content_type, body = upload_request(version)
            answer = client.request(
                "POST",
                "/root/dev/",
                raw=body,
                headers={"Content-Type": content_type, **basic("erin", "erinpw")},
                accept=None,
            )
            assert answer.code == 200, answer.body
        page = client.get("/root/hidden/+simple/pkg-a/", accept="text/html").body.decode()
        assert "pkg_a-1.1-" in page and "pkg_a-1.0-" not in page
        assert not (example / "events.jsonl").exists()
        clock.advance(0)
        lines = [json.loads(line) for line in (example / "events.jsonl").read_text().splitlines()]
        assert [(e["kind"], e["stage"], e["user"]) for e in lines] == [
            ("index", "root/dev", "root"),
            ("index", "root/hidden", "root"),
            ("upload", "root/dev", "erin"),
            ("upload", "root/dev", "erin"),
        ]
    finally:
        context.close()


# -- end to end: pip into a fresh virtualenv, a server from it ----------------


def _paths() -> str:
    """
    What the fresh virtualenv sees besides itself: this checkout first,
    then the packages of the running environment (Twisted, setuptools,
    pip...).
    """
    return os.pathsep.join([str(REPO_ROOT), *site.getsitepackages()])


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("example-plugin")
    source = base / "src"
    shutil.copytree(EXAMPLE, source)
    venv = base / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    env = {**os.environ, "PYTHONPATH": _paths()}
    subprocess.run(
        [
            str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
            "--no-index", "--no-deps", "--no-build-isolation", str(source),
        ],
        check=True, cwd=base, env=env, timeout=300,
    )  # fmt: skip
    return venv


class VenvServer(ServerProcess):
    def __init__(self, venv: Path, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.venv = venv

    @property
    def args(self) -> list[str]:
        return [str(self.venv / "bin" / "python"), *super().args[1:]]


def _post_upload(url: str, version: str, user: str, password: str) -> int:
    content_type, body = upload_request(version)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": content_type, "Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.e2e
def test_the_example_installed_with_pip_works_against_a_server(plugin_venv, tmp_path):
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = subprocess.run(
        [str(plugin_venv / "bin" / "python"), "-c", where], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert (Path(site_packages) / "devpi_tx_example.py").exists()
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"erin": {"password": "erinpw", "groups": ["devs"]}}))
    events = tmp_path / "events.jsonl"
    server = VenvServer(
        plugin_venv,
        tmp_path / "server",
        env={
            "PYTHONPATH": _paths(),
            "DEVPI_TX_EXAMPLE_USERS": str(users),
            "DEVPI_TX_EXAMPLE_EVENTS": str(events),
        },
    )
    server.start()
    try:
        log = server.log_text()
        assert "index type 'hiding' from devpi-tx-example 1.0" in log, log
        assert "authenticator plugin jsonfile from devpi-tx-example 1.0" in log, log
        assert "event listener plugin eventlog from devpi-tx-example 1.0" in log, log
        devpi = DevpiClient(tmp_path / "client")
        devpi.ok("use", server.url)
        devpi.ok("login", "root", "--password", "")
        devpi.ok("index", "-c", "root/dev", "acl_upload=:group:devs")
        devpi.ok("index", "-c", "root/hidden", "type=hiding", "bases=root/dev", "hide_versions=1.0")
        # erin is a user of the plugin only: devpi login works, and Basic auth.
        devpi.ok("login", "erin", "--password", "erinpw")
        assert devpi.fails("login", "erin", "--password", "wrong").returncode
        for version in ("1.0", "1.1"):
            assert _post_upload(server.url + "/root/dev/", version, "erin", "erinpw") == 200
        assert _post_upload(server.url + "/root/dev/", "1.2", "erin", "wrong") == 401
        with urllib.request.urlopen(server.url + "/root/hidden/+simple/pkg-a/", timeout=30) as response:
            page = response.read().decode()
        assert "pkg_a-1.1-" in page and "pkg_a-1.0-" not in page
        with urllib.request.urlopen(server.url + "/root/dev/+simple/pkg-a/", timeout=30) as response:
            assert "pkg_a-1.0-" in response.read().decode()
    finally:
        server.stop()
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["kind"], e.get("action") or e.get("version")) for e in lines] == [
        ("index", "created"),
        ("index", "created"),
        ("upload", "1.0"),
        ("upload", "1.1"),
    ]
    assert {e["user"] for e in lines if e["kind"] == "upload"} == {"erin"}

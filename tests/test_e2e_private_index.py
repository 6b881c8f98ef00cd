"""
End to end: the private-index features of a devpi-tx server running as a
subprocess, driven by the tools people really use: twine and C{uv publish}
to upload, devpi-client to upload from a directory, list, remove and push,
pip and C{uv pip} to install and download.

One server serves the whole module; the tests run in file order and each
builds on the state the previous ones left, so run the module as a whole.

Nothing here talks to a public package index: the server's root/pypi
mirror points at a dead loopback port, every installer gets an explicit
C{--index-url} on 127.0.0.1, reads no configuration file (C{PIP_CONFIG_FILE}
is C{/dev/null}, C{UV_NO_CONFIG} is set, C{HOME} is a scratch directory) and
may not build anything (C{--only-binary :all:} / C{--no-build}); the test
projects have no dependencies.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.distfiles import make_doczip, make_sdist, make_wheel, multipart, upload_form
from tests.serverproc import DevpiClient, ServerProcess, client_env, start_server

pytestmark = pytest.mark.e2e

ALICE_PW = "alicepw"
#: The executables installed next to the running interpreter.
BIN = Path(sys.executable).parent
#: How long one tool run may take, in seconds.
TOOL_TIMEOUT = 120.0
#: What a pip-like client sends, so that the server answers with the
#: installer form of the simple pages.
PIP_AGENT = "pip/24.0 (e2e test)"


# -- distributions ---------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """
    A distribution file written to disk.
    """

    path: Path
    data: bytes

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def write(directory: Path, made: tuple[str, bytes]) -> Dist:
    directory.mkdir(parents=True, exist_ok=True)
    filename, data = made
    path = directory / filename
    path.write_bytes(data)
    return Dist(path, data)


@dataclass(frozen=True)
class Dists:
    hello10_whl: Dist
    hello10_sdist: Dist
    hello11_whl: Dist
    hello11_sdist: Dist
    other01_whl: Dist
    other01_sdist: Dist
    #: Documentation for hello-tx 1.0, named as devpi-client expects.
    hello10_doczip: Dist
    #: Same name as hello10_whl, different content.
    hello10_whl_changed: Dist
    #: other-tx's wheel renamed to a hello_tx file name.
    renamed_project: Dist
    #: hello-tx 1.1's wheel renamed to version 1.5.
    renamed_version: Dist
    #: A wheel of several MB.
    big_whl: Dist


# -- running tools ---------------------------------------------------------------


def tool_env(home: Path) -> dict[str, str]:
    """
    An environment for twine, uv and pip: a scratch C{HOME}, no C{PIP_*},
    C{UV_*} or C{TWINE_*} settings from the caller (this machine sets
    C{PIP_FIND_LINKS}, for one), no configuration files, no prompts, no
    keyring, no colours.
    """
    env = {k: v for k, v in client_env(home).items() if not k.startswith(("PIP_", "UV_", "TWINE_"))}
    env.update(
        {
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            "PIP_NO_CACHE_DIR": "1",
            "UV_NO_CONFIG": "1",
            "UV_CACHE_DIR": str(home / "uv-cache"),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
            "TWINE_NON_INTERACTIVE": "1",
            "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
    )
    return env


@dataclass
class Run:
    args: list[str]
    returncode: int
    output: str

    @property
    def flat(self) -> str:
        """
        The output with all whitespace runs as one space (twine wraps its
        messages).
        """
        return " ".join(self.output.split())

    def __repr__(self) -> str:
        return f"<{' '.join(self.args)}: exit {self.returncode}>\n{self.output}"


class Tools:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = tool_env(self.home)

    def run(self, *args: str | Path) -> Run:
        argv = [str(a) for a in args]
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(self.workdir),
            env=self.env,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
        return Run(argv, completed.returncode, completed.stdout.decode("utf-8", "replace"))

    def ok(self, *args: str | Path) -> Run:
        result = self.run(*args)
        assert result.returncode == 0, result
        return result

    def fails(self, *args: str | Path) -> Run:
        result = self.run(*args)
        assert result.returncode != 0, result
        return result

    def twine(self, url: str, *files: Dist, password: str = ALICE_PW, verbose: bool = False) -> Run:
        return self.run(
            BIN / "twine",
            "--no-color",
            "upload",
            "--non-interactive",
            "--disable-progress-bar",
            *(["--verbose"] if verbose else []),
            "--repository-url",
            url,
            "-u",
            "alice",
            "-p",
            password,
            *(f.path for f in files),
        )

    def venv(self, name: str, with_pip: bool = True) -> Path:
        """
        A fresh virtualenv; returns its python.
        """
        target = self.workdir / name
        self.ok(sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), target)
        return target / "bin" / "python"

    def import_version(self, python: Path) -> str:
        out = self.ok(python, "-c", "import hello_tx; print(hello_tx.VERSION)").output
        return out.strip()


# -- HTTP ------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=30) as response:
            return Reply(response.status, response.reason, dict(response.headers), response.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, e.reason, dict(e.headers), e.read())


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def get_json(url: str) -> Reply:
    return http("GET", url, headers={"Accept": "application/json"})


def project_versions(server: ServerProcess, stage: str, project: str) -> dict:
    reply = get_json(f"{server.url}/{stage}/{project}")
    assert reply.status == 200, (reply.status, reply.text)
    assert reply.json()["type"] == "projectconfig"
    return reply.json()["result"]


def links_of(record: dict, rel: str = "releasefile") -> dict[str, dict]:
    """
    The links of a version record by file name.
    """
    return {link["href"].rsplit("/", 1)[1]: link for link in record["+links"] if link["rel"] == rel}


_ANCHOR = re.compile(r'<a href="([^"]+)"[^>]*>([^<]+)</a>')


def simple_links(server: ServerProcess, stage: str, project: str) -> dict[str, str]:
    """
    The file links of the installer form of a simple project page: file name
    to absolute URL (with the hash fragment).
    """
    page = f"{server.url}/{stage}/+simple/{project}/"
    reply = http("GET", page, headers={"User-Agent": PIP_AGENT})
    if reply.status == 404:
        return {}
    assert reply.status == 200, (reply.status, reply.text)
    return {text: urljoin(page, href) for href, text in _ANCHOR.findall(reply.text)}


def fetch(url: str) -> bytes:
    reply = http("GET", url.split("#", 1)[0])
    assert reply.status == 200, (url, reply.status, reply.reason, reply.text)
    return reply.body


def assert_serves(server: ServerProcess, stage: str, project: str, *dists: Dist) -> None:
    """
    The simple page of C{project} lists exactly C{dists}, each link with
    the right C{#sha256=} fragment and serving the very bytes uploaded.
    """
    links = simple_links(server, stage, project)
    assert sorted(links) == sorted(d.name for d in dists), links
    for dist in dists:
        url = links[dist.name]
        assert url.endswith(f"#sha256={dist.sha256}"), url
        assert urlsplit(url).netloc == urlsplit(server.url).netloc
        assert fetch(url) == dist.data, dist.name


def serial(server: ServerProcess) -> int:
    return int(http("GET", server.url + "/+api").headers["X-Devpi-Serial"])


def stored_blobs(server: ServerProcess) -> set[str]:
    """
    Every file in the server's blob store, temporary ones included.
    """
    root = server.serverdir / "+files"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def dev_state(server: ServerProcess) -> tuple:
    """
    Everything that a refused upload to alice/dev must leave as it was.
    """
    return (
        serial(server),
        get_json(server.url + "/alice/dev").json()["result"],
        project_versions(server, "alice/dev", "hello-tx"),
        stored_blobs(server),
    )


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("private-index"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("private-index-server"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def devpi(workdir: Path, server: ServerProcess) -> DevpiClient:
    return DevpiClient(workdir / "devpi")


@pytest.fixture(scope="module")
def tools(workdir: Path) -> Tools:
    return Tools(workdir / "tools")


@pytest.fixture(scope="module")
def dists(workdir: Path) -> Dists:
    dist = workdir / "dist"
    odd = workdir / "odd"
    other_whl = make_wheel("other-tx", "0.1")
    hello11_whl = make_wheel("hello-tx", "1.1")
    return Dists(
        hello10_whl=write(dist, make_wheel("hello-tx", "1.0")),
        hello10_sdist=write(dist, make_sdist("hello-tx", "1.0")),
        hello11_whl=write(dist, hello11_whl),
        hello11_sdist=write(dist, make_sdist("hello-tx", "1.1")),
        other01_whl=write(dist, other_whl),
        other01_sdist=write(dist, make_sdist("other-tx", "0.1")),
        hello10_doczip=write(dist, ("hello-tx-1.0.doc.zip", make_doczip())),
        hello10_whl_changed=write(odd / "changed", make_wheel("hello-tx", "1.0", payload=b"changed")),
        renamed_project=write(odd / "project", ("hello_tx-0.1-py3-none-any.whl", other_whl[1])),
        renamed_version=write(odd / "version", ("hello_tx-1.5-py3-none-any.whl", hello11_whl[1])),
        big_whl=write(dist, make_wheel("big-tx", "1.0", payload=random.Random(1).randbytes(1_000_000))),
    )


# -- 1. distributions --------------------------------------------------------------


def test_distributions(dists: Dists, tools: Tools) -> None:
    assert dists.hello10_whl.name == "hello_tx-1.0-py3-none-any.whl"
    assert dists.hello11_sdist.name == "hello_tx-1.1.tar.gz"
    assert dists.other01_whl.name == "other_tx-0.1-py3-none-any.whl"
    assert dists.hello10_whl_changed.name == dists.hello10_whl.name
    assert dists.hello10_whl_changed.data != dists.hello10_whl.data

    # The wheel's module is importable (straight from the zip here).
    out = tools.ok(
        sys.executable,
        "-c",
        "import sys; sys.path.insert(0, sys.argv[1]); import hello_tx; print(hello_tx.VERSION)",
        dists.hello11_whl.path,
    ).output
    assert out.strip() == "1.1"

    with tarfile.open(dists.hello10_sdist.path) as tf:
        assert sorted(tf.getnames()) == ["hello_tx-1.0/PKG-INFO", "hello_tx-1.0/hello_tx.py"]
        pkginfo = tf.extractfile("hello_tx-1.0/PKG-INFO").read().decode()
    assert "Name: hello-tx\nVersion: 1.0\n" in pkginfo


# -- 2. users and indexes ------------------------------------------------------------


def test_users_and_indexes(devpi: DevpiClient, server: ServerProcess) -> None:
    devpi.ok("use", server.url)
    devpi.ok("login", "root", "--password", "")
    assert "user created: alice" in devpi.ok("user", "-c", "alice", f"password={ALICE_PW}").output
    assert "logged in 'alice'" in devpi.ok("login", "alice", "--password", ALICE_PW).output

    out = devpi.ok("index", "-c", "dev", "bases=root/pypi").output
    assert "bases=root/pypi" in out
    assert "volatile=True" in out
    assert "acl_upload=alice" in out
    out = devpi.ok("index", "-c", "prod", "volatile=False").output
    assert "volatile=False" in out
    assert devpi.ok("index", "-l").stdout.split() == ["alice/dev", "alice/prod"]

    out = devpi.ok("use", "alice/dev").output
    assert f"current devpi index: {server.url}/alice/dev (logged in as alice)" in out
    api = devpi.ok("getjson", "/alice/dev/+api").json()["result"]
    assert api["pypisubmit"] == f"{server.url}/alice/dev/"
    assert api["simpleindex"] == f"{server.url}/alice/dev/+simple/"
    prod = devpi.ok("getjson", "/alice/prod").json()["result"]
    assert prod["volatile"] is False
    assert prod["bases"] == []
    assert prod["projects"] == []


# -- 3. twine ----------------------------------------------------------------------


def test_twine_upload(tools: Tools, server: ServerProcess, dists: Dists) -> None:
    uploaded = [dists.hello10_whl, dists.hello10_sdist, dists.hello11_whl]
    result = tools.twine(f"{server.url}/alice/dev/", *uploaded)
    assert result.returncode == 0, result
    for dist in uploaded:
        assert f"Uploading {dist.name}" in result.output

    versions = project_versions(server, "alice/dev", "hello-tx")
    assert sorted(versions) == ["1.0", "1.1"]
    assert versions["1.0"]["name"] == "hello-tx"
    assert versions["1.0"]["summary"] == "test package hello-tx"
    files10 = links_of(versions["1.0"])
    assert sorted(files10) == sorted([dists.hello10_whl.name, dists.hello10_sdist.name])
    for dist in (dists.hello10_whl, dists.hello10_sdist):
        link = files10[dist.name]
        assert link["hashes"] == {"sha256": dist.sha256}
        h = dist.sha256
        assert link["href"] == f"{server.url}/alice/dev/+f/{h[:3]}/{h[3:16]}/{dist.name}"
        assert [(e["what"], e["who"], e["dst"]) for e in link["log"]] == [("upload", "alice", "alice/dev")]
        assert fetch(link["href"]) == dist.data
    assert sorted(links_of(versions["1.1"])) == [dists.hello11_whl.name]
    assert_serves(server, "alice/dev", "hello-tx", *uploaded)


def test_twine_non_volatile(tools: Tools, server: ServerProcess, dists: Dists) -> None:
    url = f"{server.url}/alice/prod/"
    result = tools.twine(url, dists.hello10_whl)
    assert result.returncode == 0, result
    before = serial(server)

    # The identical file again: accepted, nothing changes.
    result = tools.twine(url, dists.hello10_whl, verbose=True)
    assert result.returncode == 0, result
    assert "200 Upload of identical file to non volatile index." in result.flat
    assert serial(server) == before

    # Other bytes under the same name: refused.
    result = tools.twine(url, dists.hello10_whl_changed)
    assert result.returncode != 0, result
    assert "409 Conflict" in result.flat
    assert f"{dists.hello10_whl.name} already exists in non-volatile index" in result.flat
    assert serial(server) == before

    versions = project_versions(server, "alice/prod", "hello-tx")
    assert sorted(versions) == ["1.0"]
    assert sorted(links_of(versions["1.0"])) == [dists.hello10_whl.name]
    assert_serves(server, "alice/prod", "hello-tx", dists.hello10_whl)


def test_twine_wrong_password(tools: Tools, server: ServerProcess, dists: Dists) -> None:
    before = dev_state(server)
    result = tools.twine(f"{server.url}/alice/dev/", dists.other01_whl, password="wrong")
    assert result.returncode != 0, result
    assert "401 Unauthorized" in result.flat
    assert "credentials for user 'alice' were rejected" in result.flat
    assert dev_state(server) == before
    assert get_json(f"{server.url}/alice/dev/other-tx").status == 404


def test_twine_to_mirror(tools: Tools, server: ServerProcess, dists: Dists) -> None:
    before = serial(server)
    result = tools.twine(f"{server.url}/root/pypi/", dists.other01_whl)
    assert result.returncode != 0, result
    assert "404 Not Found" in result.flat
    assert "cannot submit to mirror index" in result.flat
    assert serial(server) == before


def test_twine_upload_large(tools: Tools, server: ServerProcess, dists: Dists) -> None:
    # Over a MB: more than the server holds while it checks the password,
    # so the upload may be paused and resumed on the way.
    big = dists.big_whl
    assert len(big.data) > 1_000_000
    result = tools.twine(f"{server.url}/alice/dev/", big)
    assert result.returncode == 0, result
    versions = project_versions(server, "alice/dev", "big-tx")
    assert links_of(versions["1.0"])[big.name]["hashes"] == {"sha256": big.sha256}
    assert_serves(server, "alice/dev", "big-tx", big)


def test_upload_without_credentials(server: ServerProcess) -> None:
    before = dev_state(server)
    content_type, body = upload_form("hello-tx", "1.2", *make_wheel("hello-tx", "1.2"))
    reply = http("POST", f"{server.url}/alice/dev/", body, {"Content-Type": content_type})
    assert reply.status == 401, (reply.status, reply.reason, reply.text)
    assert reply.headers.get("WWW-Authenticate") == 'Basic realm="pypi"'
    assert dev_state(server) == before


# -- 4. uv publish -----------------------------------------------------------------


def test_uv_publish(tools: Tools, server: ServerProcess, dists: Dists) -> None:
    result = tools.ok(
        BIN / "uv",
        "publish",
        "--publish-url",
        f"{server.url}/alice/dev/",
        "--trusted-publishing",
        "never",
        "-u",
        "alice",
        "-p",
        ALICE_PW,
        dists.other01_whl.path,
        dists.other01_sdist.path,
    )
    assert f"Uploading {dists.other01_whl.name}" in result.output
    assert f"Uploading {dists.other01_sdist.name}" in result.output

    versions = project_versions(server, "alice/dev", "other-tx")
    assert sorted(versions) == ["0.1"]
    links = links_of(versions["0.1"])
    assert {name: link["hashes"]["sha256"] for name, link in links.items()} == {
        dists.other01_whl.name: dists.other01_whl.sha256,
        dists.other01_sdist.name: dists.other01_sdist.sha256,
    }
    assert_serves(server, "alice/dev", "other-tx", dists.other01_whl, dists.other01_sdist)

    # uv shows the server's reason for a refusal too.
    result = tools.fails(
        BIN / "uv",
        "publish",
        "--publish-url",
        f"{server.url}/alice/prod/",
        "--trusted-publishing",
        "never",
        "-u",
        "alice",
        "-p",
        ALICE_PW,
        dists.hello10_whl_changed.path,
    )
    assert "409 Conflict" in result.flat
    assert f"{dists.hello10_whl.name} already exists in non-volatile index" in result.flat


# -- 5. devpi upload, getjson, list ------------------------------------------------------


def test_devpi_upload_from_dir(
    devpi: DevpiClient, server: ServerProcess, dists: Dists, workdir: Path
) -> None:
    # devpi-client's --with-docs builds Sphinx docs from a checkout; with
    # --from-dir a prebuilt `<name>-<version>.doc.zip` in the directory is
    # uploaded as documentation (:action=doc_upload).
    updir = workdir / "devpi-upload"
    sdist = write(updir, (dists.hello11_sdist.name, dists.hello11_sdist.data))
    doczip = write(updir, (dists.hello10_doczip.name, dists.hello10_doczip.data))
    out = devpi.ok("upload", "--from-dir", str(updir)).output
    assert f"file_upload of {sdist.name} to {server.url}/alice/dev/" in out
    assert f"doc_upload of {doczip.name} to {server.url}/alice/dev/" in out

    record = devpi.ok("getjson", "/alice/dev/hello-tx/1.0").json()
    assert record["type"] == "versiondata"
    docs = links_of(record["result"], "doczip")
    assert sorted(docs) == ["hello-tx-1.0.doc.zip"]
    assert docs["hello-tx-1.0.doc.zip"]["hashes"] == {"sha256": doczip.sha256}
    assert fetch(docs["hello-tx-1.0.doc.zip"]["href"]) == doczip.data
    assert sorted(links_of(record["result"])) == sorted([dists.hello10_whl.name, dists.hello10_sdist.name])

    record11 = devpi.ok("getjson", "/alice/dev/hello-tx/1.1").json()["result"]
    assert links_of(record11)[sdist.name]["hashes"] == {"sha256": sdist.sha256}

    listed = devpi.ok("list", "hello-tx").stdout.split()
    h = {d.name: d.sha256 for d in (dists.hello10_whl, dists.hello10_sdist, dists.hello11_whl, sdist)}
    assert sorted(listed) == sorted(
        f"{server.url}/alice/dev/+f/{sha[:3]}/{sha[3:16]}/{name}" for name, sha in h.items()
    )
    assert devpi.ok("list").stdout.split() == ["big-tx", "hello-tx", "other-tx"]
    # The doczip is not a file for installers.
    assert_serves(
        server,
        "alice/dev",
        "hello-tx",
        dists.hello10_whl,
        dists.hello10_sdist,
        dists.hello11_whl,
        dists.hello11_sdist,
    )


# -- 6. installing ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pip_python(tools: Tools) -> Path:
    return tools.venv("venv-pip")


def test_pip_install_simple(tools: Tools, server: ServerProcess, pip_python: Path) -> None:
    result = tools.ok(
        pip_python,
        "-m",
        "pip",
        "install",
        "--only-binary",
        ":all:",
        "--index-url",
        f"{server.url}/alice/dev/+simple/",
        "hello-tx==1.1",
    )
    assert "Successfully installed hello-tx-1.1" in result.output
    assert tools.import_version(pip_python) == "1.1"


def test_pip_install_index_root(tools: Tools, server: ServerProcess, pip_python: Path) -> None:
    tools.ok(pip_python, "-m", "pip", "uninstall", "-y", "hello-tx")
    tools.fails(pip_python, "-c", "import hello_tx")
    # devpi's installer route: the index URL itself, without +simple.
    result = tools.ok(
        pip_python,
        "-m",
        "pip",
        "install",
        "--only-binary",
        ":all:",
        "--index-url",
        f"{server.url}/alice/dev/",
        "hello-tx",
    )
    assert "Successfully installed hello-tx-1.1" in result.output
    assert tools.import_version(pip_python) == "1.1"


def test_uv_pip_install(tools: Tools, server: ServerProcess) -> None:
    python = tools.venv("venv-uv", with_pip=False)
    result = tools.ok(
        BIN / "uv",
        "pip",
        "install",
        "--python",
        python,
        "--no-build",
        "--index-url",
        f"{server.url}/alice/dev/+simple/",
        "hello-tx",
    )
    assert "+ hello-tx==1.1" in result.output
    assert tools.import_version(python) == "1.1"

    result = tools.ok(
        BIN / "uv",
        "pip",
        "install",
        "--python",
        python,
        "--no-build",
        "--index-url",
        f"{server.url}/alice/dev/+simple/",
        "other-tx==0.1",
        "hello-tx==1.0",
    )
    assert "+ other-tx==0.1" in result.output
    assert "+ hello-tx==1.0" in result.output
    assert tools.import_version(python) == "1.0"


def pip_download(tools: Tools, url: str, requirement: str, target: Path) -> Run:
    return tools.run(
        BIN / "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-d",
        target,
        "--index-url",
        url,
        requirement,
    )


def test_pip_download_identical(tools: Tools, server: ServerProcess, dists: Dists, workdir: Path) -> None:
    target = workdir / "download-1.0"
    result = pip_download(tools, f"{server.url}/alice/dev/+simple/", "hello-tx==1.0", target)
    assert result.returncode == 0, result
    assert [p.name for p in target.iterdir()] == [dists.hello10_whl.name]
    assert (target / dists.hello10_whl.name).read_bytes() == dists.hello10_whl.data


# -- 7. remove and push ------------------------------------------------------------------


def test_remove_version(
    devpi: DevpiClient, tools: Tools, server: ServerProcess, dists: Dists, workdir: Path
) -> None:
    old_urls = [link["href"] for link in project_versions(server, "alice/dev", "hello-tx")["1.0"]["+links"]]
    assert len(old_urls) == 3  # wheel, sdist, doczip

    out = devpi.ok("remove", "-y", "hello-tx==1.0").output
    assert "deleting release 1.0 of hello-tx" in out

    result = devpi.fails("getjson", "/alice/dev/hello-tx/1.0")
    assert "404" in result.output
    assert "The version 1.0 of project hello-tx does not exist." in result.output
    assert sorted(devpi.ok("getjson", "/alice/dev/hello-tx").json()["result"]) == ["1.1"]
    assert_serves(server, "alice/dev", "hello-tx", dists.hello11_whl, dists.hello11_sdist)
    for url in old_urls:
        assert http("GET", url).status == 410, url

    result = pip_download(
        tools, f"{server.url}/alice/dev/+simple/", "hello-tx==1.0", workdir / "download-gone"
    )
    assert result.returncode != 0, result
    assert "No matching distribution found for hello-tx==1.0" in result.output

    # alice/prod's copy of the same wheel (the same blob) is still there.
    assert_serves(server, "alice/prod", "hello-tx", dists.hello10_whl)


def test_push(devpi: DevpiClient, tools: Tools, server: ServerProcess, dists: Dists, workdir: Path) -> None:
    out = devpi.ok("push", "hello-tx==1.1", "alice/prod").output
    lines = [" ".join(line.split()) for line in out.splitlines() if line.strip()]
    whl, sdist = dists.hello11_whl, dists.hello11_sdist
    assert "200 register hello-tx 1.1 -> alice/prod" in lines
    for dist in (whl, sdist):
        h = dist.sha256
        assert f"200 store_releasefile alice/prod/+f/{h[:3]}/{h[3:16]}/{dist.name}" in lines

    versions = project_versions(server, "alice/prod", "hello-tx")
    assert sorted(versions) == ["1.0", "1.1"]
    pushed = links_of(versions["1.1"])
    assert sorted(pushed) == sorted([whl.name, sdist.name])

    assert_serves(server, "alice/prod", "hello-tx", dists.hello10_whl, whl, sdist)
    target = workdir / "download-prod"
    result = pip_download(tools, f"{server.url}/alice/prod/+simple/", "hello-tx==1.1", target)
    assert result.returncode == 0, result
    assert (target / whl.name).read_bytes() == whl.data


def test_push_log(server: ServerProcess, dists: Dists) -> None:
    # As devpi-server does: the pushed file's log is copied and a push entry
    # is added (no second upload entry).
    pushed = links_of(project_versions(server, "alice/prod", "hello-tx")["1.1"])
    for dist in (dists.hello11_whl, dists.hello11_sdist):
        log = pushed[dist.name]["log"]
        assert [(e["what"], e["who"], e.get("src"), e.get("dst")) for e in log] == [
            ("upload", "alice", None, "alice/dev"),
            ("push", "alice", "alice/dev", "alice/prod"),
        ], log


# -- 8. refused uploads ----------------------------------------------------------------------


def raw_upload(server: ServerProcess, content_type: str, body: bytes) -> Reply:
    return http(
        "POST",
        f"{server.url}/alice/dev/",
        body=body,
        headers={"Content-Type": content_type, **basic("alice", ALICE_PW)},
    )


def _wheel12() -> tuple[str, bytes]:
    return make_wheel("hello-tx", "1.2")


def _wrong_digest() -> tuple[str, bytes]:
    filename, data = _wheel12()
    content_type, body = upload_form("hello-tx", "1.2", filename, data)
    good = hashlib.sha256(data).hexdigest().encode()
    assert body.count(good) == 1
    return content_type, body.replace(good, hashlib.sha256(b"something else").hexdigest().encode())


RAW_CASES = {
    "wrong-file-name": (
        lambda: upload_form("hello-tx", "1.2", "hello_tx-1.2.txt", _wheel12()[1]),
        "'hello_tx-1.2.txt' is not a valid archive name",
    ),
    "name-mismatch": (
        lambda: upload_form("hello-tx", "1.2", "other_tx-1.2-py3-none-any.whl", _wheel12()[1]),
        "filename 'other_tx-1.2-py3-none-any.whl' does not match project name 'hello-tx'",
    ),
    "version-mismatch": (
        lambda: upload_form("hello-tx", "9.9", *_wheel12()),
        "filename 'hello_tx-1.2-py3-none-any.whl' does not contain version '9.9'",
    ),
    "digest-mismatch": (_wrong_digest, "sha256 digest mismatch"),
    "no-content": (
        lambda: multipart([(":action", "file_upload"), ("name", "hello-tx"), ("version", "1.2")]),
        "content file field not found",
    ),
    "empty-content": (
        lambda: upload_form("hello-tx", "1.2", _wheel12()[0], b""),
        "the uploaded file is empty",
    ),
    "no-action": (
        lambda: multipart([("name", "hello-tx"), ("version", "1.2")], _wheel12()),
        ":action field not found",
    ),
    "unknown-action": (
        lambda: upload_form("hello-tx", "1.2", *_wheel12(), action="frobnicate"),
        "action 'frobnicate' not supported",
    ),
    "not-multipart": (
        lambda: (
            "application/x-www-form-urlencoded",
            b":action=file_upload&name=hello-tx&version=1.2&content=xyz",
        ),
        "expected a multipart/form-data upload",
    ),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_refused_raw_upload(server: ServerProcess, case: str) -> None:
    make_request, reason = RAW_CASES[case]
    before = dev_state(server)
    reply = raw_upload(server, *make_request())
    assert 400 <= reply.status < 500, (reply.status, reply.reason, reply.text)
    # Upload errors are in the reason phrase, which twine and devpi-client
    # print; a request that is no upload at all gets its message in the body.
    assert reason in html.unescape(reply.text), (reply.status, reply.reason, reply.text)
    if case != "not-multipart":
        assert reason in reply.reason, (reply.status, reply.reason)
    assert dev_state(server) == before


@pytest.mark.parametrize(
    "attr, reason",
    [
        (
            "renamed_project",
            "filename 'hello_tx-0.1-py3-none-any.whl' does not match project name 'other-tx'",
        ),
        (
            "renamed_version",
            "filename 'hello_tx-1.5-py3-none-any.whl' does not contain version '1.1'",
        ),
    ],
)
def test_refused_twine_upload(
    tools: Tools, server: ServerProcess, dists: Dists, attr: str, reason: str
) -> None:
    before = dev_state(server)
    result = tools.twine(f"{server.url}/alice/dev/", getattr(dists, attr))
    assert result.returncode != 0, result
    assert "400 Bad Request" in result.flat
    assert reason in result.flat
    assert dev_state(server) == before


def test_final_state(server: ServerProcess, dists: Dists) -> None:
    assert_serves(server, "alice/dev", "hello-tx", dists.hello11_whl, dists.hello11_sdist)
    assert_serves(server, "alice/dev", "other-tx", dists.other01_whl, dists.other01_sdist)
    assert_serves(server, "alice/prod", "hello-tx", dists.hello10_whl, dists.hello11_whl, dists.hello11_sdist)
    assert not any(blob.startswith("tmp/") for blob in stored_blobs(server))
    assert "Traceback" not in server.log_text()

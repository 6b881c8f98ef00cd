"""
End to end: devpi-client 7.3 commands that devpi-tx once answered
differently from devpi-server (issue 12), each as a devpi user runs it:

- C{devpi list} and C{devpi getjson} of projects on a mirror index whose
  upstream is an old-school PEP 503 server (HTTP/1.0, no content type,
  relative links with md5 or sha256 fragments), directly and through a
  private index that inherits from it, and pip through that index;
- C{devpi upload --formats} of legacy archives (sdist zip, bdist_dumb,
  bdist_egg), built with setuptools;
- C{devpi upload} of documentation zips: empty, C{.docs.zip}, without a
  version;
- C{devpi push} and re-uploads over an existing file of a volatile index
  (the link's overwrite log);
- refused tox results and uploads after C{devpi logoff} (error shapes);
- C{devpi index -c} for a user that does not exist.

One server serves the whole module; the tests run in file order and each
builds on the state the previous ones left, so run the module as a whole.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.distfiles import make_doczip, make_sdist, make_wheel
from tests.legacy_upstream import LegacyFile, LegacyIndex, serve
from tests.serverproc import DevpiClient, ServerProcess, start_server
from tests.test_e2e_private_index import (
    Tools,
    get_json,
    http,
    links_of,
    simple_links,
)

pytestmark = pytest.mark.e2e

ALICE_PW = "alicepw"


@pytest.fixture(scope="module")
def legacy() -> Iterator[tuple[LegacyIndex, str]]:
    index = LegacyIndex()
    server, url = serve(index)
    yield index, url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("compat-server"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("compat"))


@pytest.fixture(scope="module")
def devpi(workdir: Path, server: ServerProcess) -> DevpiClient:
    return DevpiClient(workdir / "devpi")


@pytest.fixture(scope="module")
def tools(workdir: Path) -> Tools:
    return Tools(workdir / "tools")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- 0. users and indexes ---------------------------------------------------------


def test_setup(devpi: DevpiClient, server: ServerProcess, legacy) -> None:
    _, url = legacy
    assert not url.endswith("/")
    devpi.ok("use", server.url)
    devpi.ok("login", "root", "--password", "")
    devpi.ok("user", "-c", "alice", f"password={ALICE_PW}")
    devpi.ok("login", "alice", "--password", ALICE_PW)
    out = devpi.ok(
        "index", "-c", "mirror", "type=mirror", f"mirror_url={url}", "mirror_cache_expiry=0"
    ).output
    assert "type=mirror" in out
    devpi.ok("index", "-c", "dev", "bases=alice/mirror")
    devpi.ok("index", "-c", "prod", "volatile=True")


# -- 1. project and version JSON of a mirror ------------------------------------------


WHEEL10 = make_wheel("old-style", "1.0")
SDIST10 = ("old-style-1.0.zip", b"PK\x05\x06" + b"\0" * 18)
#: A local version: its name needs quoting in a URL.
WHEEL20 = make_wheel("old-style", "2.0+local")


def test_mirror_list_and_getjson(devpi: DevpiClient, server: ServerProcess, legacy) -> None:
    index, _ = legacy
    index.add(
        "old-style",
        LegacyFile(*WHEEL10, hash_name="md5"),
        LegacyFile(*SDIST10, hash_name="sha256"),
        LegacyFile(*WHEEL20, hash_name="sha256"),
        # Listed but broken upstream: an error of that download only.
        LegacyFile("old_style-3.0-py3-none-any.whl", b"never served", missing=True),
    )
    index.add("no-files")
    devpi.ok("use", "alice/mirror")

    listed = devpi.ok("list", "--all", "old-style").stdout.split()
    names = sorted(unquote(url.rsplit("/", 1)[1]) for url in listed)
    assert names == sorted([WHEEL10[0], SDIST10[0], WHEEL20[0], "old_style-3.0-py3-none-any.whl"]), listed
    assert all(url.startswith(f"{server.url}/alice/mirror/") for url in listed), listed

    result = devpi.ok("getjson", "/alice/mirror/old-style").json()
    assert result["type"] == "projectconfig"
    versions = result["result"]
    assert sorted(versions) == ["1.0", "2.0+local", "3.0"]
    record = versions["1.0"]
    assert record["name"] == "old-style" and record["version"] == "1.0"
    links = links_of(record)
    assert sorted(links) == sorted([WHEEL10[0], SDIST10[0]])
    # The md5 upstream gave is shown (and checked when downloading).
    assert links[WHEEL10[0]]["hash_spec"] == "md5=" + hashlib.md5(WHEEL10[1]).hexdigest()
    sdist = links[SDIST10[0]]
    assert sdist["hashes"] == {"sha256": sha256(SDIST10[1])}
    h = sha256(SDIST10[1])
    assert sdist["href"] == f"{server.url}/alice/mirror/+f/{h[:3]}/{h[3:16]}/{SDIST10[0]}"
    # Each link downloads the upstream bytes through this server.
    for name, data in (WHEEL10, SDIST10):
        reply = http("GET", links[name]["href"])
        assert reply.status == 200, (name, reply.status, reply.text)
        assert reply.body == data
    (local,) = versions["2.0+local"]["+links"]
    assert http("GET", local["href"]).body == WHEEL20[1]

    # The broken file fails as a download; the listing above did not.
    (broken,) = versions["3.0"]["+links"]
    reply = http("GET", broken["href"])
    assert reply.status in (404, 502), (reply.status, reply.text)

    one = devpi.ok("getjson", "/alice/mirror/old-style/1.0").json()
    assert one["type"] == "versiondata"
    assert sorted(links_of(one["result"])) == sorted([WHEEL10[0], SDIST10[0]])
    assert "9.9" in devpi.fails("getjson", "/alice/mirror/old-style/9.9").output

    # Listed upstream without files: the project exists, with no versions.
    assert get_json(f"{server.url}/alice/mirror/no-files").json()["result"] == {}
    reply = get_json(f"{server.url}/alice/mirror/never-heard-of")
    assert reply.status == 404, reply.text


def test_mirror_through_private_index(devpi: DevpiClient, server: ServerProcess, tools: Tools) -> None:
    devpi.ok("use", "alice/dev")
    listed = devpi.ok("list", "old-style").output.split()
    assert any(url.endswith(WHEEL10[0]) for url in listed), listed
    versions = get_json(f"{server.url}/alice/dev/old-style").json()["result"]
    assert "1.0" in versions
    assert links_of(versions["1.0"])[WHEEL10[0]]["href"].startswith(f"{server.url}/alice/mirror/+")

    python = tools.venv("venv-compat")
    result = tools.ok(
        python,
        "-m",
        "pip",
        "install",
        "--index-url",
        f"{server.url}/alice/dev/+simple/",
        "--only-binary",
        ":all:",
        "old-style==1.0",
    )
    assert "Successfully installed old-style-1.0" in result.output


def test_mirror_project_deleted_upstream(server: ServerProcess, legacy) -> None:
    index, _ = legacy
    index.remove("no-files")
    # mirror_cache_expiry=0: the next request asks upstream again.
    reply = get_json(f"{server.url}/alice/mirror/no-files")
    assert reply.status == 404, reply.text


# -- 2. legacy archive formats ------------------------------------------------------


SETUP_PY = """
    from setuptools import setup
    setup(name="legacy-tx", version="1.0", py_modules=["legacy_tx"])
"""


@pytest.fixture(scope="module")
def legacy_project(workdir: Path) -> Path:
    project = workdir / "legacy-tx"
    project.mkdir()
    (project / "setup.py").write_text(textwrap.dedent(SETUP_PY))
    (project / "legacy_tx.py").write_text("VERSION = '1.0'\n")
    return project


def FORMAT_OF(filename: str) -> str:
    """
    Which setuptools command made a file of legacy-tx 1.0.
    """
    if filename == "legacy_tx-1.0.zip":
        return "sdist.zip"
    if filename.startswith("legacy_tx-1.0-py") and filename.endswith(".egg"):
        return "bdist_egg"
    # bdist_dumb: a platform between version and extension.
    if re.fullmatch(r"legacy_tx-1\.0\.[a-z][\w.-]*\.(tar\.gz|zip)", filename):
        return "bdist_dumb"
    return filename


@pytest.mark.parametrize("formats", ["sdist.zip,bdist_dumb", "bdist_dumb,bdist_egg"])
def test_upload_legacy_formats(
    devpi: DevpiClient, server: ServerProcess, legacy_project: Path, formats: str
) -> None:
    devpi.ok("use", "alice/dev")
    result = devpi.run("upload", "--no-vcs", "--formats", formats, cwd=legacy_project)
    assert result.returncode == 0, result
    uploaded = [line.split()[2] for line in result.output.splitlines() if line.startswith("file_upload of ")]
    assert sorted(FORMAT_OF(name) for name in uploaded) == sorted(formats.split(",")), result

    record = get_json(f"{server.url}/alice/dev/legacy-tx/1.0").json()["result"]
    stored = links_of(record)
    for name in uploaded:
        assert name in stored, (name, sorted(stored))
    listed = devpi.ok("list", "legacy-tx").stdout.split()
    for name in uploaded:
        assert any(url.endswith("/" + name) for url in listed), listed
    served = simple_links(server, "alice/dev", "legacy-tx")
    for name in uploaded:
        assert name in served, served
        assert http("GET", served[name].split("#")[0]).body == (legacy_project / "dist" / name).read_bytes()


# -- 3. documentation uploads -------------------------------------------------------------


def test_doc_uploads(devpi: DevpiClient, server: ServerProcess, workdir: Path) -> None:
    devpi.ok("use", "alice/dev")
    dist = workdir / "docs-dist"
    for version in ("1.0", "1.1"):
        name, data = make_sdist("docs-tx", version)
        devpi.ok("upload", str(write(dist / name, data)))

    # An empty documentation zip is stored.
    empty = write(workdir / "empty" / "docs-tx-1.0.doc.zip", b"")
    devpi.ok("upload", str(empty))
    docs = links_of(get_json(f"{server.url}/alice/dev/docs-tx/1.0").json()["result"], "doczip")
    assert list(docs) == ["docs-tx-1.0.doc.zip"]
    assert http("GET", docs["docs-tx-1.0.doc.zip"]["href"]).body == b""

    # .docs.zip is a documentation zip too.
    doczip = make_doczip()
    devpi.ok("upload", str(write(workdir / "docs" / "docs-tx-1.0.docs.zip", doczip)))
    docs = links_of(get_json(f"{server.url}/alice/dev/docs-tx/1.0").json()["result"], "doczip")
    assert http("GET", docs["docs-tx-1.0.doc.zip"]["href"]).body == doczip

    # No version in the name: the latest release's.
    devpi.ok("upload", str(write(workdir / "noversion" / "docs-tx.doc.zip", doczip)))
    docs = links_of(get_json(f"{server.url}/alice/dev/docs-tx/1.1").json()["result"], "doczip")
    assert list(docs) == ["docs-tx-1.1.doc.zip"]

    result = devpi.fails("upload", str(write(workdir / "none" / "nothing-tx.doc.zip", doczip)))
    assert "doczip has no version and 'nothing-tx' has no releases to derive one from" in result.output


# -- 4. overwrite logs ---------------------------------------------------------------


def test_push_overwrites_on_volatile_index(devpi: DevpiClient, server: ServerProcess, workdir: Path) -> None:
    devpi.ok("use", "alice/dev")
    name, data = make_sdist("hello-tx", "1.0")
    devpi.ok("upload", str(write(workdir / "hello-dev" / name, data)))
    devpi.ok("use", "alice/prod")
    other = make_sdist("hello-tx", "1.0")[1] + b"\0"
    devpi.ok("upload", str(write(workdir / "hello-prod" / name, other)))
    assert other != data

    devpi.ok("use", "alice/dev")
    devpi.ok("push", "hello-tx==1.0", "alice/prod")
    (link,) = get_json(f"{server.url}/alice/prod/hello-tx/1.0").json()["result"]["+links"]
    log = link["log"]
    assert [e["what"] for e in log] == ["overwrite", "upload", "push"], log
    assert log[0]["who"] is None and log[0]["count"] == 1
    assert len(log[0]["when"]) == 6
    assert link["hashes"] == {"sha256": sha256(data)}

    # Re-uploads onto the volatile index count on.
    devpi.ok("use", "alice/prod")
    devpi.ok("upload", str(write(workdir / "hello-prod2" / name, other)))
    (link,) = get_json(f"{server.url}/alice/prod/hello-tx/1.0").json()["result"]["+links"]
    assert [(e["what"], e.get("count")) for e in link["log"]] == [("overwrite", 2), ("upload", None)]
    devpi.ok("upload", str(write(workdir / "hello-prod3" / name, data)))
    (link,) = get_json(f"{server.url}/alice/prod/hello-tx/1.0").json()["result"]["+links"]
    assert [(e["what"], e.get("count")) for e in link["log"]] == [("overwrite", 3), ("upload", None)]


# -- 5. error shapes ------------------------------------------------------------------


def test_refused_tox_result_is_json(devpi: DevpiClient, server: ServerProcess) -> None:
    devpi.ok("use", "alice/prod")
    devpi.ok("index", "alice/prod", "acl_toxresult_upload=alice")
    (link,) = get_json(f"{server.url}/alice/prod/hello-tx/1.0").json()["result"]["+links"]
    body = json.dumps({"testenvs": {}}).encode()
    reply = http("POST", link["href"], body, {"Content-Type": "application/json"})
    assert reply.status == 403, (reply.status, reply.text)
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    assert "tox" in reply.json()["message"]


def test_upload_after_logoff(devpi: DevpiClient, server: ServerProcess, workdir: Path) -> None:
    devpi.ok("use", "alice/dev")
    devpi.ok("logoff")
    name, data = make_wheel("hello-tx", "1.3")
    result = devpi.fails("upload", str(write(workdir / "logoff" / name, data)))
    assert "401" in result.output
    assert "Unauthorized" in result.output, result
    devpi.ok("login", "alice", "--password", ALICE_PW)


# -- 6. indexes of users that do not exist ---------------------------------------------


def test_index_of_missing_user(devpi: DevpiClient, server: ServerProcess) -> None:
    devpi.ok("login", "root", "--password", "")
    result = devpi.fails("index", "-c", "/not_exists/dev")
    assert "404" in result.output, result
    reply = http("PUT", f"{server.url}/not_exists/dev", b"{}", {"Accept": "application/json"})
    assert reply.status == 404, (reply.status, reply.text)

    # With the token of a user deleted a moment ago.
    devpi.ok("user", "-c", "bob", "password=bobpw")
    login = http("POST", f"{server.url}/+login", json.dumps({"user": "bob", "password": "bobpw"}).encode())
    token = login.json()["result"]["password"]
    devpi.ok("user", "--delete", "bob", "-y")
    auth = base64.b64encode(f"bob:{token}".encode()).decode()
    reply = http(
        "PUT",
        f"{server.url}/bob/dev",
        b"{}",
        {"Accept": "application/json", "X-Devpi-Auth": auth},
    )
    assert reply.status == 404, (reply.status, reply.text)
    assert "bob" in reply.json()["message"]

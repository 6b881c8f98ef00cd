"""
pip and uv through a C{constrained} and a C{minage} index over root/pypi,
end to end: a fake upstream on a loopback port (its own process, giving
PEP 700 upload times), twistd devpi mirroring it, and each installer
resolving to the versions the index type allows, never to those it hides.
One upstream and one server for the module.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest

from tests.serverproc import start_server, upstream_process
from tests.test_e2e_private_index import BIN, Tools

pytestmark = pytest.mark.e2e

OLD = "2020-01-01T00:00:00Z"


def recent() -> str:
    """
    An upload time of an hour ago: younger than any C{min_age} of a day.
    """
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    new = recent()
    projects = [f"types-a:1.0@{OLD},2.0@{OLD},3.0@{new}", f"types-b:1.0@{OLD},1.5,2.0@{new}"]
    with upstream_process(tmp_path_factory.mktemp("upstream"), *projects) as (_, url):
        yield url


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Tools:
    return Tools(tmp_path_factory.mktemp("tools"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream, tools):
    proc = start_server(tmp_path_factory.mktemp("server"), "--mirror-url", upstream)
    devpi = [BIN / "devpi", "--clientdir", tools.workdir / "client"]
    tools.ok(*devpi, "use", proc.url)
    tools.ok(*devpi, "login", "root", "--password", "")
    tools.ok(
        *devpi, "index", "-c", "root/pinned", "type=constrained", "bases=root/pypi", "constraints=types-a<2"
    )
    tools.ok(*devpi, "index", "-c", "root/aged", "type=minage", "bases=root/pypi", "min_age=1d")
    yield proc
    assert "Traceback" not in proc.log_text()
    proc.stop()


def pip_download(tools: Tools, index: str, project: str) -> list[str]:
    """
    The files C{pip download} fetched for C{project} from C{index}.
    """
    dest = Path(tools.workdir) / "pip" / index.rstrip("/").rsplit("/", 2)[-2] / project
    tools.ok(
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--index-url", index, "-d", dest, project,
    )  # fmt: skip
    return sorted(p.name for p in dest.iterdir())


def uv_compile(tools: Tools, index: str, project: str) -> str:
    """
    The version C{uv pip compile} pins C{project} to through C{index}.
    """
    requirements = Path(tools.workdir) / f"{project}.in"
    requirements.write_text(f"{project}\n")
    out = tools.ok(
        BIN / "uv", "pip", "compile", "--python", sys.executable, "--no-header", "--no-annotate",
        "--refresh", "--index-url", index, requirements,
    ).output  # fmt: skip
    pins = [line for line in out.splitlines() if line.startswith(f"{project}==")]
    assert len(pins) == 1, out
    return pins[0].partition("==")[2]


def simple(server, index: str) -> str:
    return f"{server.url}/root/{index}/+simple/"


@pytest.mark.parametrize(
    ("index", "project", "version"),
    [
        ("pypi", "types-a", "3.0"),
        ("pypi", "types-b", "2.0"),
        # constrained: types-a<2; types-b is not named, so whole.
        ("pinned", "types-a", "1.0"),
        ("pinned", "types-b", "2.0"),
        # minage: 3.0 and 2.0 are an hour old, 1.5 has no upload time.
        ("aged", "types-a", "2.0"),
        ("aged", "types-b", "1.0"),
    ],
)
def test_pip_and_uv_see_what_the_type_allows(server, tools, index, project, version):
    wheel = f"{project.replace('-', '_')}-{version}-py3-none-any.whl"
    assert pip_download(tools, simple(server, index), project) == [wheel]
    assert uv_compile(tools, simple(server, index), project) == version


@pytest.mark.parametrize(
    ("index", "requirement"),
    [("pinned", "types-a>=2"), ("aged", "types-a>2"), ("aged", "types-b>1")],
)
def test_hidden_versions_cannot_be_had(server, tools, index, requirement):
    url = simple(server, index)
    pip = tools.fails(
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--index-url", url, "-d", Path(tools.workdir) / "nothing", requirement,
    )  # fmt: skip
    python = tools.venv(f"uv-{index}-{requirement.partition('>')[0]}", with_pip=False)
    uv = tools.fails(
        BIN / "uv", "pip", "install", "--python", python, "--no-deps", "--index-url", url, requirement
    )
    assert "No matching distribution found" in pip.output, pip
    assert "unsatisfiable" in uv.output, uv

"""
The C{constrained} index type: its parser, its filters as a table of
cases, and an index over a private base and root/pypi.
"""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from devpi_tx.customizers import ConstrainedCustomizer
from devpi_tx.customizers.constrained import parse_constraints
from devpi_tx.interfaces import IStageCustomizer
from devpi_tx.model.errors import InvalidInput

from .distfiles import make_sdist
from .fakeupstream import Release
from .test_index_types import JSON_V1, files, make_index, upload

C = ConstrainedCustomizer()


def config(*constraints: str) -> dict:
    return {**C.defaults(), "constraints": parse_constraints(list(constraints))}


def test_provider():
    assert verifyObject(IStageCustomizer, C)
    assert C.readonly and C.filters and not C.is_mirror


@pytest.mark.parametrize(
    "given, parsed",
    [
        ("pkg>=1,<2", ["pkg>=1,<2"]),
        ("pkg>=1,<2\n*\n# a comment\n\n", ["pkg>=1,<2", "*"]),
        (["Pkg==1.0", " * ", "Pkg==1.0"], ["Pkg==1.0", "*"]),
        ([], []),
    ],
)
def test_parse(given, parsed):
    assert parse_constraints(given) == parsed


@pytest.mark.parametrize(
    "given, message",
    [
        ("pkg>>1", "constraints: 'pkg>>1' is not a requirement"),
        ("pkg[extra]>1", "constraints: 'pkg[extra]>1': only a name and versions are allowed"),
        ('pkg>1; python_version<"3"', "only a name and versions are allowed"),
        (3, "constraints: expected a list or lines of text, got 3"),
        ([3], "constraints: expected a string, got 3"),
    ],
)
def test_parse_refuses(given, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_constraints(given)


VERSIONS = ["0.9", "1.0", "1.5", "2.0", "2.1rc1", "nonsense"]


@pytest.mark.parametrize(
    "constraints, project, kept",
    [
        ((), "pkg", VERSIONS),  # no constraints: everything
        (("pkg>=1,<2",), "pkg", ["1.0", "1.5"]),
        (("pkg>=1,<2",), "other", VERSIONS),  # not listed, no *: everything
        (("pkg>=1,<2", "*"), "other", []),  # not listed, with *: nothing
        (("pkg",), "pkg", VERSIONS),  # listed without versions: everything
        (("Pkg_>=2",), "pkg-", ["2.0", "2.1rc1"]),  # names normalised; pre-releases allowed
        (("pkg>=1", "pkg<2"), "pkg", ["1.0", "1.5"]),  # two lines: both apply
        (("pkg==1.5", "*"), "pkg", ["1.5"]),
    ],
)
def test_versions_and_links(constraints, project, kept):
    cfg = config(*constraints)
    flags = C.versions_filter(cfg, project, VERSIONS)
    assert [v for v, keep in zip(VERSIONS, flags or [True] * len(VERSIONS), strict=True) if keep] == kept
    links = [{"basename": f"{project.replace('-', '_')}-{v}.tar.gz"} for v in VERSIONS[:-1]]
    flags = C.links_filter(cfg, project, links)
    shown = [link["basename"] for link, keep in zip(links, flags or [True] * len(links), strict=True) if keep]
    assert shown == [f"{project.replace('-', '_')}-{v}.tar.gz" for v in kept if v != "nonsense"]


@pytest.mark.parametrize(
    "constraints, kept",
    [
        ((), None),
        (("pkg<2",), None),
        (("pkg<2", "*"), ["pkg", "PKG"]),
    ],
)
def test_projects(constraints, kept):
    names = ["pkg", "other", "PKG"]
    flags = C.projects_filter(config(*constraints), names)
    assert (None if flags is None else [n for n, keep in zip(names, flags, strict=True) if keep]) == kept


def test_constrained_index(client, alice, upstream):
    upstream.add("hello", *(Release(*make_sdist("hello", v)) for v in ("1.0", "2.0", "3.0")), serial=5)
    upstream.add("other", Release(*make_sdist("other", "1.0")), serial=6)
    make_index(client, alice, "/alice/dev", bases=[])
    for version in ("1.0", "2.0"):
        assert upload(client, alice, "/alice/dev/", "pkg", version).code == 200
    answer = client.request(
        "PUT",
        "/alice/c",
        {"type": "constrained", "bases": ["alice/dev", "root/pypi"], "constraints": "hello>=2,<3\npkg<2\n*"},
        headers=alice,
    )
    assert answer.code == 200, answer.body
    assert answer.json["result"]["constraints"] == ["hello>=2,<3", "pkg<2", "*"]
    assert files(client.get("/alice/c/+simple/hello/", accept=JSON_V1)) == ["hello-2.0.tar.gz"]
    assert files(client.get("/alice/c/+simple/pkg/", accept=JSON_V1)) == ["pkg-1.0.tar.gz"]
    assert sorted(client.get("/alice/c/hello").json["result"]) == ["2.0"]
    assert files(client.get("/root/pypi/+simple/other/", accept=JSON_V1)) == ["other-1.0.tar.gz"]
    assert client.get("/alice/c/+simple/other/", accept=JSON_V1).code == 404  # hidden by "*"
    names = [p["name"] for p in client.get("/alice/c/+simple/", accept=JSON_V1).json["projects"]]
    assert sorted(names) == ["hello", "pkg"]
    # A view: no uploads.
    assert upload(client, alice, "/alice/c/", "pkg", "3.0").code == 404
    answer = client.request("PATCH", "/alice/c", ["constraints+=pkg>>1"], headers=alice)
    assert answer.code == 400
    assert "'pkg>>1' is not a requirement" in answer.message
    answer = client.request("PATCH", "/alice/c", ["constraints-=*"], headers=alice)
    assert answer.code == 200, answer.body
    assert files(client.get("/alice/c/+simple/pkg/", accept=JSON_V1)) == ["pkg-1.0.tar.gz"]
    assert files(client.get("/alice/c/+simple/other/", accept=JSON_V1)) == ["other-1.0.tar.gz"]

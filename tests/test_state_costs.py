"""
Costs that must not grow with the state (issue 15), counted in
operations rather than timed: what an upload drops from the caches, what
one version's JSON reads, how rendering scales with versions.
"""

from __future__ import annotations

import json

import pytest

from devpi_tx.model.stages import Contribution
from devpi_tx.web import simple

from .distfiles import make_wheel
from .test_releases import PIP_ACCEPT, upload


@pytest.fixture
def dev(client, alice):
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    return alice


def counting_reads(monkeypatch, storage, prefix: str) -> list[str]:
    """
    The keys under C{prefix} that the state is asked for from now on.
    """
    read: list[str] = []
    get = storage.get

    def counted(key):
        if key.startswith(prefix):
            read.append(key)
        return get(key)

    monkeypatch.setattr(storage, "get", counted)
    return read


def counting_names(monkeypatch, client) -> list[str]:
    """
    The stages whose project names are listed from the state from now on.
    """
    from devpi_tx.model import releases

    listed: list[str] = []
    names = releases.project_names

    def counted(reader, stage):
        listed.append(stage)
        return names(reader, stage)

    monkeypatch.setattr(releases, "project_names", counted)
    return listed


def test_a_new_version_of_a_known_project_keeps_the_listing_and_index_json(client, dev, monkeypatch):
    upload(client, dev, "pkg-a", "1.0", *make_wheel("pkg-a", "1.0"))
    assert client.get("/alice/dev/+simple/", accept=PIP_ACCEPT).code == 200
    assert client.get("/alice/dev").json["result"]["projects"] == ["pkg-a"]
    listed = counting_names(monkeypatch, client)
    upload(client, dev, "pkg-a", "1.1", *make_wheel("pkg-a", "1.1"))
    listing = client.get("/alice/dev/+simple/", accept=PIP_ACCEPT)
    assert [p["name"] for p in listing.json["projects"]] == ["pkg-a"]
    assert client.get("/alice/dev").json["result"]["projects"] == ["pkg-a"]
    assert listed == []  # both answered from the cache
    # A new project changes what they show: both are made again.
    upload(client, dev, "pkg-b", "1.0", *make_wheel("pkg-b", "1.0"))
    listing = client.get("/alice/dev/+simple/", accept=PIP_ACCEPT)
    assert sorted(p["name"] for p in listing.json["projects"]) == ["pkg-a", "pkg-b"]
    assert client.get("/alice/dev").json["result"]["projects"] == ["pkg-a", "pkg-b"]
    assert listed


def test_the_index_json_is_compact(client, dev):
    body = client.get("/alice/dev").body
    assert b"\n " not in body and body.endswith(b"}\n")


def test_one_versions_json_reads_one_version_record(client, dev, monkeypatch):
    for n in range(30):
        upload(client, dev, "pkg-a", f"1.{n}", *make_wheel("pkg-a", f"1.{n}"))
    read = counting_reads(monkeypatch, client.context.storage, "version/")
    answer = client.get("/alice/dev/pkg-a/1.7")
    assert answer.json["result"]["version"] == "1.7"
    assert read == ["version/alice/dev/pkg-a/1.7"]
    assert client.get("/alice/dev/pkg-a/9.9").code == 404


def test_project_json_is_kept_until_the_project_changes(client, dev, monkeypatch):
    upload(client, dev, "pkg-a", "1.0", *make_wheel("pkg-a", "1.0"))
    assert list(client.get("/alice/dev/pkg-a").json["result"]) == ["1.0"]
    read = counting_reads(monkeypatch, client.context.storage, "version/")
    assert list(client.get("/alice/dev/pkg-a").json["result"]) == ["1.0"]
    assert read == []  # from the cache
    upload(client, dev, "pkg-a", "2.0", *make_wheel("pkg-a", "2.0"))
    assert sorted(client.get("/alice/dev/pkg-a").json["result"]) == ["1.0", "2.0"]


class Counted(str):
    """
    A version string that counts how often it is compared for equality.
    """

    comparisons = 0

    def __eq__(self, other):
        Counted.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("count", [200, 2000])
def test_rendering_a_project_page_is_linear_in_its_versions(count):
    versions = [Counted(f"1.{n}") for n in range(count)]
    contributions = [Contribution("a/dev", [], versions, ""), Contribution("b/dev", [], versions, "")]
    Counted.comparisons = 0
    body = simple.render_project(simple.JSON_V1, "a/dev", "p", contributions, "/a/dev/+simple/p/", None)
    assert len(json.loads(body)["versions"]) == count
    assert Counted.comparisons <= 2 * count

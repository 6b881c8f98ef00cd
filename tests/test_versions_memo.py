"""
The versions of private projects kept from the commits
(L{devpi_tx.model.versions_memo}), and project pages put together from
what each version rendered (L{devpi_tx.web.simple.render_project}).
"""

from __future__ import annotations

import json

import pytest

from devpi_tx.model import releases, stages
from devpi_tx.model.versions_memo import VersionsMemo
from devpi_tx.web import simple
from devpi_tx.web.render import dump_json

from .distfiles import make_wheel
from .test_releases import PIP_ACCEPT, upload
from .test_state_costs import counting_reads


@pytest.fixture
def dev(client, alice):
    assert client.request("PUT", "/alice/dev", {"volatile": True}, headers=alice).code == 200
    return alice


def uploaded(client, dev, versions):
    for version in versions:
        assert upload(client, dev, "pkg", version, *make_wheel("pkg", version)).code == 200


def page_without_memo(context, fmt: str) -> bytes:
    order = stages.resolution_order(context.storage, "alice/dev", context.registry.is_mirror)
    planned = stages.plan(context.storage, order, "pkg")
    contributions = stages.project_contributions(context.storage, planned, "pkg")
    return simple.render_project(fmt, "alice/dev", "pkg", contributions, "/alice/dev/+simple/pkg/", None)


def test_a_new_version_reads_that_version_only(client, context, dev, monkeypatch):
    uploaded(client, dev, [f"1.{n}" for n in range(20)])
    memo = VersionsMemo(context.storage)
    assert list(memo.entries("alice/dev", "pkg")) == sorted(f"1.{n}" for n in range(20))
    read = counting_reads(monkeypatch, context.storage, "")
    uploaded(client, dev, ["2.0"])
    read.clear()
    entries = memo.entries("alice/dev", "pkg")
    assert "2.0" in entries and len(entries) == 21
    assert list(entries) == sorted(entries)
    assert read == ["version/alice/dev/pkg/2.0", "link/alice/dev/pkg/2.0/pkg-2.0-py3-none-any.whl"]
    read.clear()
    assert memo.entries("alice/dev", "pkg") is entries
    assert read == []


def test_the_memo_follows_yanks_deletions_and_index_changes(client, context, dev):
    uploaded(client, dev, ["1.0", "1.1", "1.2"])
    memo = VersionsMemo(context.storage)

    def matches_the_state():
        fresh = releases.version_records(context.storage, "alice/dev", "pkg")
        return {v: e.record for v, e in memo.entries("alice/dev", "pkg").items()} == fresh

    assert matches_the_state()
    path = memo.entries("alice/dev", "pkg")["1.1"].links[0]["relpath"]
    with context.storage.transaction() as tx:
        releases.set_yanked(tx, "alice/dev", path, "broken")
    assert memo.entries("alice/dev", "pkg")["1.1"].links[0]["yanked"] == "broken"
    assert matches_the_state()
    assert client.request("DELETE", "/alice/dev/pkg/1.0", headers=dev).code == 200
    assert list(memo.entries("alice/dev", "pkg")) == ["1.1", "1.2"]
    assert client.request("DELETE", "/alice/dev/pkg", headers=dev).code == 200
    assert memo.entries("alice/dev", "pkg") == {}
    uploaded(client, dev, ["3.0"])
    assert list(memo.entries("alice/dev", "pkg")) == ["3.0"]
    assert client.request("PATCH", "/alice/dev", ["title=t"], headers=dev).code == 200
    assert matches_the_state()


def test_the_memo_stays_within_its_bound(client, context, dev):
    for name in ("pkg-a", "pkg-b", "pkg-c"):
        for version in ("1.0", "1.1"):
            upload(client, dev, name, version, *make_wheel(name, version))
    memo = VersionsMemo(context.storage, max_versions=4)
    for name in ("pkg-a", "pkg-b", "pkg-c"):
        assert len(memo.entries("alice/dev", name)) == 2
    assert memo._count <= 4 and len(memo._projects) == 2


@pytest.mark.parametrize("fmt", ["text/html", simple.JSON_V1])
def test_a_page_after_an_upload_renders_the_new_version_only(client, context, dev, monkeypatch, fmt):
    uploaded(client, dev, [f"1.{n}" for n in range(30)])
    accept = PIP_ACCEPT if fmt == simple.JSON_V1 else "text/html"
    assert client.get("/alice/dev/+simple/pkg/", accept=accept).body == page_without_memo(context, fmt)
    rendered: list[int] = []
    piece = simple._piece

    def counting(fmt, stage, links, *args):
        rendered.append(len(links))
        return piece(fmt, stage, links, *args)

    monkeypatch.setattr(simple, "_piece", counting)
    uploaded(client, dev, ["1.5.1"])
    page = client.get("/alice/dev/+simple/pkg/", accept=accept).body
    assert rendered == [1]
    assert page == page_without_memo(context, fmt)
    assert b"pkg-1.5.1-py3-none-any.whl" in page
    # An overwritten file (a volatile index) and a yank change one piece each.
    assert upload(client, dev, "pkg", "1.7", *make_wheel("pkg", "1.7", payload=b"again")).code == 200
    path = context.versions.entries("alice/dev", "pkg")["1.3"].links[0]["relpath"]
    with context.storage.transaction() as tx:
        releases.set_yanked(tx, "alice/dev", path, True)
    rendered.clear()
    page = client.get("/alice/dev/+simple/pkg/", accept=accept).body
    assert sorted(rendered) == [1, 1]
    assert page == page_without_memo(context, fmt)


def test_project_json_after_an_upload_encodes_the_new_version_only(client, context, dev, monkeypatch):
    from devpi_tx.web.projects import ProjectRoutes

    uploaded(client, dev, [f"1.{n}" for n in range(12)])
    first = client.get("/alice/dev/pkg", accept="application/json")
    encoded: list[str] = []
    record_json = ProjectRoutes._record_json

    def counting(self, base, record):
        encoded.append(record["version"])
        return record_json(self, base, record)

    monkeypatch.setattr(ProjectRoutes, "_record_json", counting)
    uploaded(client, dev, ["1.4.1"])
    answer = client.get("/alice/dev/pkg", accept="application/json")
    assert encoded == ["1.4.1"]
    assert set(answer.json["result"]) == {*first.json["result"], "1.4.1"}
    # The same bytes as the whole answer encoded at once.
    assert answer.body == dump_json(json.loads(answer.body), compact=True)

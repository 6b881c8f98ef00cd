"""
Listings and index JSON put together from chunks of names
(L{devpi_tx.web.namepages}, L{devpi_tx.model.names_index.SortedNames}).
"""

from __future__ import annotations

import json
import random

import pytest

from devpi_tx.model.names_index import SortedNames
from devpi_tx.web import namepages, simple
from devpi_tx.web.render import dump_json

from .distfiles import make_wheel
from .test_releases import PIP_ACCEPT, upload

FORMATS = ["text/html", simple.HTML_V1, simple.JSON_V1]


def names_of(n: int) -> list[str]:
    return sorted(f"pkg-{i:05d}" for i in range(n))


@pytest.fixture
def renders(monkeypatch) -> list[int]:
    """
    The number of names of each chunk rendered from now on.
    """
    counted: list[int] = []
    for fmt, render in list(namepages._RENDER.items()):

        def counting(names, render=render):
            counted.append(len(names))
            return render(names)

        monkeypatch.setitem(namepages._RENDER, fmt, counting)
    return counted


def test_sorted_names_stay_sorted_through_adds_and_removals():
    rng = random.Random(7)
    kept: set[str] = set()
    names = SortedNames([], chunk=4)
    for _ in range(3000):
        name = f"n{rng.randrange(400):03d}"
        if rng.random() < 0.6:
            assert names.add(name) == (name not in kept)
            kept.add(name)
        else:
            assert names.discard(name) == (name in kept)
            kept.discard(name)
    assert list(names) == sorted(kept) and len(names) == len(kept)
    assert all(0 < len(chunk.names) < 8 for chunk in names.chunks)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("count", [0, 1, 5, 1300])
def test_a_listing_is_the_page_rendered_whole(fmt, count):
    names = names_of(count)
    page = namepages.list_page(fmt, "alice/dev", SortedNames(names, chunk=64))
    assert page.body == simple.render_project_list(fmt, "alice/dev", [("alice/dev", names)])
    if fmt == simple.JSON_V1:
        assert [p["name"] for p in json.loads(page.body)["projects"]] == names


@pytest.mark.parametrize("count", [0, 1, 1300])
def test_index_json_is_the_envelope_encoded_whole(count):
    names = names_of(count)
    config = {"type": "stage", "bases": [], "title": '\u00e9 "quoted"'}
    body = namepages.index_json(config, SortedNames(names, chunk=64))
    assert body == dump_json({"type": "indexconfig", "result": dict(config, projects=names)}, compact=True)


@pytest.mark.parametrize("fmt", [*FORMATS, "indexconfig"])
def test_a_new_name_renders_one_chunk_again(fmt, renders):
    names = SortedNames(names_of(5000), chunk=100)

    def build():
        if fmt == "indexconfig":
            return namepages.index_json({"type": "stage"}, names), None
        page = namepages.list_page(fmt, "alice/dev", names)
        return page.body, page.etag

    body, etag = build()
    assert sum(renders) == 5000
    renders.clear()
    assert build() == (body, etag)
    assert renders == []
    names.add("pkg-02500a")
    changed, changed_etag = build()
    assert len(renders) == 1 and renders[0] <= 200
    assert b"pkg-02500a" in changed and changed != body
    assert changed_etag != etag or fmt == "indexconfig"
    names.discard("pkg-02500a")
    renders.clear()
    assert build() == (body, etag)
    assert len(renders) == 1


def test_an_upload_of_a_new_project_renders_one_chunk_of_the_listing(client, context, alice, renders):
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    context.project_names._chunk = 2
    for name in ("pkg-a", "pkg-c", "pkg-e", "pkg-g", "pkg-i"):
        upload(client, alice, name, "1.0", *make_wheel(name, "1.0"))
    listing = client.get("/alice/dev/+simple/", accept=PIP_ACCEPT)
    assert [p["name"] for p in listing.json["projects"]] == ["pkg-a", "pkg-c", "pkg-e", "pkg-g", "pkg-i"]
    first = len(renders)
    upload(client, alice, "pkg-f", "1.0", *make_wheel("pkg-f", "1.0"))
    listing = client.get("/alice/dev/+simple/", accept=PIP_ACCEPT)
    assert [p["name"] for p in listing.json["projects"]][3] == "pkg-f"
    assert len(renders) == first + 1
    index = client.get("/alice/dev", accept="application/json").json
    assert index["result"]["projects"] == ["pkg-a", "pkg-c", "pkg-e", "pkg-f", "pkg-g", "pkg-i"]

"""
Project lists drawing on an upstream list are written to disk by a thread
and sent from there, with the same bytes as a list built in memory.
"""

from __future__ import annotations

import os
import time

import pytest
from twisted.internet.defer import Deferred, ensureDeferred

from devpi_tx.web import api, simple
from devpi_tx.web.listpages import ListPages, merged_names
from devpi_tx.web.render import dump_json

from .conftest import result_of
from .distfiles import make_wheel, upload_form

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json"


@pytest.fixture
def dev(client, alice):
    assert client.request("PUT", "/alice/dev", {"bases": "root/pypi"}, headers=alice).code == 200
    return alice


def upload(client, auth, name):
    filename, data = make_wheel(name, "1.0")
    content_type, body = upload_form(name, "1.0", filename, data)
    answer = client.request(
        "POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **auth}, accept=None
    )
    assert answer.code == 200, answer.body


def write_upstream_list(client, names):
    path = client.context.project_lists.path("root/pypi")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(name + "\n" for name in names)
    # A new list always gets a new mtime, even within the clock's tick.
    stamp = time.time_ns() + 10**9 * len(names)
    os.utime(path, ns=(stamp, stamp))


def test_merged_names_skips_what_earlier_stages_listed(tmp_path):
    upstream = tmp_path / "list.txt"
    upstream.write_text("a\nb\nc\n")
    groups = [
        (stage, list(names))
        for stage, names in merged_names([("x/dev", ["b"]), ("root/pypi", str(upstream))])
    ]
    assert groups == [("x/dev", ["b"]), ("root/pypi", ["a", "c"])]


@pytest.mark.parametrize("fmt, accept", [(simple.JSON_V1, PIP_ACCEPT), ("text/html", "text/html")])
def test_large_list_same_bytes_as_in_memory(client, dev, fmt, accept):
    upload(client, dev, "pkg-a")
    write_upstream_list(client, ["alpha", "pkg-a", "beta"])
    answer = client.get("/alice/dev/+simple/", accept=accept)
    assert answer.code == 200
    expected = simple.render_project_list(
        fmt, "alice/dev", [("alice/dev", ["pkg-a"]), ("root/pypi", ["alpha", "beta"])]
    )
    assert answer.body == expected
    assert answer.header("cache-control") == "no-cache"
    etag = answer.header("etag")
    again = client.get("/alice/dev/+simple/", accept=accept, headers={"If-None-Match": etag})
    assert again.code == 304


def test_large_list_follows_the_state_and_the_upstream_list(client, dev):
    write_upstream_list(client, ["alpha"])
    names = lambda: [p["name"] for p in client.get("/alice/dev/+simple/", accept=PIP_ACCEPT).json["projects"]]  # noqa: E731
    assert names() == ["alpha"]
    upload(client, dev, "pkg-b")
    assert names() == ["pkg-b", "alpha"]
    write_upstream_list(client, ["alpha", "gamma"])
    assert names() == ["pkg-b", "alpha", "gamma"]
    pages = os.listdir(os.path.join(client.context.config.serverdir, "+mirrorlists", "pages"))
    assert len(pages) == 1  # older renderings are removed


def test_large_list_is_not_built_in_memory(client, dev, monkeypatch):
    write_upstream_list(client, ["alpha"])

    def refuse(*args):
        raise AssertionError("rendered in memory")

    monkeypatch.setattr(simple, "render_project_list", refuse)
    assert client.get("/root/pypi/+simple/", accept=PIP_ACCEPT).code == 200


def test_mirror_index_json_streams_the_upstream_list(client, dev, monkeypatch):
    """
    GET of a mirror index (JSON) lists the upstream's names from a file
    written by a thread, byte for byte as the envelope would be.
    """
    write_upstream_list(client, ["alpha", "bé", "gamma"])
    config = client.get("/root/pypi?no_projects=").json["result"]
    expected = dump_json({"type": "indexconfig", "result": dict(config, projects=["alpha", "bé", "gamma"])})
    monkeypatch.setattr(api, "envelope", lambda *args, **kw: pytest.fail("envelope built in memory"))
    answer = client.get("/root/pypi")
    assert answer.code == 200
    assert answer.body == expected
    assert client.get("/root/pypi", headers={"If-None-Match": answer.header("etag")}).code == 304


def test_list_pages_are_made_once_for_concurrent_requests(tmp_path):
    calls = []

    def run_in_thread(function, *args):
        calls.append(Deferred())
        calls[-1].addCallback(lambda _: function(*args))
        return calls[-1]

    pages = ListPages(str(tmp_path / "pages"), run_in_thread)
    upstream = tmp_path / "list.txt"
    upstream.write_text("a\nb\n")
    sources = [("root/pypi", str(upstream))]
    first = ensureDeferred(pages.get("root/pypi", simple.JSON_V1, sources))
    second = ensureDeferred(pages.get("root/pypi", simple.JSON_V1, sources))
    assert len(calls) == 1
    calls[0].callback(None)
    rendered = result_of(first)
    assert result_of(second) == rendered
    with open(rendered.path, "rb") as page:
        assert page.read() == simple.render_project_list(
            simple.JSON_V1, "root/pypi", [("root/pypi", ["a", "b"])]
        )
    # Unchanged sources: the same file, no new rendering.
    assert result_of(ensureDeferred(pages.get("root/pypi", simple.JSON_V1, sources))) == rendered
    assert len(calls) == 1

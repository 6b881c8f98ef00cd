"""
An upstream project list is kept across restarts and asked for again only
when stale, conditionally (issue 17, item 3).
"""

from __future__ import annotations

import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.web.resource import Resource

from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.mirror.projectlist import ProjectLists
from devpi_tx.model.stages import Stage

STAGE = Stage(
    "root/pypi", {"type": "mirror", "mirror_url": "http://upstream.example/simple/"}, is_mirror=True
)


class Root(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[dict] = []
        self.names = ["alpha", "beta"]
        self.etag = '"v1"'

    def render_GET(self, request):
        self.asked.append({"if-none-match": request.getHeader("if-none-match")})
        if request.getHeader("if-none-match") == self.etag:
            request.setResponseCode(304)
            return b""
        request.setHeader("ETag", self.etag)
        request.setHeader("X-PyPI-Last-Serial", "77")
        request.setHeader("Content-Type", "text/html")
        return "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in self.names).encode()


def lists_for(tmp_path, upstream: Root, now: list[float]) -> ProjectLists:
    http = UpstreamHTTP(StubTreq(upstream), reactor)
    return ProjectLists(None, http, str(tmp_path), timeout=5, default_expiry=1800, clock=lambda: now[0])


@pytest_twisted.ensureDeferred
async def test_a_fresh_list_is_not_fetched_again_even_after_a_restart(tmp_path):
    upstream, now = Root(), [1000.0]
    lists = lists_for(tmp_path, upstream, now)
    assert await lists.refresh(STAGE) == 2
    record = lists.record("root/pypi")
    assert (record["etag"], record["serial"], record["count"]) == ('"v1"', "77", 2)
    # A new process on the same directory, ten minutes later.
    now[0] += 600
    again = lists_for(tmp_path, upstream, now)
    assert again.is_fresh(STAGE)
    assert await again.refresh(STAGE) is None
    assert len(upstream.asked) == 1
    assert open(again.path("root/pypi")).read() == "alpha\nbeta\n"


@pytest_twisted.ensureDeferred
async def test_a_stale_list_is_asked_for_conditionally(tmp_path):
    upstream, now = Root(), [1000.0]
    lists = lists_for(tmp_path, upstream, now)
    await lists.refresh(STAGE)
    now[0] += 1801
    assert not lists.is_fresh(STAGE)
    changes: list[int] = []
    lists._on_change = lambda: changes.append(1)
    assert await lists.refresh(STAGE) is None  # 304: the list stays, its check is noted
    assert upstream.asked[-1] == {"if-none-match": '"v1"'}
    assert lists.is_fresh(STAGE) and changes == []
    now[0] += 1801
    upstream.etag, upstream.names = '"v2"', ["alpha", "beta", "gamma"]
    assert await lists.refresh(STAGE) == 3
    assert changes == [1] and open(lists.path("root/pypi")).read().split() == ["alpha", "beta", "gamma"]


@pytest_twisted.ensureDeferred
async def test_another_upstream_url_is_fetched_whole(tmp_path):
    upstream, now = Root(), [1000.0]
    lists = lists_for(tmp_path, upstream, now)
    await lists.refresh(STAGE)
    moved = Stage(
        "root/pypi", {"type": "mirror", "mirror_url": "http://other.example/simple/"}, is_mirror=True
    )
    assert not lists.is_fresh(moved)
    assert await lists.refresh(moved) == 2
    assert upstream.asked[-1] == {"if-none-match": None}

"""
What the mirror pages remember about freshness (when each project was
last found current upstream, and which projects upstream lacks) is
bounded: past the bound the least recently checked is forgotten, and
revalidated when next asked for.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from devpi_tx.mirror.client import NotFoundUpstream, NotModified
from devpi_tx.mirror.pages import MirrorPages

from .conftest import result_of


class Upstream:
    """
    Answers "not modified" for every project, or "no such project" for
    those whose names start with C{gone}; records what it was asked.
    """

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def project_page(self, url, project, etag=None):
        self.asked.append(project)
        if project.startswith("gone"):
            raise NotFoundUpstream(project)
        raise NotModified()


class Storage:
    def get(self, key):
        return None


STAGE = SimpleNamespace(name="root/pypi", config={"mirror_url": "http://127.0.0.1:9/simple/"})


def pages_with(upstream: Upstream, bound: int) -> MirrorPages:
    clock = Clock()
    return MirrorPages(Storage(), upstream, default_expiry=3600, clock=clock.seconds, max_remembered=bound)


def ensure(pages: MirrorPages, project: str) -> None:
    result_of(ensureDeferred(pages.ensure(STAGE, project)))


def test_checked_projects_past_the_bound_forget_the_oldest():
    upstream = Upstream()
    pages = pages_with(upstream, bound=3)
    for name in ["a", "b", "c"]:
        ensure(pages, name)
    ensure(pages, "a")  # fresh: not asked, and not made newer either
    assert upstream.asked == ["a", "b", "c"]
    ensure(pages, "d")  # past the bound: "a", checked longest ago, goes
    assert len(pages._checked) == 3
    for name in ["b", "c", "d"]:
        ensure(pages, name)
    assert upstream.asked == ["a", "b", "c", "d"]
    ensure(pages, "a")
    assert upstream.asked == ["a", "b", "c", "d", "a"]
    # ...which pushed out "b", the oldest check left.
    ensure(pages, "b")
    assert upstream.asked == ["a", "b", "c", "d", "a", "b"]
    assert len(pages._checked) == 3


def test_missing_projects_past_the_bound_forget_the_oldest():
    upstream = Upstream()
    pages = pages_with(upstream, bound=2)
    for name in ["gone1", "gone2", "gone1", "gone3"]:
        ensure(pages, name)
    assert upstream.asked == ["gone1", "gone2", "gone3"]
    assert len(pages._missing) == 2
    ensure(pages, "gone3")
    ensure(pages, "gone2")
    ensure(pages, "gone1")  # forgotten, asked again
    assert upstream.asked == ["gone1", "gone2", "gone3", "gone1"]

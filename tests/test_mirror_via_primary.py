"""
A replica's mirror pages: brought up to date by asking the primary, never
committed by the replica itself (L{MirrorPages} with C{via_primary}).
"""

from __future__ import annotations

import pytest
import pytest_twisted

from devpi_tx.mirror.client import UpstreamError
from devpi_tx.mirror.pages import MirrorPages, MirrorUnavailable, mirror_key
from devpi_tx.model.stages import Stage
from devpi_tx.storage.sqlite import SQLiteStorage

STAGE = Stage(
    "root/pypi", {"type": "mirror", "mirror_url": "http://upstream.example/simple/"}, is_mirror=True
)


class FakePrimary:
    def __init__(self, storage) -> None:
        self.storage = storage
        self.asked: list[str] = []
        self.answer: object = True

    async def __call__(self, stage: Stage, project: str) -> bool:
        self.asked.append(project)
        if isinstance(self.answer, Exception):
            raise self.answer
        if self.answer:
            # What applying the primary's commit does on a replica.
            with self.storage.transaction() as tx:
                tx.set(mirror_key(stage.name, project), {"links": [], "versions": ["1.0"]})
        return bool(self.answer)


@pytest.fixture
def setup(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "db.sqlite"))
    now = [1000.0]
    primary = FakePrimary(storage)
    pages = MirrorPages(storage, None, default_expiry=60, clock=lambda: now[0], via_primary=primary)
    yield storage, pages, primary, now
    storage.close()


@pytest_twisted.ensureDeferred
async def test_a_page_is_asked_of_the_primary_once_per_expiry(setup):
    storage, pages, primary, now = setup
    serial = storage.serial
    assert await pages.ensure(STAGE, "hello") is None
    assert primary.asked == ["hello"] and pages.cached("root/pypi", "hello")["versions"] == ["1.0"]
    assert storage.serial == serial + 1  # the primary's commit, nothing of the replica's own
    await pages.ensure(STAGE, "hello")
    assert primary.asked == ["hello"]
    now[0] += 61
    await pages.ensure(STAGE, "hello")
    assert primary.asked == ["hello", "hello"]


@pytest_twisted.ensureDeferred
async def test_a_project_the_primary_lacks_is_remembered(setup):
    storage, pages, primary, now = setup
    primary.answer = False
    await pages.ensure(STAGE, "nope")
    await pages.ensure(STAGE, "nope")
    assert primary.asked == ["nope"] and pages.cached("root/pypi", "nope") is None


@pytest_twisted.ensureDeferred
async def test_a_failing_primary_serves_the_cached_page_or_a_clear_error(setup):
    storage, pages, primary, now = setup
    primary.answer = UpstreamError("connection refused")
    with pytest.raises(MirrorUnavailable) as caught:
        await pages.ensure(STAGE, "hello")
    assert caught.value.status == 502 and "primary" in str(caught.value)
    primary.answer = True
    await pages.ensure(STAGE, "hello")
    now[0] += 61
    primary.answer = UpstreamError("connection refused")
    warning = await pages.ensure(STAGE, "hello")
    assert "serving the cached page" in warning

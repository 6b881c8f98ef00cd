import pytest

from devpi_tx.web.pagecache import Page, PageCache


def page(size=10):
    return Page(b"x" * size, '"e"', "text/html")


def fill() -> PageCache:
    cache = PageCache()
    for key in [
        ("a/dev", "hello", "text/html"),
        ("b/dev", "hello", "json"),
        ("a/dev", "other", "text/html"),
        ("a/dev", None, "text/html"),
        ("a/dev", None, "indexconfig"),
    ]:
        cache.put(key, page())
    return cache


def test_a_new_version_drops_its_projects_pages_and_no_list():
    cache = fill()
    cache.changed(7, frozenset({"version/a/dev/hello/1.0"}))
    assert cache.get(("a/dev", "hello", "text/html")) is None
    assert cache.get(("b/dev", "hello", "json")) is None  # inheritance: every index
    assert cache.get(("a/dev", "other", "text/html")) is not None
    # The names listed did not change: the lists and the index JSON stay.
    assert cache.get(("a/dev", None, "text/html")) is not None
    assert cache.get(("a/dev", None, "indexconfig")) is not None
    assert len(cache) == 3


@pytest.mark.parametrize("key", ["project/a/dev/new", "mirror/root/pypi/new"])
def test_a_project_that_appears_drops_every_list(key):
    cache = fill()
    cache.changed(7, frozenset({key, "version/a/dev/new/1.0"}))
    assert cache.get(("a/dev", None, "text/html")) is None
    assert cache.get(("a/dev", None, "indexconfig")) is None
    assert cache.get(("a/dev", "hello", "text/html")) is not None
    assert len(cache) == 3


def test_user_change_drops_everything_and_bounds_hold():
    cache = PageCache(max_entries=2)
    cache.put(("a/dev", "p1", "f"), page())
    cache.put(("a/dev", "p2", "f"), page())
    cache.get(("a/dev", "p1", "f"))
    cache.put(("a/dev", "p3", "f"), page())  # p2 is the least recently used
    assert cache.get(("a/dev", "p2", "f")) is None
    assert len(cache) == 2
    cache.changed(8, frozenset({"user/a"}))
    assert len(cache) == 0
    cache.put(("a/dev", "p1", "f"), page())
    cache.invalidate_project("p1")
    assert len(cache) == 0

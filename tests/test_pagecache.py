from devpi_tx.web.pagecache import Page, PageCache


def page(size=10):
    return Page(b"x" * size, '"e"', "text/html")


def test_commit_drops_the_pages_of_its_projects_and_every_list():
    cache = PageCache()
    for key in [
        ("a/dev", "hello", "text/html"),
        ("b/dev", "hello", "json"),
        ("a/dev", "other", "text/html"),
        ("a/dev", None, "text/html"),
    ]:
        cache.put(key, page())
    cache.changed(7, frozenset({"version/a/dev/hello/1.0"}))
    assert cache.get(("a/dev", "hello", "text/html")) is None
    assert cache.get(("b/dev", "hello", "json")) is None  # inheritance: every index
    assert cache.get(("a/dev", None, "text/html")) is None
    assert cache.get(("a/dev", "other", "text/html")) is not None
    assert len(cache) == 1


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

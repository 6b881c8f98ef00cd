"""
Rendered simple pages, kept until a commit touches what they were made
from.

A page of a project with a thousand versions takes milliseconds to build
and is asked for by every installer, so it is built once per change.  The
storage tells the cache which keys each commit changed: a change to a
project (its versions or files) drops that project's pages on every index
(inheritance makes them depend on each other), a project that appears or
goes drops the project lists (and the indexes' JSON), a change to a user
record (index configuration, bases) drops everything.

A page built through a filter whose answer changes with time (an index
type's C{valid_until}, a minimum age) carries C{expires}: it is dropped
when the cache's clock reaches it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import attrs


@attrs.frozen
class Page:
    body: bytes
    etag: str
    fmt: str
    #: When the page stops being true by itself (seconds since the
    #: epoch); None: not before a commit changes what it shows.
    expires: float | None = None


class PageCache:
    def __init__(
        self,
        max_entries: int = 2000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self._pages: OrderedDict[tuple, Page] = OrderedDict()
        #: Keys by project (key[1]; None for project lists), so that a
        #: commit drops a project's pages without looking at every page.
        self._by_project: dict[str | None, set[tuple]] = {}
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        #: Goes up whenever project lists are dropped: a list rendered off
        #: the reactor is cached only if it did not move meanwhile.
        self.generation = 0
        #: Lookups that found a page, and those that did not (metrics).
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        """
        Bytes of the pages kept.
        """
        return self._bytes

    def get(self, key: tuple) -> Page | None:
        page = self._pages.get(key)
        if page is not None and page.expires is not None and self.clock() >= page.expires:
            self._drop(key)
            page = None
        if page is not None:
            self.hits += 1
            self._pages.move_to_end(key)
        else:
            self.misses += 1
        return page

    def put(self, key: tuple, page: Page) -> None:
        if len(page.body) > self._max_bytes // 2:
            return  # more than half the cache: not worth the memory
        self._drop(key)
        self._pages[key] = page
        self._by_project.setdefault(key[1], set()).add(key)
        self._bytes += len(page.body)
        while self._pages and (len(self._pages) > self._max_entries or self._bytes > self._max_bytes):
            oldest = next(iter(self._pages))
            self._drop(oldest)

    def _drop(self, key: tuple) -> None:
        page = self._pages.pop(key, None)
        if page is not None:
            self._bytes -= len(page.body)
            keys = self._by_project[key[1]]
            keys.discard(key)
            if not keys:
                del self._by_project[key[1]]

    def clear(self) -> None:
        self.generation += 1
        self._pages.clear()
        self._by_project.clear()
        self._bytes = 0

    def invalidate_project(self, project: str | None) -> None:
        """
        Drop every page of C{project} and every project list.
        """
        self.generation += 1
        for name in {None, project}:
            for key in list(self._by_project.get(name, ())):
                self._drop(key)

    def changed(self, serial: int, keys: frozenset[str]) -> None:
        """
        A storage commit listener.
        """
        projects: set[str] = set()
        names_changed = False
        for key in keys:
            kind, _, rest = key.partition("/")
            if kind == "user":
                self.clear()
                return
            if kind in ("project", "version", "link", "mirror"):
                # project/<user>/<index>/<name>, version/<user>/<index>/<name>/<v>,
                # link/<user>/<index>/<name>/<v>/<file>, mirror/<user>/<index>/<name>
                parts = rest.split("/")
                if len(parts) >= 3:
                    projects.add(parts[2])
                # A project key is written when a project appears or goes
                # (a mirror's page may be a name new to its cached list);
                # a version of a known project leaves every list as it was.
                names_changed = names_changed or kind not in ("version", "link")
        for project in projects:
            self._drop_project(project)
        if names_changed:
            self._drop_project(None)

    def _drop_project(self, project: str | None) -> None:
        if project is None:
            self.generation += 1
        for key in list(self._by_project.get(project, ())):
            self._drop(key)

    def __len__(self) -> int:
        return len(self._pages)

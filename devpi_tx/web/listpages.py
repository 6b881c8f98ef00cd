"""
Project list pages that draw on an upstream's list of names.

A public index lists hundreds of thousands of projects: built in memory on
the reactor, its page would stall every other request for a second and
take a hundred megabytes.  Such pages are written by a worker thread, one
name at a time, into a file under C{+mirrorlists/pages/}, and sent from
disk like any file.  A page is made again when what it is made from
changes: the names of the private indexes of the chain (read on the
reactor, which alone touches the state) or an upstream list file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

import attrs

from ..singleflight import SingleFlight
from . import simple
from .files import serve_file
from .render import dump_json

#: A source of names: a list (from the state) or the path of a list file.
Source = tuple[str, "list[str] | str"]


@attrs.frozen
class RenderedList:
    path: str
    size: int
    sha256: str
    mtime: float

    def serve(self, request, content_type: str):
        """
        Answer C{request} with this page (ETag, 304, ranges), to be
        revalidated on every use: it changes with its sources.
        """
        return serve_file(
            request,
            self.path,
            size=self.size,
            sha256=self.sha256,
            last_modified=self.mtime,
            content_type=content_type,
            cache_control="no-cache",
        )


class _HashingFile:
    def __init__(self, file) -> None:
        self._file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.hash.update(data)
        self.size += len(data)


def write_index_json(out, config: dict, names: Iterable[str]) -> None:
    """
    Write C{envelope(type="indexconfig", result=config + projects)} byte
    for byte as L{render.dump_json} makes it, one name at a time.
    """
    marker = "\0projects\0"
    head, tail = dump_json({"type": "indexconfig", "result": dict(config, projects=marker)}).split(
        json.dumps(marker).encode(), 1
    )
    out.write(head)
    separator = b"[\n      "
    for name in names:
        out.write(separator + json.dumps(name).encode())
        separator = b",\n      "
    out.write(b"[]" if separator.startswith(b"[") else b"\n    ]")
    out.write(tail)


def merged_names(sources: list[Source]) -> Iterator[tuple[str, Iterable[str]]]:
    """
    Per stage, the names that no earlier stage listed.  The names of a
    list file are remembered only when another source follows it.
    """
    listed: set[str] = set()
    for position, (stage, names) in enumerate(sources):
        remember = not isinstance(names, str) or position < len(sources) - 1
        yield stage, _unlisted(_names_of(names), listed, remember)


def _names_of(names: Iterable[str] | str) -> Iterable[str]:
    if not isinstance(names, str):
        yield from names
        return
    with open(names, encoding="utf-8") as lines:
        for line in lines:
            yield line.rstrip("\n")


def _unlisted(names: Iterable[str], listed: set[str], remember: bool) -> Iterator[str]:
    for name in names:
        if name and name not in listed:
            if remember:
                listed.add(name)
            yield name


class ListPages:
    def __init__(self, directory: str, run_in_thread: Callable) -> None:
        self._dir = directory
        self._run = run_in_thread
        self._pages: dict[tuple, tuple[object, RenderedList]] = {}
        self._renderings: SingleFlight[RenderedList] = SingleFlight()

    async def get(self, stagename: str, fmt: str, sources: list[Source]) -> RenderedList:
        """
        The simple page of C{stagename}'s project list in C{fmt}, made from
        C{sources} (in chain order) unless it was made from the same.
        """

        def write(out) -> None:
            simple.write_project_list(out, fmt, stagename, merged_names(sources))

        return await self._get((stagename, fmt), self._token(sources), write)

    async def index_json(self, stagename: str, config: dict, names_file: str) -> RenderedList:
        """
        The JSON view of a mirror index (devpi's C{indexconfig} envelope
        with C{projects}), the names taken from its upstream list file.
        """
        token = (json.dumps(config, sort_keys=True), self._token([(stagename, names_file)]))

        def write(out) -> None:
            write_index_json(out, config, _names_of(names_file))

        return await self._get((stagename, "indexconfig"), token, write)

    @staticmethod
    def _token(sources: list[Source]) -> tuple:
        return tuple(
            (stage, (names, os.stat(names).st_mtime_ns) if isinstance(names, str) else tuple(names))
            for stage, names in sources
        )

    async def _get(self, key: tuple, token: object, write: Callable) -> RenderedList:
        cached = self._pages.get(key)
        if cached is not None and cached[0] == token:
            return cached[1]
        return await self._renderings.run(key, lambda: self._make(key, token, write))

    async def _make(self, key: tuple, token: object, write: Callable) -> RenderedList:
        rendered = await self._run(self._render, key, write)
        previous = self._pages.get(key)
        self._pages[key] = (token, rendered)
        if previous is not None and previous[1].path != rendered.path:
            # Requests being answered hold the old file open already.
            os.unlink(previous[1].path)
        return rendered

    def _render(self, key: tuple, write: Callable) -> RenderedList:
        """
        In a worker thread: write the page to a file of its own.
        """
        os.makedirs(self._dir, exist_ok=True)
        stagename, kind = key
        prefix = stagename.replace("/", "+") + "." + re.sub(r"[^a-z0-9]+", "-", kind) + "."
        fd, path = tempfile.mkstemp(prefix=prefix, dir=self._dir)
        try:
            with os.fdopen(fd, "wb", buffering=1024 * 1024) as file:
                out = _HashingFile(file)
                write(out)
        except BaseException:
            os.unlink(path)
            raise
        return RenderedList(path, out.size, out.hash.hexdigest(), time.time())

    def clear_directory(self) -> None:
        """
        Remove pages left by an earlier run (made again on demand).
        """
        if os.path.isdir(self._dir):
            for name in os.listdir(self._dir):
                os.unlink(os.path.join(self._dir, name))

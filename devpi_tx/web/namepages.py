"""
The project list and the index JSON of a private index without bases,
put together from pieces rendered once per chunk of names
(L{devpi_tx.model.names_index.SortedNames}).

An upload of a new project drops the listing from the page cache; made
again from scratch, a listing of 100,000 names took 100-200 ms of the
reactor's time (or of a worker thread's, which takes the GIL from it).
Made from pieces, only the chunk where the name went is rendered again
(a few hundred names) and the rest are joined: the cost of an answer is
a copy of its bytes.  The ETag hashes the pieces' digests, so it too
costs one chunk's hashing.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Callable

from ..model.names_index import NameChunk, SortedNames
from . import simple
from .pagecache import Page
from .render import dump_json


def _html_piece(names: list[str]) -> bytes:
    parts = []
    for name in names:
        escaped = html.escape(name)
        parts.append(f'\n<a href="{escaped}/">{escaped}</a><br>')
    return "".join(parts).encode("utf-8")


def _simple_json_piece(names: list[str]) -> bytes:
    # '{"name":"a"},{"name":"b"}': the C encoder, brackets cut off.
    return json.dumps([{"name": name} for name in names], separators=(",", ":"))[1:-1].encode("utf-8")


def _names_json_piece(names: list[str]) -> bytes:
    return json.dumps(names, separators=(",", ":"))[1:-1].encode("utf-8")


#: How a chunk is rendered, by the format of the page it goes into.
_RENDER: dict[str, Callable[[list[str]], bytes]] = {
    "text/html": _html_piece,
    simple.HTML_V1: _html_piece,
    simple.JSON_V1: _simple_json_piece,
    "indexconfig": _names_json_piece,
}


def _piece(chunk: NameChunk, fmt: str) -> tuple[bytes, bytes]:
    """
    The chunk's rendering for C{fmt} and its digest, made once per change
    of the chunk.
    """
    got = chunk.derived.get(fmt)
    if got is None:
        body = _RENDER[fmt](chunk.names)
        got = chunk.derived[fmt] = (body, hashlib.sha256(body).digest())
    return got


def _assemble(head: bytes, separator: bytes, tail: bytes, names: SortedNames, fmt: str) -> tuple[bytes, str]:
    pieces = [_piece(chunk, fmt) for chunk in names.chunks]
    parts = [head]
    for body, _ in pieces:
        parts.append(body)
        parts.append(separator)
    if pieces and separator:
        parts.pop()
    parts.append(tail)
    # One copy of the page's bytes (concatenating the join copied it twice).
    body = b"".join(parts)
    digest = hashlib.sha256(head + b"".join(digest for _, digest in pieces) + tail)
    return body, '"' + digest.hexdigest()[:32] + '"'


def list_page(fmt: str, stage: str, names: SortedNames) -> Page:
    """
    The project list of C{stage}, whose names are all its own: the same
    bytes as L{simple.render_project_list} makes.
    """
    if fmt == simple.JSON_V1:
        head = b'{"meta":{"api-version":"' + simple.API_VERSION.encode() + b'"},"projects":['
        body, etag = _assemble(head, b",", b"]}", names, fmt)
    else:
        head = simple.render_project_list(fmt, stage, [(stage, [])])
        head, tail = head[: -len(b"\n</body></html>\n")], b"\n</body></html>\n"
        body, etag = _assemble(head, b"", tail, names, fmt)
    return Page(body, etag, fmt)


def index_json(config: dict, names: SortedNames) -> bytes:
    """
    C{GET /<user>/<index>} of a private index, compact: the envelope of
    C{config} with C{projects} listing C{names}.
    """
    marker = "\0projects\0"
    envelope = {"type": "indexconfig", "result": dict(config, projects=marker)}
    head, tail = dump_json(envelope, compact=True).split(json.dumps(marker).encode(), 1)
    body, _ = _assemble(head + b"[", b",", b"]" + tail, names, "indexconfig")
    return body

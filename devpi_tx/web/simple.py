"""
The simple repository API: PEP 503 HTML and PEP 691 JSON (API version 1.1,
with PEP 700's C{versions}, C{size} and C{upload-time}), PEP 592 yanking
and PEP 658/714 core metadata, chosen by the C{Accept} header.
"""

from __future__ import annotations

import functools
import hashlib
import html
import io
import json
import posixpath
import re
from collections.abc import Iterable
from functools import partial
from typing import BinaryIO
from urllib.parse import quote

from twisted.web.iweb import IRequest

from ..model.versions_memo import derived
from .negotiation import parse_accept

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
API_VERSION = "1.1"

_ALIASES = {
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
}
_FORMATS = {
    "json": JSON_V1,
    "html": "text/html",
    JSON_V1: JSON_V1,
    HTML_V1: HTML_V1,
    "text/html": "text/html",
}
_INSTALLER = re.compile(r"([^ ]* )*(distribute|setuptools|pip|pex|uv)/.*")


class NotAcceptable(Exception):
    pass


def choose_format(request: IRequest) -> str:
    """
    The media type to answer a simple request with: C{?format=} wins, then
    the C{Accept} header by quality (JSON first on a tie, as PEP 691
    clients list it first); no header or C{*/*} give HTML.

    @raise NotAcceptable: the client accepts none of them.
    """
    forced = request.args.get(b"format")
    if forced:
        wanted = forced[0].decode("latin-1").lower()
        if wanted not in _FORMATS:
            raise NotAcceptable(f"unknown format {wanted!r}; use json or html")
        return _FORMATS[wanted]
    header = request.getHeader("accept")
    if not header:
        return "text/html"
    best = _format_for_accept(header)
    if best is None:
        raise NotAcceptable(
            f"none of the types in the Accept header can be served; use {JSON_V1}, {HTML_V1} or text/html"
        )
    return best


@functools.lru_cache(maxsize=256)
def _format_for_accept(header: str) -> str | None:
    """
    The best format for an C{Accept} header (installers send the same
    few headers on every request, hence the cache).
    """
    best, best_q = None, 0.0
    for media, quality in parse_accept(header):
        media = _ALIASES.get(media, media)
        if media in ("*/*", "text/*"):
            candidate = "text/html"
        elif media == "application/*":
            candidate = JSON_V1
        elif media in (JSON_V1, HTML_V1, "text/html"):
            candidate = media
        else:
            continue
        if quality > best_q:
            best, best_q = candidate, quality
    return best


def is_installer(request: IRequest) -> bool:
    """
    Whether the request comes from pip or friends (devpi's rule), or from
    any client that asks for the simple API explicitly.
    """
    agent = request.getHeader("user-agent") or ""
    accept = request.getHeader("accept") or ""
    return bool(_INSTALLER.match(agent)) or "vnd.pypi.simple" in accept


#: What a URL path may hold as it is (RFC 3986 pchar and "/").
_PATH_SAFE = "/!$&'()*+,;=:@~-._"
_PLAIN_PATH = re.compile(r"[A-Za-z0-9" + re.escape(_PATH_SAFE) + r"]*")


def quote_path(path: str) -> str:
    """
    C{path} fit for a URL: the characters a path may not hold as they are
    (a space, C{#}, C{?}, C{%}, non-ASCII, in file names from upstream)
    percent-encoded, the rest (C{+} of local versions included) left.
    """
    if _PLAIN_PATH.fullmatch(path):
        return path
    return quote(path, safe=_PATH_SAFE)


def link_url(page_dir: str, target: str, absolute_base: str | None) -> str:
    """
    A link from a page served under C{page_dir} (a path ending in C{/}) to
    C{target} (a path from the server root, not yet quoted): relative, as
    devpi makes them, or absolute when asked.
    """
    target = quote_path(target)
    if absolute_base is not None:
        return absolute_base + "/" + target
    if "//" in page_dir or "/." in page_dir or "/." in target or not target or target.startswith("/"):
        # Paths that need normalising: the general (slower) way.
        return posixpath.relpath("/" + target, page_dir)
    # Up from the page's directory to the deepest directory it shares
    # with the target, then down: posixpath.relpath for clean paths,
    # without its normalising (a project page renders one link per file).
    here = page_dir.strip("/").split("/") if page_dir.strip("/") else []
    there = target.split("/")
    common = 0
    for mine, theirs in zip(here, there, strict=False):
        if mine != theirs:
            break
        common += 1
    return "/".join([".."] * (len(here) - common) + there[common:]) or "."


def _file_entry(link: dict, url: str) -> dict:
    entry: dict = {"filename": link["basename"], "url": url, "hashes": {}}
    if link.get("sha256"):
        entry["hashes"] = {"sha256": link["sha256"]}
    elif link.get("hash_spec"):  # a mirrored link with another hash (md5)
        algorithm, _, digest = link["hash_spec"].partition("=")
        entry["hashes"] = {algorithm: digest}
    if link.get("requires_python"):
        entry["requires-python"] = link["requires_python"]
    if link.get("core_metadata_sha256") or link.get("core_metadata") is True:
        # PEP 714: a dict of hashes, or true when the hash is not known.
        meta = {"sha256": link["core_metadata_sha256"]} if link.get("core_metadata_sha256") else True
        entry["core-metadata"] = meta
        entry["dist-info-metadata"] = meta
    if link.get("yanked") not in (None, False):
        entry["yanked"] = link["yanked"]
    if link.get("size") is not None:
        entry["size"] = link["size"]
    if link.get("upload_time"):
        entry["upload-time"] = link["upload_time"]
    return entry


def _html_head(title: str) -> str:
    """
    The start of a simple page, with PEP 629's version meta tag.
    """
    title = html.escape(title)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta name="pypi:repository-version" '
        f'content="{API_VERSION}"><title>{title}</title></head><body><h1>{title}</h1>'
    )


def render_project(
    fmt: str,
    stagename: str,
    name: str,
    contributions: list,
    page_dir: str,
    absolute_base: str | None,
) -> bytes:
    """
    A project page from the links of each stage of the chain.

    A private stage's links come by version (L{Contribution.groups}) when
    read from the versions memo: each version's piece of the page is kept
    with it, so that the page of a project of 4,000 versions, after an
    upload, renders the new version's files and joins the rest.
    """
    pieces: list[bytes] = []
    # Each version once, in order of appearance: a dict, linear in the
    # versions (a list's membership test made it quadratic).
    versions: dict[str, None] = {}
    for contribution in contributions:
        if contribution.groups is not None:
            memo_key = (fmt, contribution.stage, page_dir, absolute_base)
            for group in contribution.groups:
                piece = derived(
                    group.derived,
                    memo_key,
                    partial(_piece, fmt, contribution.stage, group.links, page_dir, absolute_base),
                )
                if piece:
                    pieces.append(piece)
        elif contribution.links:
            pieces.append(_piece(fmt, contribution.stage, contribution.links, page_dir, absolute_base))
        for version in contribution.versions:
            versions.setdefault(version)
    if fmt == JSON_V1:
        head = b'{"meta":{"api-version":"' + API_VERSION.encode() + b'"},"name":' + json.dumps(name).encode()
        tail = b'],"versions":' + json.dumps(list(versions), separators=(",", ":")).encode("utf-8") + b"}"
        parts = [head, b',"files":[']
        for piece in pieces:
            parts += (piece, b",")
        if pieces:
            parts.pop()
        # One copy of the files' bytes: concatenating large bytes copies each time.
        return b"".join([*parts, tail])
    head = _html_head(f"{stagename}: links for {name}").encode("utf-8")
    return b"\n".join([head, *pieces, b"</body></html>\n"])


def _piece(fmt: str, stage: str, links: list[dict], page_dir: str, absolute_base: str | None) -> bytes:
    """
    The files of C{links} on a project page: JSON objects joined by commas,
    or HTML lines joined by newlines.
    """
    entries = [_file_entry(link, link_url(page_dir, link["relpath"], absolute_base)) for link in links]
    if fmt == JSON_V1:
        return json.dumps(entries, separators=(",", ":"))[1:-1].encode("utf-8")
    lines = []
    escaped_stage = html.escape(stage)
    for entry in entries:
        url = entry["url"]
        for algorithm, digest in entry["hashes"].items():
            url += f"#{algorithm}={digest}"
        attrs = [f'href="{html.escape(url)}"']
        if "requires-python" in entry:
            attrs.append(f'data-requires-python="{html.escape(entry["requires-python"])}"')
        if "yanked" in entry:
            reason = "" if entry["yanked"] is True else str(entry["yanked"])
            attrs.append(f'data-yanked="{html.escape(reason)}"')
        if "core-metadata" in entry:
            meta = entry["core-metadata"]
            value = "true" if meta is True else "sha256=" + meta["sha256"]
            attrs.append(f'data-core-metadata="{value}" data-dist-info-metadata="{value}"')
        lines.append(f"{escaped_stage} <a {' '.join(attrs)}>{html.escape(entry['filename'])}</a><br>")
    return "\n".join(lines).encode("utf-8")


def render_project_list(fmt: str, stagename: str, groups: list[tuple[str, list[str]]]) -> bytes:
    out = io.BytesIO()
    write_project_list(out, fmt, stagename, groups)
    return out.getvalue()


def write_project_list(
    out: BinaryIO, fmt: str, stagename: str, groups: Iterable[tuple[str, Iterable[str]]]
) -> None:
    """
    Write a project list page, one name at a time, so that a list of
    hundreds of thousands of names (an upstream's) never sits in memory.
    """
    if fmt == JSON_V1:
        out.write(b'{"meta":{"api-version":"' + API_VERSION.encode() + b'"},"projects":[')
        separator = b""
        for _, names in groups:
            for name in names:
                out.write(separator + b'{"name":' + json.dumps(name).encode("utf-8") + b"}")
                separator = b","
        out.write(b"]}")
        return
    out.write(_html_head(f"{stagename}: simple list (including inherited indices)").encode("utf-8"))
    for stage, names in groups:
        out.write(f"\n<h2>{html.escape(stage)}</h2>".encode())
        for name in names:
            escaped = html.escape(name)
            out.write(f'\n<a href="{escaped}/">{escaped}</a><br>'.encode())
    out.write(b"\n</body></html>\n")


def content_type_for(fmt: str) -> str:
    if fmt == "text/html":
        return "text/html; charset=utf-8"
    return fmt


def etag_for(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def not_modified(request: IRequest, etag: str) -> bool:
    header = request.getHeader("if-none-match")
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or ("W/" + etag) in tags

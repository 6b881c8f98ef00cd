"""
A fake upstream simple index, served in memory (StubTreq) or on a loopback
port: PEP 691 JSON or HTML only, ETags and 304, X-PyPI-Last-Serial, single
byte ranges of files (or none, on demand), and faults on demand (5xx, a
body cut halfway, a wrong hash, going away).
"""

from __future__ import annotations

import hashlib
import json
import re

import attrs
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

JSON_V1 = "application/vnd.pypi.simple.v1+json"
RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@attrs.define
class Release:
    filename: str
    data: bytes
    requires_python: str | None = None
    yanked: str | None = None
    wrong_hash: bool = False
    #: The size the JSON page announces (PEP 700, with C{sizes}), when it
    #: is not the true one.
    size: int | None = None
    #: The hash the pages give for the file: sha256, or md5 as old indexes.
    hash_name: str = "sha256"
    #: PEP 700's upload-time, given on JSON pages when set.
    upload_time: str | None = None

    @property
    def sha256(self) -> str:
        if self.wrong_hash:
            return hashlib.sha256(b"something else").hexdigest()
        return hashlib.sha256(self.data).hexdigest()

    @property
    def digest(self) -> str:
        """
        The file's hash as the pages give it (C{hash_name}).
        """
        return hashlib.new(self.hash_name, b"something else" if self.wrong_hash else self.data).hexdigest()


class FakeUpstream(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.projects: dict[str, list[Release]] = {}
        self.serials: dict[str, int] = {}
        self.mode = "json"  # or "html"
        self.fail_status: int | None = None
        self.cut_files = False
        #: Serve files in 64 KiB pieces this many seconds apart (needs a
        #: running reactor: real-port tests only).
        self.file_delay: float | None = None
        #: Offer PEP 658 metadata for wheels (advertised with its hash).
        self.metadata = False
        #: Give each file's PEP 700 size in JSON pages.
        self.sizes = False
        #: Honour single C{Range: bytes=...} requests for files (206, or 416
        #: when unsatisfiable); when false, files are always answered whole
        #: with 200, as by a server without range support.
        self.ranges = True
        #: Body bytes sent per file name (HEAD and .metadata not counted).
        self.served: dict[str, int] = {}
        #: The Range header of each file request, None when there was none.
        self.ranges_asked: list[tuple[str, str | None]] = []
        self.requests: list[tuple[str, str]] = []
        #: Never answer (real-port tests: the server's request timeout).
        self.silent = False
        #: For each file trickled (C{file_delay}), one Deferred per answer,
        #: fired when the client dropped the connection before its end.
        self.dropped: dict[str, list[Deferred]] = {}

    def add(self, project: str, *releases: Release, serial: int = 1) -> None:
        self.projects.setdefault(project, []).extend(releases)
        self.serials[project] = serial

    def count(self, kind: str) -> int:
        return sum(1 for method, path in self.requests if path.startswith(kind))

    def render(self, request):
        path = request.path.decode()
        self.requests.append((request.method.decode(), path))
        if self.fail_status is not None:
            request.setResponseCode(self.fail_status)
            return b"upstream is broken\n"
        if self.silent:
            return NOT_DONE_YET
        parts = [p for p in path.split("/") if p]
        if parts == ["simple"]:
            return self._root(request)
        if len(parts) == 2 and parts[0] == "simple":
            return self._page(request, parts[1])
        if len(parts) == 2 and parts[0] == "files":
            return self._file(request, parts[1])
        request.setResponseCode(404)
        return b"not found\n"

    def _root(self, request) -> bytes:
        names = sorted(self.projects)
        if self.mode == "json" and JSON_V1 in (request.getHeader("accept") or ""):
            request.setHeader("Content-Type", JSON_V1)
            projects = [{"name": name} for name in names]
            return json.dumps({"meta": {"api-version": "1.1"}, "projects": projects}).encode()
        request.setHeader("Content-Type", "text/html")
        anchors = "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in names)
        return f"<!DOCTYPE html><html><body>{anchors}</body></html>".encode()

    def _page(self, request, project: str) -> bytes:
        releases = self.projects.get(project)
        if releases is None:
            request.setResponseCode(404)
            return b"no such project\n"
        accept = request.getHeader("accept") or ""
        if self.mode == "json" and JSON_V1 in accept:
            files = []
            for r in releases:
                entry = {
                    "filename": r.filename,
                    "url": f"../../files/{r.filename}",
                    "hashes": {r.hash_name: r.digest},
                }
                if r.requires_python:
                    entry["requires-python"] = r.requires_python
                if r.yanked:
                    entry["yanked"] = r.yanked
                if r.upload_time:
                    entry["upload-time"] = r.upload_time
                if self.sizes:
                    entry["size"] = len(r.data) if r.size is None else r.size
                if self.metadata and r.filename.endswith(".whl"):
                    entry["core-metadata"] = {"sha256": hashlib.sha256(_wheel_metadata(r.data)).hexdigest()}
                files.append(entry)
            body = json.dumps({"meta": {"api-version": "1.1"}, "name": project, "files": files}).encode()
            content_type = JSON_V1
        else:
            anchors = []
            for r in releases:
                attrs_ = f'href="../../files/{r.filename}#{r.hash_name}={r.digest}"'
                if r.requires_python:
                    attrs_ += f' data-requires-python="{r.requires_python.replace(">", "&gt;")}"'
                if r.yanked:
                    attrs_ += f' data-yanked="{r.yanked}"'
                anchors.append(f"<a {attrs_}>{r.filename}</a><br>")
            body = ("<!DOCTYPE html><html><body>" + "\n".join(anchors) + "</body></html>").encode()
            content_type = "text/html"
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        request.setHeader("ETag", etag)
        request.setHeader("X-PyPI-Last-Serial", str(self.serials.get(project, 1)))
        if request.getHeader("if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        request.setHeader("Content-Type", content_type)
        return body

    def _file(self, request, filename: str):
        if filename.endswith(".metadata") and self.metadata:
            for releases in self.projects.values():
                for r in releases:
                    if r.filename == filename[: -len(".metadata")]:
                        return _wheel_metadata(r.data)
        for releases in self.projects.values():
            for r in releases:
                if r.filename == filename:
                    return self._send(request, filename, r.data)
        request.setResponseCode(404)
        return b"no such file\n"

    def _send(self, request, filename: str, data: bytes):
        header = request.getHeader("range")
        self.ranges_asked.append((filename, header))
        if self.ranges:
            request.setHeader("Accept-Ranges", "bytes")
            span = _byte_range(header, len(data)) if header else None
            if span == "unsatisfiable":
                request.setResponseCode(416)
                request.setHeader("Content-Range", f"bytes */{len(data)}")
                return b""
            if span is not None:
                start, stop = span
                request.setResponseCode(206)
                request.setHeader("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
                data = data[start:stop]
        request.setHeader("Content-Length", str(len(data)))
        if request.method == b"HEAD":
            return b""
        if self.file_delay is not None:
            gone: Deferred = Deferred()
            self.dropped.setdefault(filename, []).append(gone)
            request.notifyFinish().addErrback(lambda reason: gone.callback(None))
            self._trickle(request, filename, data, 0)
            return NOT_DONE_YET
        if self.cut_files:
            self._count(filename, len(data) // 2)
            request.write(data[: len(data) // 2])
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        self._count(filename, len(data))
        return data

    def _count(self, filename: str, size: int) -> None:
        self.served[filename] = self.served.get(filename, 0) + size

    def _trickle(self, request, filename: str, data: bytes, offset: int) -> None:
        from twisted.internet import reactor

        if request._disconnected:
            return
        end = len(data) // 2 if self.cut_files else len(data)
        piece = data[offset : min(offset + 65536, end)]
        if piece:
            self._count(filename, len(piece))
            request.write(piece)
        if offset + len(piece) >= end:
            if self.cut_files:
                request.channel.transport.loseConnection()
            else:
                request.finish()
            return
        reactor.callLater(self.file_delay, self._trickle, request, filename, data, offset + len(piece))


def _byte_range(header: str, size: int) -> tuple[int, int] | str | None:
    """
    The span C{[start, stop)} of a single C{bytes=a-b}, C{bytes=a-} or
    C{bytes=-n} range, C{"unsatisfiable"}, or None for a header to ignore
    (several ranges, or not understood), as RFC 9110 allows.
    """
    match = RANGE.fullmatch(header.strip())
    if match is None or match.group() == "bytes=-":
        return None
    first, last = match.groups()
    if not first:
        suffix = int(last)
        return (max(0, size - suffix), size) if suffix and size else "unsatisfiable"
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(size, int(last) + 1) if last else size


def _wheel_metadata(data: bytes) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return wheel.read(name)


class CannedAnswer(Resource):
    """
    Answers every request alike: a status, headers and a body, then the
    end of the answer, or (C{stall}) nothing more, ever.
    """

    isLeaf = True

    def __init__(
        self, body: bytes, *, code: int = 200, headers: dict[bytes, bytes] | None = None, stall: bool = False
    ):
        super().__init__()
        self.body = body
        self.code = code
        self.headers = headers or {}
        self.stall = stall

    def render(self, request):
        request.setResponseCode(self.code)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        if not self.stall:
            return self.body
        request.write(self.body)
        return NOT_DONE_YET

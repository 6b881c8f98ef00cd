"""
A fake upstream simple index, served in memory (StubTreq) or on a loopback
port: PEP 691 JSON or HTML only, ETags and 304, X-PyPI-Last-Serial, and
faults on demand (5xx, a body cut halfway, a wrong hash, going away).
"""

from __future__ import annotations

import hashlib
import json

import attrs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

JSON_V1 = "application/vnd.pypi.simple.v1+json"


@attrs.define
class Release:
    filename: str
    data: bytes
    requires_python: str | None = None
    yanked: str | None = None
    wrong_hash: bool = False

    @property
    def sha256(self) -> str:
        if self.wrong_hash:
            return hashlib.sha256(b"something else").hexdigest()
        return hashlib.sha256(self.data).hexdigest()


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
        self.requests: list[tuple[str, str]] = []

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
                    "hashes": {"sha256": r.sha256},
                }
                if r.requires_python:
                    entry["requires-python"] = r.requires_python
                if r.yanked:
                    entry["yanked"] = r.yanked
                if self.metadata and r.filename.endswith(".whl"):
                    entry["core-metadata"] = {"sha256": hashlib.sha256(_wheel_metadata(r.data)).hexdigest()}
                files.append(entry)
            body = json.dumps({"meta": {"api-version": "1.1"}, "name": project, "files": files}).encode()
            content_type = JSON_V1
        else:
            anchors = []
            for r in releases:
                attrs_ = f'href="../../files/{r.filename}#sha256={r.sha256}"'
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
                    request.setHeader("Content-Length", str(len(r.data)))
                    if request.method == b"HEAD":
                        return b""
                    if self.file_delay is not None:
                        self._trickle(request, r.data, 0)
                        return NOT_DONE_YET
                    if self.cut_files:
                        request.write(r.data[: len(r.data) // 2])
                        request.channel.transport.loseConnection()
                        return NOT_DONE_YET
                    return r.data
        request.setResponseCode(404)
        return b"no such file\n"

    def _trickle(self, request, data: bytes, offset: int) -> None:
        from twisted.internet import reactor

        if request._disconnected:
            return
        end = len(data) // 2 if self.cut_files else len(data)
        piece = data[offset : min(offset + 65536, end)]
        if piece:
            request.write(piece)
        if offset + len(piece) >= end:
            if self.cut_files:
                request.channel.transport.loseConnection()
            else:
                request.finish()
            return
        reactor.callLater(self.file_delay, self._trickle, request, data, offset + len(piece))


def _wheel_metadata(data: bytes) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return wheel.read(name)

"""
A plain PEP 503 index of the old school, for end-to-end tests: answers in
HTTP/1.0 style (no C{Content-Length}, the connection closed at the end of
the body), with no C{Content-Type} header, and links its files relatively
(C{../../pkg/<file>#md5=...} or C{#sha256=...}), as a static directory
served by an old web server does.

This is a helper module, not a test module.  It runs the standard
library's HTTP server in a thread of the test process on an ephemeral
loopback port; the tests change its projects while it runs.
"""

from __future__ import annotations

import hashlib
import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

import attrs


@attrs.define
class LegacyFile:
    filename: str
    data: bytes
    #: C{"md5"} or C{"sha256"}: the hash in the link's fragment.
    hash_name: str = "sha256"
    #: Listed on the page but answered with 404 (a broken upstream file).
    missing: bool = False

    @property
    def fragment(self) -> str:
        return f"{self.hash_name}={hashlib.new(self.hash_name, self.data).hexdigest()}"


class LegacyIndex:
    """
    The projects and files of the index, changed by tests as it runs.
    """

    def __init__(self) -> None:
        self.projects: dict[str, list[LegacyFile]] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()

    def add(self, project: str, *files: LegacyFile) -> None:
        with self._lock:
            self.projects.setdefault(project, []).extend(files)

    def remove(self, project: str) -> None:
        with self._lock:
            self.projects.pop(project, None)

    def answer(self, path: str) -> bytes | None:
        with self._lock:
            self.requests.append(path)
            parts = [unquote(p) for p in path.split("?", 1)[0].split("/") if p]
            if parts == ["simple"]:
                links = "".join(f'<a href="{quote(p)}/">{html.escape(p)}</a>\n' for p in self.projects)
                return f"<html><body>\n{links}</body></html>\n".encode()
            if len(parts) == 2 and parts[0] == "simple":
                files = self.projects.get(parts[1])
                if files is None:
                    return None
                links = "".join(
                    f'<a href="../../pkg/{quote(f.filename)}#{f.fragment}">{html.escape(f.filename)}</a>\n'
                    for f in files
                )
                title = f"<h1>Links for {html.escape(parts[1])}</h1>"
                return f"<html><body>{title}\n{links}</body></html>\n".encode()
            if len(parts) == 2 and parts[0] == "pkg":
                for files in self.projects.values():
                    for f in files:
                        if f.filename == parts[1] and not f.missing:
                            return f.data
            return None


def serve(index: LegacyIndex) -> tuple[ThreadingHTTPServer, str]:
    """
    Serve C{index} on 127.0.0.1; return the server (C{shutdown()} it) and
    the URL of its simple index, without a trailing slash.
    """

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            body = index.answer(self.path)
            if body is None:
                self.send_response_only(404)
                self.end_headers()
                return
            # Nothing but the status line: no Content-Type, no length;
            # the end of the body is the end of the connection.
            self.send_response_only(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/simple"

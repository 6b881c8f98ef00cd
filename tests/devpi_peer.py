"""
Drive a real devpi-server (6.x, from another virtualenv) over HTTP: start
it on a loopback port, talk to its API, upload files, stop it.

Used by the script that makes the devpi-server dump under
C{tests/data/devpi6/} and by C{benchmarks/bench_export.py}, which builds
the same state in devpi-server and in devpi-tx.  Standard library only, so
that it runs under devpi-server's interpreter as well as ours.  Its
C{root/pypi} is never created (C{--no-root-pypi}): nothing here reaches a
public index.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

#: devpi-server's virtualenv on the development machines.
DEFAULT_PEER_BIN = Path(os.environ.get("DEVPI_PEER_BIN", "/work/peers-venv/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HTTPError(Exception):
    def __init__(self, code: int, body: bytes) -> None:
        super().__init__(f"HTTP {code}: {body[:300]!r}")
        self.code = code
        self.body = body


class Peer:
    """
    A devpi-server process on 127.0.0.1 and a small client for its API.
    Also talks to a devpi-tx server (the API is the same).
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.auth: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None

    # -- a devpi-server process ---------------------------------------------

    @classmethod
    def start_devpi(cls, serverdir: Path, bindir: Path = DEFAULT_PEER_BIN, log: Path | None = None) -> Peer:
        """
        Initialise C{serverdir} (root's password C{rootpw}, no root/pypi)
        and start devpi-server on it.
        """
        if not (serverdir / ".nodeinfo").exists():
            subprocess.run(
                [str(bindir / "devpi-init"), "--serverdir", str(serverdir), "--no-root-pypi"]
                + ["--root-passwd", "rootpw"],
                check=True,
                capture_output=True,
            )
        port = free_port()
        peer = cls(f"http://127.0.0.1:{port}")
        out = open(log or serverdir.parent / "devpi-server.log", "ab")  # noqa: SIM115 (kept by the process)
        peer.proc = subprocess.Popen(
            [str(bindir / "devpi-server"), "--serverdir", str(serverdir)]
            + ["--host", "127.0.0.1", "--port", str(port), "--request-timeout", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        peer.wait_ready()
        return peer

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                self.get("/+api")
                return
            except (OSError, HTTPError):
                time.sleep(0.2)
        raise RuntimeError(f"{self.url} did not answer within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- requests --------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict, bytes]:
        all_headers = {"Accept": "application/json", **self.auth, **(headers or {})}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            raise HTTPError(exc.code, exc.read()) from None

    def get(self, path: str) -> dict:
        return json.loads(self.request("GET", path)[2] or b"{}")

    def send(self, method: str, path: str, data: object) -> dict:
        body = json.dumps(data).encode()
        answer = self.request(method, path, body, {"Content-Type": "application/json"})[2]
        return json.loads(answer) if answer else {}

    def login(self, user: str, password: str) -> None:
        self.auth = {}
        result = self.send("POST", "/+login", {"user": user, "password": password})["result"]
        token = base64.b64encode(f"{user}:{result['password']}".encode()).decode()
        self.auth = {"X-Devpi-Auth": token}

    def create_user(self, name: str, password: str, **fields: str) -> None:
        self.send("PUT", f"/{name}", {"password": password, **fields})

    def create_index(self, stage: str, **config: object) -> None:
        self.send("PUT", f"/{stage}", config)

    def upload(
        self,
        stage: str,
        name: str,
        version: str,
        filename: str | None,
        data: bytes,
        action: str = "file_upload",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        fields = [
            (":action", action),
            ("name", name),
            ("version", version),
            ("metadata_version", "2.1"),
            ("summary", f"test package {name}"),
        ] + list(extra or [])
        content_type, body = multipart(fields, None if filename is None else (filename, data))
        self.request("POST", f"/{stage}/", body, {"Content-Type": content_type})

    def toxresult(self, stage: str, relpath: str, result: dict) -> str:
        """
        Post a tox result for the release file at C{relpath} (its path
        below the stage's C{+f/}); return devpi's answer (the result's
        path).
        """
        return self.send("POST", f"/{stage}/+f/{relpath}", result)["result"]

    def file_paths(self, stage: str, project: str) -> dict[str, str]:
        """
        The basenames of a project's release files and their C{+f} paths
        below the stage.
        """
        paths = {}
        for data in self.get(f"/{stage}/{project}")["result"].values():
            for link in data.get("+links", []):
                if link.get("rel") == "releasefile":
                    href = link["href"].split("#")[0]
                    paths[href.rsplit("/", 1)[1]] = href.split(f"/{stage}/+f/", 1)[1]
        return paths


def multipart(fields: list[tuple[str, str]], file: tuple[str, bytes] | None) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    if file is not None:
        filename, data = file
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

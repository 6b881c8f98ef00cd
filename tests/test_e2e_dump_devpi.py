"""
devpi-tx's dump is devpi-export's format: devpi-server 6.20.3's
devpi-import reads it, and the devpi-server it made serves the same
users, indexes and files (names and hashes on each simple page), and
logs in with the passwords devpi-tx hashed.

Needs devpi-server in another virtualenv (C{DEVPI_PEER_BIN}, by default
C{/work/peers-venv/bin}); skipped without it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest

from devpi_tx.cli.main import main

from .conftest import Client
from .devpi_peer import DEFAULT_PEER_BIN, Peer
from .test_dump import JSON_PAGE, make_context, populate

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (DEFAULT_PEER_BIN / "devpi-import").exists(), reason="no devpi-server to compare with"
    ),
]


def test_devpi_import_reads_our_dump(tmp_path, config, capsys):
    context = make_context(config)
    client = Client(context)
    try:
        populate(client)
        ours = {}
        for stage in ("alice/dev", "alice/prod", "bob/stuff"):
            for project in client.get(f"/{stage}").json["result"]["projects"]:
                files = client.get(f"/{stage}/+simple/{project}/", accept=JSON_PAGE).json["files"]
                ours[f"{stage}/{project}"] = sorted({(f["filename"], f["hashes"]["sha256"]) for f in files})
        users = client.get("/").json["result"]
    finally:
        context.close()
    dump = tmp_path / "dump"
    assert main(["export", "--serverdir", config.serverdir, str(dump)]) == 0
    capsys.readouterr()
    serverdir = tmp_path / "devpi"
    subprocess.run(
        [str(DEFAULT_PEER_BIN / "devpi-import"), "--serverdir", str(serverdir), "--no-root-pypi", str(dump)],
        check=True,
        capture_output=True,
    )
    peer = Peer.start_devpi(serverdir)
    try:
        theirs_users = peer.get("/")["result"]
        assert set(theirs_users) == set(users)
        for name in ("alice", "bob"):
            for key in ("email", "description", "custom_data", "created"):
                assert theirs_users[name].get(key) == users[name].get(key), (name, key)
        for page, files in ours.items():
            stage, project = page.rsplit("/", 1)
            html = peer.request("GET", f"/{stage}/+simple/{project}/", headers={"Accept": "text/html"})[
                2
            ].decode()
            names = re.findall(r">([^<]+)</a>", html)
            hashes = re.findall(r"#sha256=([0-9a-f]{64})", html)
            assert sorted(set(zip(names, hashes, strict=True))) == files, page
        link = peer.get("/alice/dev/pkg-a/1.1")["result"]["+links"]
        tox = [x for x in link if x["rel"] == "toxresult"]
        assert len(tox) == 1
        body = peer.request("GET", tox[0]["href"].split(peer.url, 1)[1], headers={"Accept": "*/*"})[2]
        assert json.loads(body) == {"testenvs": {"py311": {}}}
        assert hashlib.sha256(body).hexdigest() == tox[0]["hashes"]["sha256"]
        peer.login("alice", "alicepw")
        peer.login("bob", "bobpw")
    finally:
        peer.stop()

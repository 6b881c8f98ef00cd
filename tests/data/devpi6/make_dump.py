"""
Make the devpi-server 6.x dump under C{tests/data/devpi6/dump/} that
C{tests/test_migration.py} imports with C{devpi-tx import --from-devpi}.

Run with devpi-server's interpreter (it needs only the standard library
and the repository on C{sys.path})::

    /work/peers-venv/bin/python tests/data/devpi6/make_dump.py

It initialises a throwaway server directory (C{--no-root-pypi}), starts
devpi-server on a loopback port, creates users with passwords, indexes
with bases, ACLs, volatile settings and a mirror (whose upstream is a
loopback port nobody listens on: it is never asked), uploads a few wheels
and sdists, overwrites one, registers a version without files, pushes a
release between indexes, uploads a documentation zip and a tox result,
stops the server and runs C{devpi-export}.  The passwords are written to
C{passwords.json} next to the dump, and what devpi-server showed (users,
indexes, the files of each simple page) to C{expected.json}, for the test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent.parent))

from tests.devpi_peer import DEFAULT_PEER_BIN, Peer  # noqa: E402
from tests.distfiles import make_doczip, make_sdist, make_wheel  # noqa: E402

PASSWORDS = {"root": "rootpw", "alice": "alicepw", "bob": "bob's pw ü"}

TOXRESULT = {
    "reportversion": "1",
    "toxversion": "4.11.3",
    "platform": "linux",
    "host": "builder",
    "testenvs": {
        "py311": {
            "name": "py311",
            "result": {"success": True, "exit_code": 0, "duration": 0.5},
            "test": [{"command": ["pytest"], "output": "1 passed", "err": "", "retcode": 0}],
        }
    },
}


def build(peer: Peer) -> None:
    peer.login("root", PASSWORDS["root"])
    peer.create_index(
        "root/mirror",
        type="mirror",
        mirror_url="http://127.0.0.1:9/simple/",
        volatile=False,
        title="A mirror",
        mirror_cache_expiry=600,
    )
    peer.create_user("alice", PASSWORDS["alice"], email="alice@example.com", title="Alice")
    peer.create_user("bob", PASSWORDS["bob"], description="Bob the builder")
    peer.login("alice", PASSWORDS["alice"])
    peer.create_index(
        "alice/base", volatile=False, acl_upload=["alice", "bob"], title="Base", description="released"
    )
    peer.create_index(
        "alice/dev",
        bases=["alice/base", "root/mirror"],
        volatile=True,
        mirror_whitelist=["hello"],
        acl_toxresult_upload=[":AUTHENTICATED:"],
    )
    for version in ("1.0", "1.1"):
        peer.upload("alice/base", "pkga", version, *make_wheel("pkga", version))
    peer.upload("alice/base", "pkga", "1.0", *make_sdist("pkga", "1.0"))
    peer.upload(
        "alice/dev",
        "pkgb",
        "2.0",
        *make_sdist("pkgb", "2.0"),
        extra=[("requires_python", ">=3.8"), ("classifiers", "Programming Language :: Python")],
    )
    # An overwrite on the volatile index (its log shows it).
    peer.upload("alice/dev", "pkgb", "2.0", "pkgb-2.0.tar.gz", make_sdist("pkgb", "2.0")[1] + b"")
    peer.upload("alice/dev", "pkgb", "2.0", "pkgb-2.0.zip", make_doczip(), action="doc_upload")
    peer.upload("alice/dev", "My.Project", "0.1", *make_wheel("My.Project", "0.1"))
    # A version without files.
    peer.upload("alice/dev", "pkgc", "3.0", None, b"", action="submit")
    peer.send("PUSH", "/alice/base", {"name": "pkga", "version": "1.1", "targetindex": "alice/dev"})
    peer.login("bob", PASSWORDS["bob"])
    peer.upload("alice/base", "pkga", "1.2", *make_wheel("pkga", "1.2"))
    peer.create_index("bob/empty", acl_upload=[":ANONYMOUS:"], mirror_whitelist_inheritance="union")
    path = peer.file_paths("alice/dev", "pkgb")["pkgb-2.0.tar.gz"]
    peer.toxresult("alice/dev", path, TOXRESULT)


def record(peer: Peer) -> dict:
    """
    What devpi-server shows of the state, for the test to compare with:
    users, index configurations and project lists, and each project's
    files on its simple page (name and sha256; devpi 6 has no JSON page).
    """
    peer.auth = {}
    shown: dict = {"users": peer.get("/")["result"], "indexes": {}, "pages": {}}
    for user, data in shown["users"].items():
        for index in data.get("indexes", {}):
            stage = f"{user}/{index}"
            result = peer.get(f"/{stage}")["result"]
            shown["indexes"][stage] = result
            if result["type"] == "mirror":
                continue
            for project in result.get("projects", []):
                page = peer.request("GET", f"/{stage}/+simple/{project}/", headers={"Accept": "text/html"})[2]
                shown["pages"][f"{stage}/{project}"] = (
                    sorted(re.findall(r">([^<]+)</a>", page.decode())),
                    sorted(re.findall(r"#sha256=([0-9a-f]{64})", page.decode())),
                )
    return shown


def main() -> int:
    bindir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PEER_BIN
    target = HERE / "dump"
    with tempfile.TemporaryDirectory() as tmp:
        serverdir = Path(tmp) / "server"
        peer = Peer.start_devpi(serverdir, bindir)
        try:
            build(peer)
            expected = record(peer)
        finally:
            peer.stop()
        dump = Path(tmp) / "dump"
        subprocess.run([str(bindir / "devpi-export"), "--serverdir", str(serverdir), str(dump)], check=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(dump, target)
    (HERE / "passwords.json").write_text(json.dumps(PASSWORDS, indent=2) + "\n")
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    version = subprocess.run(
        [str(bindir / "devpi-server"), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"wrote {target} with devpi-server {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""
C{devpi-tx export} and C{devpi-tx import}: a server's state, exported and
imported into a fresh server directory, answers every page, JSON view and
file as the exported server did (upload times, logs, yanked files, tox
results, docs and deleted files included): the two states are the same,
key for key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import attrs
import pytest
from treq.testing import StubTreq
from twisted.internet import reactor

from devpi_tx.cli.main import main
from devpi_tx.dump.importer import link_records
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.model import releases
from devpi_tx.service import build_context
from devpi_tx.storage.sqlite import SQLiteStorage

from .conftest import Client, synchronous, synchronous_passwords
from .distfiles import make_doczip, make_sdist, make_wheel, multipart, upload_form
from .fakeupstream import FakeUpstream

#: Headers that differ between two servers whatever their state.
VOLATILE_HEADERS = {
    "date",
    "x-devpi-serial",
    "x-devpi-uuid",
    "x-devpi-master-uuid",
    "x-devpi-primary-uuid",
    "server",
}
JSON_PAGE = "application/vnd.pypi.simple.v1+json"


def make_context(config):
    return build_context(
        config,
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(FakeUpstream()), reactor),
        reactor=reactor,
    )


def upload(client, auth, stage, name, version, filename, data, **kw):
    content_type, body = upload_form(name, version, filename, data, **kw)
    answer = client.request("POST", f"/{stage}/", raw=body, headers={"Content-Type": content_type, **auth})
    assert answer.code == 200, answer.body
    return "/{}/+f/{}/{}/{}".format(
        stage, *(lambda h: (h[:3], h[3:16]))(hashlib.sha256(data).hexdigest()), filename
    )


def populate(client: Client) -> None:
    """
    A state with something of every kind the export carries.
    """
    root = client.login("root", "rootpw")
    assert client.request("PUT", "/alice", {"password": "alicepw", "email": "a@example.com"}).code == 201
    alice = client.login("alice", "alicepw")
    bob = {"password": "bobpw", "description": "Bob", "custom_data": {"team": ["x", 1]}}
    assert client.request("PUT", "/bob", bob, headers=root).code == 201
    client.request("PUT", "/alice/dev", {"bases": "root/pypi", "mirror_whitelist": "pkg-a"}, headers=alice)
    client.request(
        "PUT", "/alice/prod", {"bases": "alice/dev", "volatile": False, "title": "P"}, headers=alice
    )
    client.request("PUT", "/bob/stuff", {"acl_upload": ":ANONYMOUS:", "custom_data": "c"}, headers=root)
    for version in ("1.0", "1.1", "2.0.dev1"):
        upload(
            client,
            alice,
            "alice/dev",
            "pkg-a",
            version,
            *make_wheel("pkg-a", version, requires_python=">=3.8"),
        )
        upload(client, alice, "alice/dev", "pkg-a", version, *make_sdist("pkg-a", version))
    # An overwrite, a yanked version, a deleted file (410), attestations.
    upload(client, alice, "alice/dev", "pkg-a", "1.0", *make_wheel("pkg-a", "1.0", payload=b"again"))
    assert client.request("PATCH", "/alice/dev/pkg-a/1.1", {"yanked": "broken"}, headers=alice).code == 200
    gone = upload(client, alice, "alice/dev", "pkg-a", "2.0.dev1", "pkg_a-2.0.dev1.zip", b"zip-ish")
    assert client.request("DELETE", gone, headers=alice).code == 200
    extra = [("attestations", json.dumps([{"version": 1, "envelope": {}}]))]
    upload(client, alice, "alice/prod", "Pkg.B", "0.1", *make_wheel("Pkg.B", "0.1"), extra=extra)
    # Documentation, a tox result, a version without files, a deleted
    # version.
    content_type, body = upload_form("pkg-a", "1.0", "pkg-a-1.0.zip", make_doczip(), action="doc_upload")
    client.request("POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **alice})
    wheel = make_wheel("pkg-a", "1.1")
    path = upload(client, alice, "alice/dev", "pkg-a", "1.1", *wheel)  # identical: no change
    assert client.request("POST", path, {"testenvs": {"py311": {}}}).code == 200
    content_type, body = multipart([(":action", "submit"), ("name", "pkg-c"), ("version", "3.0")])
    client.request("POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **alice})
    upload(client, {}, "bob/stuff", "lonely", "1.0", *make_sdist("lonely", "1.0"))
    assert client.request("DELETE", "/bob/stuff/lonely/1.0", headers=root).code == 200
    # The same file in two indexes (one blob, two links): a push.
    push = {"name": "pkg-a", "version": "1.0", "targetindex": "bob/stuff"}
    assert client.request("POST", "/alice/dev", push, headers=root).code == 200


def snapshot(client: Client) -> dict[str, tuple]:
    """
    Every page, JSON view and file of the private indexes, by URL: status,
    headers that do not differ between two servers, body.
    """
    answers: dict[str, tuple] = {}

    def get(path: str, accept: str | None = "application/json") -> object:
        answer = client.get(path, accept=accept)
        headers = {
            name.decode().lower(): values
            for name, values in answer.headers.getAllRawHeaders()
            if name.decode().lower() not in VOLATILE_HEADERS
        }
        answers[f"{path} [{accept}]"] = (answer.code, sorted(headers.items()), answer.body)
        return answer

    users = get("/").json["result"]
    for user, record in users.items():
        get(f"/{user}")
        for index in record["indexes"]:
            stage = f"{user}/{index}"
            projects = get(f"/{stage}").json["result"].get("projects", [])
            if record["indexes"][index]["type"] == "mirror":
                continue
            get(f"/{stage}/+simple/", "text/html")
            get(f"/{stage}/+simple/", JSON_PAGE)
            for project in projects:
                get(f"/{stage}/+simple/{project}/", "text/html")
                get(f"/{stage}/+simple/{project}/", JSON_PAGE)
                for version, data in get(f"/{stage}/{project}").json["result"].items():
                    get(f"/{stage}/{project}/{version}")
                    for link in data["+links"]:
                        path = link["href"].split("3141", 1)[1]
                        get(path, None)
                        get(path)  # the file's JSON
                        if path.endswith(".whl"):
                            get(path + ".metadata", None)
    return answers


def test_round_trip(tmp_path, config, capsys):
    context = make_context(config)
    try:
        populate(Client(context))
    finally:
        context.close()
    dump = tmp_path / "dump"
    assert main(["export", "--serverdir", config.serverdir, str(dump)]) == 0
    exported = capsys.readouterr().out
    assert "exported 3 users, 4 indexes, 4 projects, 6 versions, 12 files" in exported, exported
    copy = attrs.evolve(config, serverdir=str(tmp_path / "copy"))
    assert main(["import", "--serverdir", copy.serverdir, str(dump)]) == 0
    imported = capsys.readouterr().out
    assert "imported 3 users, 4 indexes, 4 projects, 6 versions, 12 files" in imported, imported
    pages = {}
    for which in (config, copy):
        context = make_context(which)
        try:
            pages[which.serverdir] = snapshot(Client(context))
        finally:
            context.close()
    before, after = pages[config.serverdir], pages[copy.serverdir]
    assert len(before) > 60
    assert before.keys() == after.keys()
    for url in before:
        assert before[url] == after[url], url
    # No page links the deleted file, which answers 410 in both.
    assert not any("pkg_a-2.0.dev1.zip" in url for url in before)
    dataindex = json.loads((dump / "dataindex.json").read_text())
    (path,) = [p for p in dataindex["indexes"]["alice/dev"]["devpi_tx"]["gone"] if "2.0.dev1.zip" in p]
    for which in (config, copy):
        context = make_context(which)
        try:
            client = Client(context)
            assert client.get("/" + path).code == 410
            assert client.login("bob", "bobpw")
        finally:
            context.close()


def test_same_blob_counts_and_files(tmp_path, config, capsys):
    context = make_context(config)
    try:
        populate(Client(context))
    finally:
        context.close()
    dump = tmp_path / "dump"
    main(["export", "--serverdir", config.serverdir, str(dump)])
    copy = tmp_path / "copy"
    main(["import", "--serverdir", str(copy), str(dump)])
    capsys.readouterr()
    states = []
    for serverdir in (config.serverdir, str(copy)):
        storage = SQLiteStorage(os.path.join(serverdir, ".sqlite"))
        try:
            states.append(
                {key: storage.get(key) for key in storage.keys("") if not key.startswith("mirror/")}
            )
        finally:
            storage.close()
    assert states[0] == states[1]
    assert any(key.startswith("gone/bob/stuff/") for key in states[0])
    blobs = {key[len("blob/") :] for key in states[0] if key.startswith("blob/")}
    for digest in blobs:
        with open(os.path.join(copy, "+files", digest[:3], digest[3:]), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest
    assert main(["fsck", "--serverdir", str(copy)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no problems found"


def test_link_records_are_what_add_file_writes(tmp_path):
    """
    The importer writes links as keys; the records must keep the shape
    C{releases.add_file} gives them (a change there shows here).
    """
    storage = SQLiteStorage(str(tmp_path / "db"))
    sha = "ab" * 32
    with storage.transaction() as tx:
        _, link, _ = releases.add_file(
            tx,
            "u/i",
            True,
            {"name": "Pkg.A", "version": "1.0"},
            rel="releasefile",
            basename="pkg_a-1.0-py3-none-any.whl",
            sha256=sha,
            size=3,
            who="u",
            extra={"core_metadata_sha256": "cd" * 32},
        )
    link_key, written, file_key, entry = link_records("u/i", "Pkg.A", "1.0", link)
    assert storage.get(link_key) == written
    assert storage.get(file_key) == entry
    storage.close()


def test_hard_links(tmp_path, config, capsys):
    context = make_context(config)
    try:
        populate(Client(context))
    finally:
        context.close()
    dump = tmp_path / "dump"
    assert main(["export", "--hard-links", "--serverdir", config.serverdir, str(dump)]) == 0
    copy = tmp_path / "copy"
    assert main(["import", "--hard-links", "--serverdir", str(copy), str(dump)]) == 0
    capsys.readouterr()
    dataindex = json.loads((dump / "dataindex.json").read_text())
    for desc in dataindex["indexes"]["alice/dev"]["files"]:
        digest = desc["entrymapping"]["hashes"]["sha256"]
        dumped = os.stat(dump / desc["relpath"])
        for serverdir in (config.serverdir, str(copy)):
            stored = os.stat(os.path.join(serverdir, "+files", digest[:3], digest[3:]))
            assert (stored.st_ino, stored.st_dev) == (dumped.st_ino, dumped.st_dev)


def test_progress_lines_without_a_terminal(tmp_path, config, capsys):
    context = make_context(config)
    try:
        populate(Client(context))
    finally:
        context.close()
    main(["export", "--serverdir", config.serverdir, str(tmp_path / "dump")])
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.startswith("export: ")]
    assert lines[-1].startswith("export: 12/12 files, ")
    assert all(re.match(r"export: \d+/12 files, [\d.]+ (B|KB|MB)/[\d.]+ (B|KB|MB)$", line) for line in lines)


@pytest.mark.parametrize("readable_by_devpi", [True])
def test_the_dump_is_devpi_exports_format(tmp_path, config, capsys, readable_by_devpi):
    """
    The keys devpi-import reads are there, in its shapes.
    """
    context = make_context(config)
    try:
        populate(Client(context))
    finally:
        context.close()
    main(["export", "--serverdir", config.serverdir, str(tmp_path / "dump")])
    capsys.readouterr()
    data = json.loads((tmp_path / "dump" / "dataindex.json").read_text())
    assert data["dumpversion"] == "2"
    assert data["users"]["alice"]["pwhash"].startswith("$argon2")
    assert "indexes" not in data["users"]["alice"]
    assert set(data["indexes"]["root/pypi"]) == {"indexconfig"}  # mirrors: their config
    files = data["indexes"]["alice/dev"]["files"]
    kinds = {desc["type"] for desc in files}
    assert kinds == {"releasefile", "doczip", "toxresult"}
    for desc in files:
        assert (tmp_path / "dump" / desc["relpath"]).is_file()
        assert set(desc["entrymapping"]) == {"last_modified", "hash_spec", "hashes", "project", "version"}
        if desc["type"] == "releasefile":
            project, version, basename = desc["relpath"].split("/")[2:]
            assert (project, version) == (desc["projectname"], desc["version"])
        if desc["type"] == "toxresult":
            assert desc["for_entrypath"].startswith("alice/dev/+f/")
            assert desc["relpath"].split("/")[3].startswith("sha256=")

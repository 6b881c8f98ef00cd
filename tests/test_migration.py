"""
Migration from devpi-server: C{devpi-tx import --from-devpi} of the dump
devpi-server 6.20.3's devpi-export made (C{tests/data/devpi6/}, with the
script that made it and what devpi-server showed of that state).  The
imported server shows the same users, indexes, pages and files, and the
old passwords log in.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from devpi_tx.cli.main import main
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.service import build_context

from .conftest import Client, result_of, synchronous, synchronous_passwords
from .fakeupstream import FakeUpstream

DATA = Path(__file__).parent / "data" / "devpi6"
DUMP = DATA / "dump"
EXPECTED = json.loads((DATA / "expected.json").read_text())
PASSWORDS = json.loads((DATA / "passwords.json").read_text())


@pytest.fixture
def migrated(config, capsys):
    """
    A client of a server whose directory was made by importing the devpi
    dump, and what the import printed.
    """
    assert main(["import", "--serverdir", config.serverdir, "--from-devpi", str(DUMP)]) == 0
    printed = capsys.readouterr().out
    context = build_context(
        config,
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(FakeUpstream()), reactor),
        reactor=reactor,
    )
    try:
        yield Client(context), printed
    finally:
        context.close()


def test_a_devpi_dump_needs_from_devpi(config, capsys):
    assert main(["import", "--serverdir", config.serverdir, str(DUMP)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"devpi-tx import: error: {DUMP} was made by devpi-server 6.20.3: import it with --from-devpi"
    )


def test_users_and_indexes_are_devpis(migrated):
    client, printed = migrated
    assert "imported 3 users, 4 indexes, 5 projects, 7 versions, 9 files" in printed
    users = client.get("/").json["result"]
    assert users == EXPECTED["users"]
    for stage, shown in EXPECTED["indexes"].items():
        assert client.get(f"/{stage}").json["result"] == shown, stage


def test_pages_and_files_are_devpis(migrated):
    client, _ = migrated
    dataindex = json.loads((DUMP / "dataindex.json").read_text())
    dumped = {
        desc["entrymapping"]["hashes"]["sha256"]: DUMP / desc["relpath"]
        for index in dataindex["indexes"].values()
        for desc in index.get("files", [])
    }
    for page, (names, hashes) in EXPECTED["pages"].items():
        stage, project = page.rsplit("/", 1)
        answer = client.get(f"/{stage}/+simple/{project}/", accept="text/html")
        assert answer.code == 200, page
        body = answer.body.decode()
        # devpi lists a file name once, from the first stage of the chain
        # that has it; devpi-tx lists a release pushed from a base in both
        # stages (alice/dev's pkga 1.1), hence sets: a difference of the
        # simple page, not of the import.
        assert sorted(set(re.findall(r">([^<]+)</a>", body))) == names, page
        assert sorted(set(re.findall(r"#sha256=([0-9a-f]{64})", body))) == hashes, page
        for href in re.findall(r'href="([^"#]+)', body):
            url = f"/{stage}/+simple/{project}/{href}"
            parts: list[str] = []
            for part in url.split("/"):
                if part == "..":
                    parts.pop()
                elif part not in ("", "."):
                    parts.append(part)
            data = client.get("/" + "/".join(parts), accept="*/*").body
            sha256 = hashlib.sha256(data).hexdigest()
            assert dumped[sha256].read_bytes() == data


def test_docs_tox_results_and_logs_are_kept(migrated):
    client, _ = migrated
    links = client.get("/alice/dev/pkgb/2.0").json["result"]["+links"]
    by_rel = {link["rel"]: link for link in links}
    assert set(by_rel) == {"releasefile", "doczip", "toxresult"}
    release = by_rel["releasefile"]
    assert [entry["what"] for entry in release["log"]] == ["overwrite", "upload"]
    assert release["log"][1]["who"] == "alice"
    tox = by_rel["toxresult"]
    assert tox["for_href"] == release["href"]
    assert tox["log"][0]["who"] == "bob"
    result = client.get(tox["href"].split("3141", 1)[1], accept="*/*")
    assert json.loads(result.body)["testenvs"]["py311"]["test"][0]["output"] == "1 passed"
    doc = client.get(by_rel["doczip"]["href"].split("3141", 1)[1], accept="*/*")
    assert doc.body[:2] == b"PK"
    pushed = client.get("/alice/dev/pkga/1.1").json["result"]["+links"][0]
    assert [entry["what"] for entry in pushed["log"]] == ["upload", "push"]
    # Upload times come from the dump, not from the import.
    page = client.get("/alice/base/+simple/pkga/", accept="application/vnd.pypi.simple.v1+json").json
    dumped_times = {
        desc["relpath"].rsplit("/", 1)[1]: desc["entrymapping"]["last_modified"]
        for desc in json.loads((DUMP / "dataindex.json").read_text())["indexes"]["alice/base"]["files"]
    }
    for entry in page["files"]:
        stamp = entry["upload-time"]  # 2026-12-07T01:37:22Z
        assert stamp[11:19] in dumped_times[entry["filename"]]


def test_wheels_get_core_metadata(migrated):
    client, _ = migrated
    page = client.get("/alice/base/+simple/pkga/", accept="application/vnd.pypi.simple.v1+json").json
    wheel = next(f for f in page["files"] if f["filename"] == "pkga-1.2-py3-none-any.whl")
    meta = client.get(f"/alice/base/+f/{wheel['url'].split('/+f/', 1)[1]}.metadata", accept="*/*")
    assert meta.code == 200
    assert hashlib.sha256(meta.body).hexdigest() == wheel["core-metadata"]["sha256"]
    assert b"Name: pkga" in meta.body


def test_old_passwords_log_in(migrated):
    client, _ = migrated
    for user, password in PASSWORDS.items():
        auth = client.login(user, password)
        assert client.get("/+api", headers=auth).json["result"]["authstatus"][:2] == ["ok", user]
    answer = client.request("POST", "/+login", {"user": "alice", "password": "wrong"})
    assert answer.code == 401
    # And the imported users can write: alice uploads to her index.
    auth = client.login("alice", PASSWORDS["alice"])
    assert client.request("PATCH", "/alice/dev", ["title=Dev"], headers=auth).code == 200


@pytest.mark.parametrize("kind", ["I", "ID", "D"])
def test_argon2_hashes_of_other_kinds_and_costs_verify(kind):
    """
    devpi hashes with passlib's argon2 (argon2id, m=65536, t=3, p=4 in
    6.x: devpi-tx's own parameters, so nothing needs rehashing); hashes
    of other argon2 variants and costs, as other passlib versions wrote
    them, verify as they are.
    """
    from argon2 import low_level

    from devpi_tx.auth.passwords import PasswordChecker

    pwhash = low_level.hash_secret(
        b"secret",
        b"0123456789abcdef",
        time_cost=2,
        memory_cost=512,
        parallelism=2,
        hash_len=32,
        type=getattr(low_level.Type, kind),
    ).decode()
    checker = synchronous_passwords()
    assert isinstance(checker, PasswordChecker)
    assert result_of(Deferred.fromCoroutine(checker.verify("u", pwhash, "secret"))) is True
    assert result_of(Deferred.fromCoroutine(checker.verify("u", pwhash, "wrong"))) is False

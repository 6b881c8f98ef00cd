"""
End to end: the real devpi-client (7.3) drives a devpi-tx server running as
a subprocess, through users, logins, passwords and indexes.

One server and one client directory serve the whole module; the tests run
in file order and each builds on the state the previous ones left (as a
user's session would), so run the module as a whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import DevpiClient, ServerProcess, start_server

pytestmark = pytest.mark.e2e

ALICE_PW = "alicepw"
#: At least 8 characters, so that `devpi passwd` does not ask for a
#: confirmation.
ALICE_NEW_PW = "alice-new-pw"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("e2e-server"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def devpi(tmp_path_factory: pytest.TempPathFactory, server: ServerProcess) -> DevpiClient:
    return DevpiClient(Path(tmp_path_factory.mktemp("e2e-client")))


def authstatus(devpi: DevpiClient) -> list:
    """
    What the server thinks of the client's credentials.
    """
    result = devpi.ok("getjson", "/+api").json()
    assert result["type"] == "apiconfig"
    return result["result"]["authstatus"]


def test_use_and_login_root(devpi: DevpiClient, server: ServerProcess) -> None:
    out = devpi.ok("use", server.url).output
    assert f"using server: {server.url}/" in out
    assert "not logged in" in out

    api = devpi.ok("getjson", "/+api").json()["result"]
    assert api["login"] == server.url + "/+login"
    assert "server-keyvalue-parsing" in api["features"]
    assert api["authstatus"] == ["noauth", "", []]

    # root has an empty password after the first start.
    out = devpi.ok("login", "root", "--password", "").output
    assert "logged in 'root'" in out
    assert "credentials valid for 10.00 hours" in out
    assert authstatus(devpi) == ["ok", "root", []]


def test_user_create_login_logoff_modify(devpi: DevpiClient) -> None:
    out = devpi.ok("user", "-c", "alice", f"password={ALICE_PW}", "email=alice@example.com").output
    assert "user created: alice" in out

    # Creating her again is a conflict.
    result = devpi.fails("user", "-c", "alice", f"password={ALICE_PW}")
    assert "409" in result.output
    assert "user already exists" in result.output

    result = devpi.fails("login", "alice", "--password", "wrong")
    assert "401" in result.output
    assert "user 'alice' could not be authenticated" in result.output
    # A failed login leaves the previous login in place.
    assert authstatus(devpi) == ["ok", "root", []]

    out = devpi.ok("login", "alice", "--password", ALICE_PW).output
    assert "logged in 'alice'" in out
    assert authstatus(devpi) == ["ok", "alice", []]

    out = devpi.ok("logoff").output
    assert "login information deleted" in out
    assert authstatus(devpi) == ["noauth", "", []]

    devpi.ok("login", "alice", "--password", ALICE_PW)
    out = devpi.ok("user", "-m", "alice", "email=alice@example.org", "title=Alice").output
    assert "user modified: alice" in out
    user = devpi.ok("getjson", "/alice").json()
    assert user["type"] == "userconfig"
    assert user["result"]["email"] == "alice@example.org"
    assert user["result"]["title"] == "Alice"
    assert user["result"]["username"] == "alice"
    assert "password" not in user["result"]
    assert "pwhash" not in user["result"]

    # `devpi user alice` shows the record.
    out = devpi.ok("user", "alice").output
    assert "email=alice@example.org" in out

    names = devpi.ok("user", "-l").stdout.split()
    assert names == ["alice", "root"]


def test_passwd(devpi: DevpiClient) -> None:
    result = devpi.run_interactive(
        "passwd",
        dialogue=[
            ("new password for user alice:", ALICE_NEW_PW),
            ("repeat new password for user alice:", ALICE_NEW_PW),
        ],
    )
    assert result.returncode == 0, result
    assert "user modified: alice" in result.output
    # getpass turned echo off: the password never shows on the terminal.
    assert ALICE_NEW_PW not in result.output

    result = devpi.fails("login", "alice", "--password", ALICE_PW)
    assert "401" in result.output
    out = devpi.ok("login", "alice", "--password", ALICE_NEW_PW).output
    assert "logged in 'alice'" in out
    assert authstatus(devpi) == ["ok", "alice", []]


def test_index_create_modify_list(devpi: DevpiClient, server: ServerProcess) -> None:
    out = devpi.ok("index", "-c", "dev", "bases=root/pypi", "acl_upload=alice").output
    assert f"{server.url}/alice/dev?no_projects=:" in out
    assert "type=stage" in out
    assert "bases=root/pypi" in out
    assert "volatile=True" in out
    assert "acl_upload=alice" in out

    out = devpi.ok("index", "-c", "staging", "bases=alice/dev").output
    assert "bases=alice/dev" in out

    # An existing index is a conflict.
    result = devpi.fails("index", "-c", "dev")
    assert "409" in result.output

    assert devpi.ok("index", "-l").stdout.split() == ["alice/dev", "alice/staging"]

    out = devpi.ok("index", "alice/dev", "title=Dev").output
    assert "title=Dev" in out
    out = devpi.ok("index", "alice/dev", "acl_upload+=bob").output
    assert "acl_upload=alice,bob" in out
    # Adding a value already there is a no-op.
    out = devpi.ok("index", "alice/dev", "acl_upload+=bob").output
    assert "acl_upload=alice,bob" in out

    data = devpi.ok("getjson", "/alice/dev").json()
    assert data["type"] == "indexconfig"
    config = data["result"]
    assert config == {
        "type": "stage",
        "bases": ["root/pypi"],
        "volatile": True,
        "acl_upload": ["alice", "bob"],
        "acl_toxresult_upload": [":ANONYMOUS:"],
        "mirror_whitelist": [],
        "mirror_whitelist_inheritance": "intersection",
        "title": "Dev",
        "projects": [],
    }

    # `devpi use` of the index reads its /+api.
    out = devpi.ok("use", "alice/dev").output
    assert f"current devpi index: {server.url}/alice/dev (logged in as alice)" in out
    api = devpi.ok("getjson", "/alice/dev/+api").json()["result"]
    assert api["index"] == f"{server.url}/alice/dev"
    assert api["simpleindex"] == f"{server.url}/alice/dev/+simple/"
    assert api["pypisubmit"] == f"{server.url}/alice/dev/"


def test_index_bad_input(devpi: DevpiClient) -> None:
    before = devpi.ok("getjson", "/alice/dev").json()["result"]

    result = devpi.fails("index", "alice/dev", "volatile=maybe")
    assert "400" in result.output
    assert "Unknown boolean value 'maybe'." in result.output

    result = devpi.fails("index", "-c", "bad", "bases=alice/nope")
    assert "400" in result.output
    assert "base index 'alice/nope' does not exist" in result.output
    assert devpi.run("getjson", "/alice/bad").returncode != 0

    # alice/staging has alice/dev as base: the reverse would be a loop.
    result = devpi.fails("index", "alice/dev", "bases=alice/staging")
    assert "400" in result.output
    assert "loop" in result.output
    result = devpi.fails("index", "alice/dev", "bases=alice/dev")
    assert "400" in result.output

    result = devpi.fails("index", "alice/dev", "bogus=1")
    assert "400" in result.output
    assert "bogus=1" in result.output

    result = devpi.fails("index", "alice/dev", "acl_upload-=carol")
    assert "400" in result.output
    assert "doesn't have value 'carol'" in result.output

    result = devpi.fails("index", "alice/dev", "volatile-=")
    assert "400" in result.output
    assert "Default values can't be removed." in result.output

    # Nothing of that changed the index.
    assert devpi.ok("getjson", "/alice/dev").json()["result"] == before


def test_index_delete(devpi: DevpiClient, server: ServerProcess) -> None:
    out = devpi.ok("index", "--delete", "-y", "alice/staging").output
    assert f"index deleted: {server.url}/alice/staging" in out
    assert devpi.ok("index", "-l").stdout.split() == ["alice/dev"]
    result = devpi.fails("getjson", "/alice/staging")
    assert "404" in result.output

    # A non-volatile index cannot be deleted.
    devpi.ok("index", "-c", "stable", "volatile=False")
    result = devpi.fails("index", "--delete", "-y", "alice/stable")
    assert "403" in result.output
    assert "non-volatile" in result.output


def test_user_delete(devpi: DevpiClient) -> None:
    devpi.ok("user", "-c", "bob", "password=bobpw-1234", "email=bob@example.com")

    # alice may neither modify nor delete bob.
    result = devpi.fails("user", "-m", "bob", "email=evil@example.com")
    assert "403" in result.output
    result = devpi.fails("user", "--delete", "-y", "bob")
    assert "403" in result.output

    devpi.ok("login", "root", "--password", "")
    # alice still has a non-volatile index.
    result = devpi.fails("user", "--delete", "-y", "alice")
    assert "403" in result.output
    assert "non-volatile index: stable" in result.output

    out = devpi.ok("user", "--delete", "-y", "bob").output
    assert "user deleted: bob" in out
    result = devpi.fails("user", "--delete", "-y", "bob")
    assert "404" in result.output
    # root cannot be deleted through the API.
    result = devpi.fails("user", "--delete", "-y", "root")
    assert "403" in result.output

    assert devpi.ok("user", "-l").stdout.split() == ["alice", "root"]


def test_final_state(devpi: DevpiClient, server: ServerProcess) -> None:
    data = devpi.ok("getjson", "/").json()
    assert data["type"] == "list:userconfig"
    users = data["result"]
    assert sorted(users) == ["alice", "root"]

    alice = users["alice"]
    assert alice["username"] == "alice"
    assert alice["email"] == "alice@example.org"
    assert alice["title"] == "Alice"
    assert {"created", "modified"} <= set(alice)
    assert not {"password", "pwhash", "pwsalt"} & set(alice)
    assert sorted(alice["indexes"]) == ["dev", "stable"]
    dev = alice["indexes"]["dev"]
    assert dev["title"] == "Dev"
    assert dev["bases"] == ["root/pypi"]
    assert dev["acl_upload"] == ["alice", "bob"]
    assert dev["volatile"] is True
    assert alice["indexes"]["stable"]["volatile"] is False

    root = users["root"]
    assert sorted(root["indexes"]) == ["pypi"]
    pypi = root["indexes"]["pypi"]
    assert pypi["type"] == "mirror"
    assert pypi["volatile"] is False
    assert pypi["mirror_url"] == "http://127.0.0.1:9/simple/"

    # The new password still works after everything else.
    devpi.ok("login", "alice", "--password", ALICE_NEW_PW)
    assert authstatus(devpi) == ["ok", "alice", []]
    # The server logged no tracebacks.
    assert "Traceback" not in server.log_text()

"""
The JSON API over the Klein resource, in memory (StubTreq).
"""

from __future__ import annotations

import pytest

from .conftest import basic, devpi_auth


def state(client):
    return client.get("/").json["result"]


# -- /+api, /+status ------------------------------------------------------------


def test_api_anonymous(client):
    answer = client.get("/+api")
    assert answer.code == 200
    result = answer.json["result"]
    assert answer.json["type"] == "apiconfig"
    assert result["login"] == "http://127.0.0.1:3141/+login"
    assert result["authstatus"] == ["noauth", "", []]
    assert "server-keyvalue-parsing" in result["features"]


def test_api_for_index(client, alice):
    client.request("PUT", "/alice/dev", {}, headers=alice)
    result = client.get("/alice/dev/+api", headers=alice).json["result"]
    assert result["authstatus"] == ["ok", "alice", []]
    assert result["index"] == "http://127.0.0.1:3141/alice/dev"
    assert result["simpleindex"] == "http://127.0.0.1:3141/alice/dev/+simple/"
    assert result["pypisubmit"] == "http://127.0.0.1:3141/alice/dev/"
    mirror = client.get("/root/pypi/+api").json["result"]
    assert "pypisubmit" not in mirror
    assert client.get("/alice/nope/+api").code == 404


def test_api_outside_url(client):
    answer = client.get("/+api", headers={"X-Outside-Url": "https://pypi.example.org/sub/"})
    assert answer.json["result"]["login"] == "https://pypi.example.org/sub/+login"


def test_status(client, context):
    result = client.get("/+status").json["result"]
    assert result["uuid"] == context.uuid
    assert result["serial"] == context.storage.serial


# -- login and credentials --------------------------------------------------------


def test_login_and_token_use(client):
    answer = client.request("POST", "/+login", {"user": "root", "password": "rootpw"})
    assert answer.code == 200
    assert answer.json["type"] == "proxyauth"
    assert answer.json["result"]["expiration"] == 36000
    token = answer.json["result"]["password"]
    for headers in (devpi_auth("root", token), basic("root", token), basic("root", "rootpw")):
        assert client.get("/+api", headers=headers).json["result"]["authstatus"][:2] == ["ok", "root"]


@pytest.mark.parametrize(
    "body, code, message",
    [
        ({"user": "root", "password": "wrong"}, 401, "user 'root' could not be authenticated"),
        ({"user": "nobody", "password": "x"}, 401, "user 'nobody' could not be authenticated"),
        ({"user": "root"}, 400, "Bad request: no user/password specified"),
    ],
)
def test_login_failures(client, body, code, message):
    answer = client.request("POST", "/+login", body)
    assert (answer.code, answer.message) == (code, message)


def test_login_malformed_json(client):
    answer = client.request("POST", "/+login", raw=b"{nope")
    assert (answer.code, answer.message) == (400, "Bad request: could not decode json")


def test_token_of_other_user_rejected(client, root, alice):
    token = alice["X-Devpi-Auth"]
    import base64

    secret = base64.b64decode(token).decode().split(":", 1)[1]
    answer = client.get("/+api", headers=devpi_auth("root", secret))
    assert answer.json["result"]["authstatus"] == ["noauth", "", []]


def test_rejected_credentials_answer_401_on_writes(client):
    answer = client.request("PUT", "/root/new", {}, headers=basic("root", "wrong"))
    assert answer.code == 401
    assert "credentials for user 'root' were rejected" in answer.message
    assert answer.header("WWW-Authenticate") == 'Basic realm="pypi"'
    assert "new" not in state(client)["root"]["indexes"]


def test_expired_token_says_so(client):
    fake = '["root", [], true].AAAA.bogus'
    answer = client.request("PUT", "/root/new", {}, headers=devpi_auth("root", fake))
    assert answer.code == 401
    assert "expired" in answer.message
    assert answer.header("Location") == "http://127.0.0.1:3141/+login"
    api = client.get("/+api", headers=devpi_auth("root", fake)).json["result"]
    assert api["authstatus"][0] == "expired"


def test_authcheck(client, alice):
    def check(uri, **headers):
        return client.get("/+authcheck", headers={"X-Original-URI": uri, **headers}).code

    assert check("http://h/alice/dev?no_projects") == 200
    assert check("/+api", **basic("alice", "wrong")) == 200
    assert check("/+nonsense/x/y/z/w") == 403
    assert check("/alice/dev", **basic("alice", "wrong")) == 401
    assert check("/alice/dev", **basic("alice", "wrong"), **{"User-Agent": "devpi-client/7.3"}) == 403
    assert check("/alice/dev", **alice) == 200


# -- users ----------------------------------------------------------------------


def test_user_lifecycle(client, root):
    answer = client.request("PUT", "/bob", {"password": "bobpw", "email": "bob@x", "title": "Bob"})
    assert answer.code == 201
    assert answer.json["type"] == "userconfig"
    assert answer.json["result"]["email"] == "bob@x"
    assert "pwhash" not in answer.json["result"]
    assert "password" not in answer.json["result"]
    assert client.get("/bob").json["result"]["title"] == "Bob"
    assert sorted(state(client)) == ["bob", "root"]
    bob = client.login("bob", "bobpw")
    answer = client.request("PATCH", "/bob", {"title": "", "description": "dev", "nope": 1}, headers=bob)
    assert (answer.code, answer.message) == (400, "Unknown keys in user config: nope")
    assert client.get("/bob").json["result"]["title"] == "Bob"
    answer = client.request("PATCH", "/bob", {"title": "", "description": "dev"}, headers=bob)
    assert (answer.code, answer.message) == (200, "user updated")
    record = client.get("/bob").json["result"]
    assert "title" not in record and record["description"] == "dev"
    answer = client.request("DELETE", "/bob", headers=root)
    assert (answer.code, answer.message) == (200, "user 'bob' deleted")
    assert client.get("/bob").code == 404


def test_user_errors(client, alice):
    assert client.request("PUT", "/alice", {"password": "x"}).code == 409
    answer = client.request("PUT", "/bad%20name", {"password": "x"})
    assert answer.code == 400 and "contains characters that aren't allowed" in answer.message
    answer = client.request("PUT", "/+weird", {"password": "x"})
    assert answer.code == 400
    assert client.request("PUT", "/bob", {"password": "x", "foo": 1}).code == 400
    assert client.request("PUT", "/bob", {"email": "x"}).code == 400
    assert client.request("PUT", "/bob", raw=b"not json").code == 400
    assert client.request("PUT", "/bob", ["a"]).code == 400
    assert sorted(state(client)) == ["alice", "root"]
    answer = client.get("/nobody")
    assert (answer.code, answer.message) == (404, "no user 'nobody'")


@pytest.mark.parametrize(
    "body, message",
    [
        ({"email": ["alice@example.com"]}, "email must be a string, got a list"),
        ({"title": 42}, "title must be a string, got a number"),
        ({"description": {"a": 1}}, "description must be a string, got an object"),
        ({"password": 12345678}, "password must be a string, got a number"),
    ],
)
def test_user_fields_of_the_wrong_type_are_refused(client, alice, body, message):
    before = client.get("/alice").json["result"]
    answer = client.request("PATCH", "/alice", body, headers=alice)
    assert (answer.code, answer.message) == (400, message)
    assert client.get("/alice").json["result"] == before
    answer = client.request("PUT", "/bob", {"password": "bobpw", **body})
    assert (answer.code, answer.message) == (400, message)
    assert client.get("/bob").code == 404


def test_user_custom_data_may_be_any_json(client, alice):
    data = {"teams": ["a", "b"], "level": 3, "nested": {"ok": True}}
    assert client.request("PATCH", "/alice", {"custom_data": data}, headers=alice).code == 200
    assert client.get("/alice").json["result"]["custom_data"] == data


def test_user_modify_permission(client, alice):
    client.request("PUT", "/bob", {"password": "bobpw"})
    answer = client.request("PATCH", "/bob", {"title": "hacked"}, headers=alice)
    assert answer.code == 403
    assert "title" not in client.get("/bob").json["result"]
    assert client.request("DELETE", "/bob", headers=alice).code == 403
    assert client.request("DELETE", "/root", headers=alice).code == 403


def test_password_change(client, alice):
    answer = client.request("PATCH", "/alice", {"password": "newpw"}, headers=basic("alice", "alicepw"))
    assert answer.code == 200
    assert answer.json["type"] == "userpassword"
    new_token = answer.json["result"]["password"]
    assert client.request("POST", "/+login", {"user": "alice", "password": "alicepw"}).code == 401
    client.login("alice", "newpw")
    api = client.get("/+api", headers=basic("alice", "alicepw")).json["result"]
    assert api["authstatus"][0] == "noauth"
    api = client.get("/+api", headers=devpi_auth("alice", new_token)).json["result"]
    assert api["authstatus"][:2] == ["ok", "alice"]


def test_devpi_client_style_modify(client, alice):
    # devpi user -m sends back the record it got, with the changed fields.
    record = client.get("/alice").json["result"]
    record.pop("indexes")
    record.pop("username")
    record["email"] = "alice@example.org"
    assert client.request("PATCH", "/alice", record, headers=alice).code == 200
    assert client.get("/alice").json["result"]["email"] == "alice@example.org"


def test_devpi_client_style_passwd(client, alice):
    # devpi passwd sends the whole record back with the new password.
    record = client.get("/alice").json["result"]
    record.pop("indexes")
    record.pop("username")
    record["password"] = "newpw"
    assert client.request("PATCH", "/alice", record, headers=alice).code == 200
    client.login("alice", "newpw")


def test_user_with_ready_made_hash(client, root):
    from devpi_tx.auth.passwords import fast_hasher

    pwhash = fast_hasher().hash("hashedpw")
    assert client.request("PUT", "/carol", {"pwhash": pwhash}).code == 201
    client.login("carol", "hashedpw")


def test_user_delete_removes_indexes_and_respects_non_volatile(client, alice):
    client.request("PUT", "/alice/dev", {}, headers=alice)
    client.request("PUT", "/alice/stable", {"volatile": False}, headers=alice)
    answer = client.request("DELETE", "/alice", headers=alice)
    assert (answer.code, answer.message) == (403, "user 'alice' has non-volatile index: stable")
    client.request("PATCH", "/alice/stable", ["volatile=True"], headers=alice)
    assert client.request("DELETE", "/alice", headers=alice).code == 200
    assert "alice" not in state(client)


# -- indexes --------------------------------------------------------------------


def test_index_lifecycle(client, alice):
    body = {"bases": "root/pypi", "mirror_whitelist": "Upkg"}
    answer = client.request("PUT", "/alice/dev", body, headers=alice)
    assert answer.code == 200
    assert answer.json["type"] == "indexconfig"
    assert answer.json["result"]["mirror_whitelist"] == ["upkg"]
    got = client.get("/alice/dev").json["result"]
    assert got["projects"] == []
    assert "projects" not in client.get("/alice/dev?no_projects=").json["result"]
    assert client.get("/alice").json["result"]["indexes"]["dev"]["bases"] == ["root/pypi"]
    answer = client.request("PATCH", "/alice/dev", ["acl_upload+=bob", "title=Dev"], headers=alice)
    assert answer.json["result"]["acl_upload"] == ["alice", "bob"]
    answer = client.request("PATCH", "/alice/dev", {"volatile": "no"}, headers=alice)
    assert answer.json["result"]["volatile"] is False
    answer = client.request("DELETE", "/alice/dev", headers=alice)
    assert (answer.code, answer.message) == (403, "index alice/dev non-volatile, cannot delete")
    client.request("PATCH", "/alice/dev", ["volatile=yes"], headers=alice)
    answer = client.request("DELETE", "/alice/dev/", headers=alice)
    assert (answer.code, answer.message) == (201, "index alice/dev deleted")
    assert client.get("/alice/dev").code == 404


@pytest.mark.parametrize(
    "method, path, body, code, message",
    [
        ("PUT", "/alice/dev", {"foo": 1}, 400, "unexpected keyword arguments: foo=1"),
        ("PUT", "/alice/dev", {"volatile": "maybe"}, 400, "Unknown boolean value 'maybe'."),
        ("PUT", "/alice/dev", {"bases": "root/nonexist"}, 400, "base index 'root/nonexist' does not exist"),
        ("PUT", "/alice/dev", {"type": "weird"}, 400, "unknown index type 'weird'"),
        ("PUT", "/alice/a%2Fb", {}, 400, "cannot contain '/'"),
        ("PUT", "/alice/+x", {}, 400, "contains characters"),
        ("PUT", "/alice/base", {}, 409, "index 'alice/base' exists"),
        ("PATCH", "/alice/base", ["bogus=1"], 400, "unexpected keyword arguments: bogus=1"),
        ("PATCH", "/alice/base", ["acl_upload-=zed"], 400, "doesn't have value 'zed'"),
        ("PATCH", "/alice/base", ["bases=alice/top"], 400, "loop"),
        ("PATCH", "/alice/base", "a string", 400, "expected a JSON object or list"),
        ("PATCH", "/alice/nope", {}, 404, "does not exist"),
        ("PUT", "/nobody/dev", {}, 404, "no user 'nobody'"),
        ("PATCH", "/nobody/dev", {}, 404, "no user 'nobody'"),
        ("DELETE", "/nobody/dev", None, 404, "no user 'nobody'"),
    ],
)
def test_index_bad_input_changes_nothing(client, alice, method, path, body, code, message):
    client.request("PUT", "/alice/base", {}, headers=alice)
    client.request("PUT", "/alice/top", {"bases": "alice/base"}, headers=alice)
    before = (state(client), client.context.storage.serial)
    answer = client.request(method, path, body, headers=alice)
    assert answer.code == code, answer.body
    assert message in answer.message
    assert (state(client), client.context.storage.serial) == before


def test_index_create_requires_permission(client, alice):
    answer = client.request("PUT", "/alice/dev", {})
    assert (answer.code, answer.message) == (403, "no permission to create index alice/dev")
    client.request("PUT", "/bob", {"password": "bobpw"})
    bob = client.login("bob", "bobpw")
    assert client.request("PUT", "/alice/dev", {}, headers=bob).code == 403
    client.request("PUT", "/alice/dev", {}, headers=alice)
    assert client.request("PATCH", "/alice/dev", ["title=x"], headers=bob).code == 403
    assert client.request("DELETE", "/alice/dev", headers=bob).code == 403
    root = client.login("root", "rootpw")
    assert client.request("PATCH", "/alice/dev", ["title=by root"], headers=root).code == 200


def test_restrict_modify(tmp_path):
    from devpi_tx.auth.passwords import fast_hasher
    from devpi_tx.config import ServerConfig
    from devpi_tx.service import build_context

    from .conftest import Client, synchronous_passwords

    config = ServerConfig(
        serverdir=str(tmp_path / "s"),
        no_root_pypi=True,
        root_passwd_hash=fast_hasher().hash("rootpw"),
        restrict_modify="root",
    )
    context = build_context(config, passwords=synchronous_passwords())
    client = Client(context)
    assert client.request("PUT", "/eve", {"password": "x"}).code == 403
    root = client.login("root", "rootpw")
    assert client.request("PUT", "/eve", {"password": "evepw"}, headers=root).code == 201
    eve = client.login("eve", "evepw")
    assert client.request("PUT", "/eve/dev", {}, headers=eve).code == 403
    assert client.request("PATCH", "/eve", {"password": "new"}, headers=eve).code == 200
    context.close()


# -- representation ---------------------------------------------------------------


def test_errors_are_html_without_json_accept(client):
    answer = client.get("/nobody", accept="text/html")
    assert answer.code == 404
    assert answer.header("Content-Type").startswith("text/html")
    assert b"no user &#x27;nobody&#x27;" in answer.body


def test_json_is_indented_and_ends_with_newline(client):
    body = client.get("/+api").body
    assert body.endswith(b"}\n")
    assert b'\n  "type": "apiconfig"' in body


def test_unknown_route_and_method(client):
    assert client.get("/a/b/c/d/e/f").code == 404
    assert client.request("POST", "/+status").code == 405

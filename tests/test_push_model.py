"""
Pushing a release between indexes of this server, as a plain call in a
transaction (L{devpi_tx.model.push}): no HTTP, no reactor.
"""

from __future__ import annotations

import pytest

from devpi_tx.customizers import BUILTIN, default_registry
from devpi_tx.model import indexes, push, releases, users
from devpi_tx.model.errors import Conflict, InvalidInput, NotFound
from devpi_tx.storage.sqlite import SQLiteStorage

REGISTRY = default_registry("http://127.0.0.1:9/simple/")
META = {"name": "pkg", "version": "1.0", "summary": "a package"}
WHEEL = "pkg-1.0-py3-none-any.whl"
SDIST = "pkg-1.0.tar.gz"


@pytest.fixture
def storage(tmp_path):
    s = SQLiteStorage(str(tmp_path / "state.sqlite"))
    with s.transaction() as tx:
        users.create_user(tx, "alice", {}, "$argon2id$fake")
        indexes.create_index(tx, REGISTRY, "alice", "dev", {})
        indexes.create_index(tx, REGISTRY, "alice", "prod", {"volatile": False})
        indexes.create_index(tx, REGISTRY, "alice", "mirror", {"type": "mirror"})
    yield s
    s.close()


def add(storage, stage, basename, sha256, rel="releasefile", **kw) -> dict:
    with storage.transaction() as tx:
        _, link, _ = releases.add_file(
            tx, stage, True, META, rel=rel, basename=basename, sha256=sha256, size=3, who="alice", **kw
        )
    return link


def readonly(config: dict) -> bool:
    # The server's answer: the index type's.
    return BUILTIN.for_config(config).readonly


def sha(char: str) -> str:
    return char * 64


def run(storage, source="alice/dev", target="alice/prod", **kw) -> push.PushOutcome:
    with storage.transaction() as tx:
        return push.push_release(tx, source, target, "pkg", "1.0", "bob", readonly=readonly, **kw)


@pytest.fixture
def release(storage):
    wheel = add(storage, "alice/dev", WHEEL, sha("a"), extra={"core_metadata_sha256": sha("m")})
    add(storage, "alice/dev", SDIST, sha("b"))
    add(storage, "alice/dev", "pkg-1.0.doc.zip", sha("d"), rel="doczip")
    add(
        storage,
        "alice/dev",
        f"{WHEEL}.toxresult-1",
        sha("t"),
        rel="toxresult",
        extra={"for_relpath": wheel["relpath"]},
        path=f"{wheel['relpath'].rsplit('/', 1)[0]}/{WHEEL}.toxresult-1",
    )
    return wheel


def test_push_links_every_file_on_the_target(storage, release):
    outcome = run(storage)
    assert outcome.actions == [
        [200, "register", "pkg", "1.0", "->", "alice/prod"],
        [200, "store_releasefile", releases.relpath("alice/prod", sha("a"), WHEEL)],
        [200, "store_releasefile", releases.relpath("alice/prod", sha("b"), SDIST)],
        [200, "store_doczip", "pkg", "1.0", "->", "alice/prod"],
        [200, "store_toxresult", f"alice/prod/+f/aaa/{sha('a')[3:16]}/{WHEEL}.toxresult-1"],
    ]
    assert outcome.unused == frozenset()
    record = releases.get_version(storage, "alice/prod", "pkg", "1.0")
    assert record["summary"] == "a package"
    by_name = {link["basename"]: link for link in record["+links"]}
    assert by_name[WHEEL]["core_metadata_sha256"] == sha("m")
    assert by_name[f"{WHEEL}.toxresult-1"]["for_relpath"] == by_name[WHEEL]["relpath"]
    assert [e["what"] for e in by_name[SDIST]["log"]] == ["upload", "push"]
    assert by_name[SDIST]["log"][-1]["who"] == "bob"
    assert by_name[SDIST]["log"][-1]["src"] == "alice/dev"
    # The blobs are shared, not copied: two links each now.
    assert storage.get(releases.blob_key(sha("a"))) == 2
    assert storage.get(releases.blob_key(sha("m"))) == 2


def test_no_docs_leaves_the_doc_zip_behind(storage, release):
    actions = run(storage, no_docs=True).actions
    assert [a[1] for a in actions] == [
        "register",
        "store_releasefile",
        "store_releasefile",
        "store_toxresult",
    ]


def test_only_docs_pushes_the_doc_zip_and_no_tox_results(storage, release):
    actions = run(storage, only_docs=True).actions
    assert [a[1] for a in actions] == ["register", "store_doczip"]


def test_an_overwrite_entry_is_not_carried_over(storage):
    add(storage, "alice/dev", SDIST, sha("b"))
    add(storage, "alice/dev", SDIST, sha("c"))  # overwritten on the volatile index
    run(storage)
    (link,) = releases.get_version(storage, "alice/prod", "pkg", "1.0")["+links"]
    assert [e["what"] for e in link["log"]] == ["upload", "push"]


def test_a_file_the_push_replaces_on_a_volatile_target_is_reported_unused(storage):
    with storage.transaction() as tx:
        indexes.create_index(tx, REGISTRY, "alice", "staging", {})
    add(storage, "alice/staging", SDIST, sha("e"))
    add(storage, "alice/dev", SDIST, sha("b"))
    assert run(storage, target="alice/staging").unused == {sha("e")}


def test_the_same_file_again_on_a_non_volatile_target_is_kept_as_it_was(storage):
    add(storage, "alice/dev", SDIST, sha("b"))
    run(storage)
    (before,) = releases.get_version(storage, "alice/prod", "pkg", "1.0")["+links"]
    assert run(storage).actions[1] == [200, "store_releasefile", before["relpath"]]
    (after,) = releases.get_version(storage, "alice/prod", "pkg", "1.0")["+links"]
    assert after == before
    assert storage.get(releases.blob_key(sha("b"))) == 2


def test_another_file_under_the_same_name_on_a_non_volatile_target_conflicts(storage):
    add(storage, "alice/dev", SDIST, sha("b"))
    run(storage)
    add(storage, "alice/dev", SDIST, sha("c"))
    with pytest.raises(Conflict):
        run(storage)


@pytest.mark.parametrize(
    "target, error, message",
    [
        ("alice/nope", NotFound, "target index 'alice/nope' does not exist"),
        ("bob/prod", NotFound, "target index 'bob/prod' does not exist"),
        ("alice/mirror", InvalidInput, "cannot push to mirror index alice/mirror"),
        ("nonsense", InvalidInput, "is not a user/index name"),
    ],
)
def test_push_target_must_be_a_private_index(storage, target, error, message):
    with pytest.raises(error, match=message):
        push.push_target(storage, target, readonly)


def test_a_release_without_files_is_not_pushed(storage):
    with storage.transaction() as tx:
        releases.register(tx, "alice/dev", META, replace=True)
    with pytest.raises(InvalidInput, match="there are no files for pkg 1.0 on stage alice/dev"):
        run(storage)
    with pytest.raises(InvalidInput, match="there are no files for pkg 2.0"):
        push.release_to_push(storage, "alice/dev", "pkg", "2.0")


# -- the push request ---------------------------------------------------------------

EXTERNAL = {"name": "pkg", "version": "1.0", "posturl": "https://upload.example/legacy/"}


def test_push_requests_as_devpi_client_sends_them():
    internal = push.parse_push_request({"name": "pkg", "version": "1.0", "targetindex": "alice/prod"})
    assert internal == push.PushRequest("pkg", "1.0", targetindex="alice/prod")
    # devpi push to pypi: sends null credentials when .pypirc has none.
    body = dict(EXTERNAL, username=None, password=None, register_project=True, no_docs=True)
    external = push.parse_push_request(body)
    assert external == push.PushRequest(
        "pkg", "1.0", posturl=EXTERNAL["posturl"], register_project=True, no_docs=True
    )
    assert (
        push.parse_push_request(dict(EXTERNAL, username="u", password="p", only_docs=False)).username == "u"
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ([], "Bad request: expected a JSON object"),
        ({"version": "1.0", "targetindex": "a/b"}, "push needs 'name' and 'version'"),
        ({"name": "pkg", "targetindex": "a/b"}, "push needs 'name' and 'version'"),
        ({"name": ["pkg"], "version": "1.0"}, "push: 'name' must be a string, got a list"),
        ({"name": "pkg", "version": 1.0}, "push: 'version' must be a string, got a number"),
        (
            {"name": "pkg", "version": "1.0", "targetindex": ["alice/prod"]},
            "push: 'targetindex' must be a string (user/index), got a list",
        ),
        (
            {"name": "pkg", "version": "1.0", "targetindex": 3},
            "push: 'targetindex' must be a string (user/index), got a number",
        ),
        (
            {"name": "pkg", "version": "1.0", "targetindex": {}},
            "push: 'targetindex' must be a string (user/index), got an object",
        ),
        (
            {"name": "pkg", "version": "1.0", "targetindex": None},
            "push: 'targetindex' must be a string (user/index), got null",
        ),
        (
            {"name": "pkg", "version": "1.0", "targetindex": "a/b", "no_docs": "yes"},
            "push: 'no_docs' must be true or false, got a string",
        ),
        (
            {"name": "pkg", "version": "1.0", "targetindex": "a/b", "only_docs": 1},
            "push: 'only_docs' must be true or false, got a number",
        ),
        (
            {"name": "pkg", "version": "1.0", "targetindex": "a/b", "no_docs": True, "only_docs": True},
            "can't use 'no_docs' and 'only_docs' together",
        ),
        (
            {"name": "pkg", "version": "1.0", "targetindex": "a/b", "posturl": "http://x/"},
            "unknown additional options: posturl",
        ),
        (dict(EXTERNAL, bogus=1, other=2), "unknown additional options: bogus, other"),
        (dict(EXTERNAL, posturl=["http://x/"]), "push: 'posturl' must be a string, got a list"),
        (dict(EXTERNAL, posturl=5), "push: 'posturl' must be a string, got a number"),
        (dict(EXTERNAL, posturl=None), "push needs 'targetindex', or 'posturl' with an http(s) URL"),
        (dict(EXTERNAL, posturl="ftp://x/"), "push needs 'targetindex', or 'posturl' with an http(s) URL"),
        (dict(EXTERNAL, posturl="http:///legacy/"), "push: 'posturl' has no host"),
        (dict(EXTERNAL, posturl="http://x:99999/"), "push: 'posturl' has an invalid port"),
        (dict(EXTERNAL, posturl="http://x:port/"), "push: 'posturl' has an invalid port"),
        (
            dict(EXTERNAL, posturl="http://x/\nEvil: 1"),
            "push: 'posturl' must not contain spaces or control characters",
        ),
        (
            dict(EXTERNAL, posturl="https://me:secret@upload.example/"),
            "push: 'posturl' must not hold credentials: send 'username' and 'password'",
        ),
        (dict(EXTERNAL, username=5), "push: 'username' must be a string, got a number"),
        (dict(EXTERNAL, password=["pw"]), "push: 'password' must be a string, got a list"),
        (
            dict(EXTERNAL, register_project="true"),
            "push: 'register_project' must be true or false, got a string",
        ),
    ],
)
def test_malformed_push_requests_are_refused(body, message):
    with pytest.raises(InvalidInput) as info:
        push.parse_push_request(body)
    assert info.value.message == message


def external(posturl, username="", password=""):
    return push.parse_push_request(dict(EXTERNAL, posturl=posturl, username=username, password=password))


@pytest.mark.parametrize(
    "posturl",
    [
        "http://127.0.0.1:3141/alice/prod/",
        "http://localhost:3141/alice/prod/",
        "http://LOCALHOST.:3141/",
        "http://sub.localhost:3141/",
        "http://127.0.0.2:3141/",
        "http://127.1:3141/",
        "http://2130706433:3141/",
        "http://0.0.0.0:3141/",
        "http://[::1]:3141/",
        "http://[::ffff:127.0.0.1]:3141/",
        "http://[0:0:0:0:0:0:0:1]:3141/",
        "http://10.0.0.5:3141/",  # the address the request came in on
        "https://devpi.example.com/alice/prod/",  # the outside URL's host and port
        "https://DEVPI.example.com:443/",
    ],
)
def test_a_push_to_this_server_without_credentials_is_refused(posturl):
    with pytest.raises(InvalidInput) as info:
        push.check_not_self(external(posturl), ("10.0.0.5", 3141), "https://devpi.example.com/")
    assert "is this server: pushing to it needs credentials" in info.value.message
    assert "secret" not in info.value.message
    with pytest.raises(InvalidInput):
        push.check_not_self(external(posturl), ("::ffff:10.0.0.5", 3141), "https://devpi.example.com")


@pytest.mark.parametrize(
    "posturl",
    [
        "http://127.0.0.1:3142/ext/prod/",  # another server on this machine
        "http://localhost/",
        "https://127.0.0.1/",
        "http://10.0.0.6:3141/",
        "http://devpi.example.com/",  # port 80, the outside URL is 443
        "https://uploads.example.org/legacy/",  # a remote repository
        "http://localhost.example.com:3141/",
    ],
)
def test_a_push_elsewhere_is_not_refused(posturl):
    push.check_not_self(external(posturl), ("10.0.0.5", 3141), "https://devpi.example.com/")


def test_a_push_to_this_server_with_credentials_is_not_refused():
    for username, password in (("alice", ""), ("", "secret"), ("alice", "secret")):
        push.check_not_self(external("http://localhost:3141/", username, password), ("127.0.0.1", 3141), None)
    # Nor one to another index of this server, nor when the listener is unknown.
    push.check_not_self(push.PushRequest("pkg", "1.0", targetindex="alice/prod"), ("127.0.0.1", 3141), None)
    push.check_not_self(external("http://localhost:3141/"), None, None)

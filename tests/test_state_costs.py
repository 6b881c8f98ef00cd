"""
Costs that must not grow with the state (issue 15), counted in
operations rather than timed: what an upload drops from the caches, what
one version's JSON reads, how rendering scales with versions.
"""

from __future__ import annotations

import json

import pytest

from devpi_tx.model.stages import Contribution
from devpi_tx.web import simple

from .distfiles import make_wheel
from .test_releases import PIP_ACCEPT, upload


@pytest.fixture
def dev(client, alice):
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    return alice


def counting_reads(monkeypatch, storage, prefix: str) -> list[str]:
    """
    The keys under C{prefix} that the state is asked for from now on.
    """
    read: list[str] = []
    get = storage.get

    def counted(key):
        if key.startswith(prefix):
            read.append(key)
        return get(key)

    monkeypatch.setattr(storage, "get", counted)
    return read


def counting_names(monkeypatch, client) -> list[str]:
    """
    The stages whose project names are listed from the state from now on.
    """
    from devpi_tx.model import releases

    listed: list[str] = []
    names = releases.project_names

    def counted(reader, stage):
        listed.append(stage)
        return names(reader, stage)

    monkeypatch.setattr(releases, "project_names", counted)
    return listed


def test_a_new_version_of_a_known_project_keeps_the_listing_and_index_json(client, dev, monkeypatch):
    upload(client, dev, "pkg-a", "1.0", *make_wheel("pkg-a", "1.0"))
    assert client.get("/alice/dev/+simple/", accept=PIP_ACCEPT).code == 200
    assert client.get("/alice/dev").json["result"]["projects"] == ["pkg-a"]
    listed = counting_names(monkeypatch, client)
    upload(client, dev, "pkg-a", "1.1", *make_wheel("pkg-a", "1.1"))
    listing = client.get("/alice/dev/+simple/", accept=PIP_ACCEPT)
    assert [p["name"] for p in listing.json["projects"]] == ["pkg-a"]
    assert client.get("/alice/dev").json["result"]["projects"] == ["pkg-a"]
    assert listed == []  # both answered from the cache
    # A new project changes what they show: both are made again.
    upload(client, dev, "pkg-b", "1.0", *make_wheel("pkg-b", "1.0"))
    listing = client.get("/alice/dev/+simple/", accept=PIP_ACCEPT)
    assert sorted(p["name"] for p in listing.json["projects"]) == ["pkg-a", "pkg-b"]
    assert client.get("/alice/dev").json["result"]["projects"] == ["pkg-a", "pkg-b"]
    # The names are kept from the commits, not read from the state again.
    assert listed == []


def test_the_index_json_is_compact(client, dev):
    body = client.get("/alice/dev").body
    assert b"\n " not in body and body.endswith(b"}\n")


def test_one_versions_json_reads_one_version_record(client, dev, monkeypatch):
    for n in range(30):
        upload(client, dev, "pkg-a", f"1.{n}", *make_wheel("pkg-a", f"1.{n}"))
    read = counting_reads(monkeypatch, client.context.storage, "version/")
    answer = client.get("/alice/dev/pkg-a/1.7")
    assert answer.json["result"]["version"] == "1.7"
    assert read == ["version/alice/dev/pkg-a/1.7"]
    assert client.get("/alice/dev/pkg-a/9.9").code == 404


def test_project_json_is_kept_until_the_project_changes(client, dev, monkeypatch):
    upload(client, dev, "pkg-a", "1.0", *make_wheel("pkg-a", "1.0"))
    assert list(client.get("/alice/dev/pkg-a").json["result"]) == ["1.0"]
    read = counting_reads(monkeypatch, client.context.storage, "version/")
    assert list(client.get("/alice/dev/pkg-a").json["result"]) == ["1.0"]
    assert read == []  # from the cache
    upload(client, dev, "pkg-a", "2.0", *make_wheel("pkg-a", "2.0"))
    assert sorted(client.get("/alice/dev/pkg-a").json["result"]) == ["1.0", "2.0"]


class Counted(str):
    """
    A version string that counts how often it is compared for equality.
    """

    comparisons = 0

    def __eq__(self, other):
        Counted.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("count", [200, 2000])
def test_rendering_a_project_page_is_linear_in_its_versions(count):
    versions = [Counted(f"1.{n}") for n in range(count)]
    contributions = [Contribution("a/dev", [], versions, ""), Contribution("b/dev", [], versions, "")]
    Counted.comparisons = 0
    body = simple.render_project(simple.JSON_V1, "a/dev", "p", contributions, "/a/dev/+simple/p/", None)
    assert len(json.loads(body)["versions"]) == count
    assert Counted.comparisons <= 2 * count


# -- a commit writes what changed --------------------------------------------------------


def test_an_upload_into_a_version_of_many_files_writes_its_own_link(client, context, dev):
    upload(client, dev, "pkg-a", "1.0", *make_wheel("pkg-a", "1.0"))
    for n in range(40):
        name = f"pkg_a-1.0-{n}-py3-none-any.whl"
        assert (
            upload(client, dev, "pkg-a", "1.0", name, make_wheel("pkg-a", "1.0", payload=b"%d" % n)[1]).code
            == 200
        )
    changes = context.storage.changelog_entry(context.storage.serial)["changes"]
    keys = set(changes)
    assert not any(key.startswith("version/") for key in keys)  # the metadata did not change
    assert [key for key in keys if key.startswith("link/")] == [
        "link/alice/dev/pkg-a/1.0/pkg_a-1.0-39-py3-none-any.whl"
    ]
    assert len(str(changes)) < 4096
    record = client.get("/alice/dev/pkg-a/1.0").json["result"]
    assert len(record["+links"]) == 41
    # Oldest first, as they were uploaded.
    assert record["+links"][-1]["href"].endswith("pkg_a-1.0-39-py3-none-any.whl")


def test_a_state_of_the_old_layout_is_moved_at_start(tmp_path, config):
    """
    Version records that hold their links (layout 1) get keys for them at
    start; what clients see does not change.
    """
    import json

    from devpi_tx.model import releases
    from devpi_tx.service import build_context

    from .conftest import Client, synchronous, synchronous_passwords

    def start():
        return build_context(config, passwords=synchronous_passwords(), run_in_thread=synchronous)

    context = start()
    client = Client(context)
    auth = client.login("root", "rootpw")
    client.request("PUT", "/root/dev", {}, headers=auth)
    upload(client, auth, "pkg-a", "1.0", *make_wheel("pkg-a", "1.0"), path="/root/dev/")
    upload(client, auth, "pkg-a", "1.0", "pkg-a-1.0.tar.gz", b"sdist", path="/root/dev/")
    before = client.get("/root/dev/pkg-a").json
    # Back to the old layout: the links inline, no link keys, layout 1.
    with context.storage.transaction() as tx:
        record = releases.get_version(tx, "root/dev", "pkg-a", "1.0")
        for key in tx.keys("link/"):
            tx.delete(key)
        tx.set(releases.version_key("root/dev", "pkg-a", "1.0"), record)
    nodeinfo = tmp_path / "server" / ".nodeinfo"
    info = json.loads(nodeinfo.read_text())
    nodeinfo.write_text(json.dumps({k: v for k, v in info.items() if k != "layout"}))
    context.close()

    context = start()
    client = Client(context)
    assert client.get("/root/dev/pkg-a").json == before
    assert len(context.storage.keys("link/root/dev/pkg-a/1.0/")) == 2
    assert "+links" not in context.storage.get(releases.version_key("root/dev", "pkg-a", "1.0"))
    assert json.loads(nodeinfo.read_text())["layout"] == 2
    context.close()


def test_an_old_record_keeps_its_links_when_a_file_is_added(context):
    from devpi_tx.model import releases

    with context.storage.transaction() as tx:
        releases.ensure_project(tx, "root/pypi", "old")
        link = {
            "rel": "releasefile",
            "basename": "old-1.0.tar.gz",
            "relpath": "root/pypi/+f/aaa/bbb/old-1.0.tar.gz",
            "sha256": "a" * 64,
            "size": 1,
            "last_modified": 1.0,
            "log": [],
        }
        record = dict(releases.empty_record("old", "1.0"), **{"+links": [link]})
        tx.set(releases.version_key("root/pypi", "old", "1.0"), record)
    with context.storage.transaction() as tx:
        releases.add_file(
            tx, "root/pypi", True, {"name": "old", "version": "1.0"},
            rel="releasefile", basename="old-1.0.zip", sha256="b" * 64, size=2, who="root",
        )  # fmt: skip
    links = releases.get_version(context.storage, "root/pypi", "old", "1.0")["+links"]
    assert [x["basename"] for x in links] == ["old-1.0.tar.gz", "old-1.0.zip"]


def held_jobs(monkeypatch, context) -> list:
    """
    Work the server hands to a worker thread, held until the test runs it:
    a list of (Deferred, job) to fire with C{d.callback(job())}.
    """
    from twisted.internet.defer import Deferred

    jobs: list = []

    def later(f, *args):
        d: Deferred = Deferred()
        jobs.append((d, lambda: f(*args)))
        return d

    monkeypatch.setattr(context, "run_in_thread", later)
    return jobs


def test_a_large_listing_is_rendered_off_the_reactor_and_not_cached_if_it_moved(
    client, context, dev, monkeypatch
):
    """
    A list of many names merged from several indexes is rendered by a
    worker thread (here: when the test says); a project that appears
    meanwhile keeps the rendered page out of the cache, and the next
    request shows it.
    """
    from devpi_tx.web import simplepages

    assert client.request("PUT", "/alice/base", {}, headers=dev).code == 200
    assert client.request("PATCH", "/alice/dev", {"bases": ["alice/base"]}, headers=dev).code == 200
    monkeypatch.setattr(simplepages, "THREADED_LIST", 0)
    upload(client, dev, "pkg-a", "1.0", *make_wheel("pkg-a", "1.0"))
    jobs = held_jobs(monkeypatch, context)
    connection = client.connect()
    connection.send(
        b"GET /alice/dev/+simple/ HTTP/1.1\r\nHost: x\r\nAccept: application/vnd.pypi.simple.v1+json\r\n\r\n"
    )
    client.flush()
    assert connection.received == b"" and len(jobs) == 1  # rendering, off the reactor
    monkeypatch.undo()
    upload(client, dev, "pkg-b", "1.0", *make_wheel("pkg-b", "1.0"))
    d, job = jobs.pop()
    d.callback(job())
    client.flush()
    assert connection.received.startswith(b"HTTP/1.1 200 OK")
    assert b'"pkg-a"' in connection.received  # what was listed when it was asked for
    # Not cached: the next request lists the new project.
    listing = client.get("/alice/dev/+simple/", accept=PIP_ACCEPT).json["projects"]
    assert sorted(p["name"] for p in listing) == ["pkg-a", "pkg-b"]


def test_the_names_of_an_index_follow_the_commits(client, context, dev):
    from devpi_tx.model.names_index import ProjectNames

    names = ProjectNames(context.storage)
    assert names.get("alice/dev") == []
    for project in ("pkg-b", "pkg-a", "pkg-c"):
        upload(client, dev, project, "1.0", *make_wheel(project, "1.0"))
    assert names.get("alice/dev") == ["pkg-a", "pkg-b", "pkg-c"]
    assert client.request("DELETE", "/alice/dev/pkg-b", headers=dev).code == 200
    assert names.get("alice/dev") == ["pkg-a", "pkg-c"]
    # An index deleted (a user/ key): everything is read again when asked.
    assert client.request("DELETE", "/alice/dev", headers=dev).code == 201
    assert names.get("alice/dev") == []


def test_an_upload_into_a_version_of_many_files_reads_none_of_the_others(client, context, dev, monkeypatch):
    for n in range(30):
        name = f"pkg_a-1.0-{n}-py3-none-any.whl"
        upload(client, dev, "pkg-a", "1.0", name, make_wheel("pkg-a", "1.0", payload=b"%d" % n)[1])
    scans: list[str] = []
    keys = context.storage.keys

    def counted(prefix):
        if prefix.startswith("link/"):
            scans.append(prefix)
        return keys(prefix)

    monkeypatch.setattr(context.storage, "keys", counted)
    read: list[str] = []
    encoded = context.storage._encoded

    def counted_read(key):
        if key.startswith("link/"):
            read.append(key)
        return encoded(key)

    monkeypatch.setattr(context.storage, "_encoded", counted_read)
    name = "pkg_a-1.0-99-py3-none-any.whl"
    assert upload(client, dev, "pkg-a", "1.0", name, make_wheel("pkg-a", "1.0", payload=b"99")[1]).code == 200
    assert scans == []
    assert read == [f"link/alice/dev/pkg-a/1.0/{name}"]  # its own key only
    assert len(client.get("/alice/dev/pkg-a/1.0").json["result"]["+links"]) == 31


def test_user_json_is_kept_compact_until_a_user_changes(client, dev, monkeypatch):
    from devpi_tx.model import users

    made: list[str] = []
    public_user = users.public_user

    def counted(record):
        made.append(record["username"])
        return public_user(record)

    monkeypatch.setattr(users, "public_user", counted)
    first = client.get("/alice", accept="application/json")
    assert client.get("/alice", accept="application/json").body == first.body
    assert made == ["alice"] and b"\n " not in first.body
    upload(client, dev, "pkg-a", "1.0", *make_wheel("pkg-a", "1.0"))  # not a user change
    assert client.get("/alice", accept="application/json").json == first.json
    assert client.request("PATCH", "/alice", {"email": "new@example.com"}, headers=dev).code == 200
    assert client.get("/alice", accept="application/json").json["result"]["email"] == "new@example.com"
    listed = client.get("/", accept="application/json").json["result"]
    assert listed["alice"]["email"] == "new@example.com"

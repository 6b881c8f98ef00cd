"""
The caching mirror in memory: the fake upstream is reached through StubTreq.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

import attrs
import pytest

from .distfiles import make_wheel
from .fakeupstream import Release

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
)


@pytest.fixture
def hello(upstream):
    filename, data = make_wheel("hello", "1.0")
    upstream.add("hello", Release(filename, data, requires_python=">=3.8"), serial=5)
    return filename, data


def page(client, path="/root/pypi/+simple/hello/"):
    return client.get(path, accept=PIP_ACCEPT)


def absolute(url: str, base: str = "/root/pypi/+simple/hello/") -> str:
    return posixpath.normpath(posixpath.join(base, url))


def test_project_page_from_upstream(client, upstream, hello):
    filename, data = hello
    answer = page(client)
    assert answer.code == 200, answer.body
    (entry,) = answer.json["files"]
    sha = hashlib.sha256(data).hexdigest()
    assert entry["filename"] == filename
    assert entry["hashes"] == {"sha256": sha}
    assert entry["requires-python"] == ">=3.8"
    assert absolute(entry["url"]) == f"/root/pypi/+f/{sha[:3]}/{sha[3:16]}/{filename}"
    html = client.get("/root/pypi/+simple/hello/", accept="text/html").body.decode()
    assert f"#sha256={sha}" in html and 'data-requires-python="&gt;=3.8"' in html


def test_html_only_upstream(client, upstream, hello):
    upstream.mode = "html"
    answer = page(client).json
    (entry,) = answer["files"]
    assert entry["filename"] == hello[0]
    assert entry["requires-python"] == ">=3.8"
    # PEP 700 (API 1.1): the versions, from the file names when upstream
    # gives none.
    assert answer["versions"] == ["1.0"]


def test_cached_page_is_not_fetched_again_until_expiry(client, upstream, hello, root):
    page(client)
    page(client)
    assert upstream.count("/simple/") == 1
    client.request("PATCH", "/root/pypi", ["mirror_cache_expiry=0"], headers=root)
    assert page(client).code == 200
    assert upstream.count("/simple/") == 2
    # The refetch was conditional and upstream answered 304.
    assert client.context.storage.get("mirror/root/pypi/hello")["etag"]


def test_upstream_failure_serves_cache_with_warning_else_502(client, upstream, hello, root):
    assert page(client).code == 200
    client.request("PATCH", "/root/pypi", ["mirror_cache_expiry=0"], headers=root)
    upstream.fail_status = 503
    answer = page(client)
    assert answer.code == 200
    assert "upstream failed" in answer.header("X-Devpi-Mirror-Warning")
    answer = client.get("/root/pypi/+simple/other/", accept=PIP_ACCEPT)
    assert answer.code == 502


def test_upstream_404_is_remembered(client, upstream):
    assert page(client, "/root/pypi/+simple/nope/").code == 404
    assert page(client, "/root/pypi/+simple/nope/").code == 404
    assert upstream.count("/simple/") == 1


def test_older_serial_never_replaces_newer_page(client, upstream, hello, root):
    page(client)
    client.request("PATCH", "/root/pypi", ["mirror_cache_expiry=0"], headers=root)
    filename, data = make_wheel("hello", "2.0")
    upstream.add("hello", Release(filename, data), serial=3)
    assert [f["filename"] for f in page(client).json["files"]] == [hello[0]]


def test_an_older_serial_replaces_the_page_when_serials_are_ignored(client, upstream, hello, root):
    page(client)
    client.request(
        "PATCH", "/root/pypi", ["mirror_cache_expiry=0", "mirror_ignore_serial_header=True"], headers=root
    )
    assert (
        client.get("/root/pypi", accept="application/json").json["result"]["mirror_ignore_serial_header"]
        is True
    )
    filename, data = make_wheel("hello", "2.0")
    upstream.add("hello", Release(filename, data), serial=3)
    assert [f["filename"] for f in page(client).json["files"]] == [hello[0], filename]


def test_file_download_is_cached_and_verified(client, upstream, hello):
    filename, data = hello
    url = absolute(page(client).json["files"][0]["url"])
    answer = client.get(url, accept=None)
    assert answer.code == 200
    assert answer.body == data
    assert client.get(url, accept=None).body == data
    assert upstream.count("/files/") == 1


def test_wrong_hash_is_refused_and_nothing_stored(client, upstream):
    filename, data = make_wheel("bad", "1.0")
    upstream.add("bad", Release(filename, data, wrong_hash=True))
    url = absolute(page(client, "/root/pypi/+simple/bad/").json["files"][0]["url"], "/root/pypi/+simple/bad/")
    answer = client.get(url, accept=None)
    assert answer.code == 502
    assert "sha256 mismatch" in answer.body.decode()
    assert [k for k in client.context.storage.keys("blob/")] == []


def test_head_of_uncached_file_downloads_nothing(client, upstream, hello):
    url = absolute(page(client).json["files"][0]["url"])
    answer = client.request("HEAD", url, accept=None)
    assert answer.code == 200
    assert answer.header("Content-Length") == str(len(hello[1]))
    assert upstream.count("/files/") == 1
    assert [k for k in client.context.storage.keys("blob/")] == []


def test_private_project_hides_mirror_unless_whitelisted(client, upstream, hello, alice):
    client.request("PUT", "/alice/dev", {"bases": "root/pypi"}, headers=alice)
    path = "/alice/dev/+simple/hello/"
    assert [f["filename"] for f in page(client, path).json["files"]] == [hello[0]]
    from .distfiles import upload_form

    filename, data = make_wheel("hello", "9.0")
    content_type, body = upload_form("hello", "9.0", filename, data)
    client.request("POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **alice})
    assert [f["filename"] for f in page(client, path).json["files"]] == [filename]
    client.request("PATCH", "/alice/dev", ["mirror_whitelist=hello"], headers=alice)
    assert sorted(f["filename"] for f in page(client, path).json["files"]) == sorted([filename, hello[0]])


def test_refresh_forces_a_fetch(client, upstream, hello):
    page(client)
    answer = client.request("POST", "/root/pypi/+simple/hello/refresh")
    assert answer.code == 302
    page(client)
    assert upstream.count("/simple/") == 2


def test_mirror_credentials_are_used_but_never_shown(client, upstream, hello, root):
    client.request("PATCH", "/root/pypi", ["mirror_url=http://user:secret@127.0.0.1:9/simple/"], headers=root)
    assert client.get("/root/pypi").json["result"]["mirror_url"] == "http://***@127.0.0.1:9/simple/"
    assert "secret" not in client.get("/").body.decode()
    assert page(client).code == 200


def test_cached_projects_listed(client, upstream, hello):
    page(client)
    assert client.get("/root/pypi").json["result"]["projects"] == ["hello"]
    listing = client.get("/root/pypi/+simple/", accept=PIP_ACCEPT).json
    assert listing["projects"] == [{"name": "hello"}]


def test_offline_mode_never_asks_upstream(tmp_path, upstream, hello):
    from treq.testing import StubTreq
    from twisted.internet import reactor

    from devpi_tx.auth.passwords import fast_hasher
    from devpi_tx.config import ServerConfig
    from devpi_tx.mirror.http import UpstreamHTTP
    from devpi_tx.service import build_context

    from .conftest import Client, synchronous, synchronous_passwords

    config = ServerConfig(
        serverdir=str(tmp_path / "s"),
        mirror_url="http://127.0.0.1:9/simple/",
        root_passwd_hash=fast_hasher().hash("rootpw"),
        offline_mode=True,
    )
    context = build_context(
        config,
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(upstream), reactor),
    )
    client = Client(context)
    assert page(client).code == 404
    assert upstream.requests == []
    context.close()


def test_offline_metadata_of_a_cached_wheel_comes_from_the_wheel(client, upstream, hello, monkeypatch):
    upstream.metadata = True  # offered upstream, but offline it is not asked
    url = absolute(page(client).json["files"][0]["url"])
    assert client.get(url, accept=None).code == 200  # the wheel is cached
    monkeypatch.setattr(client.context, "config", attrs.evolve(client.context.config, offline_mode=True))
    monkeypatch.setattr(client.context.mirror_files, "_offline", True)
    asked = len(upstream.requests)
    answer = client.get(url + ".metadata", accept=None)
    assert answer.code == 200
    assert answer.body.startswith(b"Metadata-Version: 2.1\nName: hello\n")
    assert len(upstream.requests) == asked


def test_truncated_download_leaves_nothing_and_is_retried(client, upstream, hello):
    url = absolute(page(client).json["files"][0]["url"])
    upstream.cut_files = True
    assert client.get(url, accept=None).code == 502
    assert list(client.context.storage.keys("blob/")) == []
    assert os.listdir(client.context.files.tmpdir) == []
    upstream.cut_files = False
    assert client.get(url, accept=None).body == hello[1]


def _upload(client, auth, stage, name, version):
    from .distfiles import upload_form

    filename, data = make_wheel(name, version)
    content_type, body = upload_form(name, version, filename, data)
    answer = client.request("POST", f"/{stage}/", raw=body, headers={"Content-Type": content_type, **auth})
    assert answer.code == 200
    return filename


# (whitelist of alice/base, whitelist of alice/dev, inheritance, private copy in, mirror served?)
WHITELIST_TABLE = [
    ("", "", "intersection", None, True),  # only upstream has it
    ("", "", "intersection", "alice/base", False),  # private copy hides the mirror
    ("", "", "intersection", "alice/dev", False),
    ("", "hello", "intersection", "alice/dev", False),  # not in every whitelist met
    ("hello", "hello", "intersection", "alice/dev", True),
    ("", "hello", "union", "alice/dev", True),  # one whitelist is enough
    ("*", "*", "intersection", "alice/base", True),
    ("hello", "", "union", "alice/base", True),
]


@pytest.mark.parametrize("base_wl, dev_wl, inheritance, private, served", WHITELIST_TABLE)
def test_whitelist_table(client, upstream, hello, alice, base_wl, dev_wl, inheritance, private, served):
    client.request("PUT", "/alice/base", {"bases": "root/pypi", "mirror_whitelist": base_wl}, headers=alice)
    client.request(
        "PUT",
        "/alice/dev",
        {"bases": "alice/base", "mirror_whitelist": dev_wl, "mirror_whitelist_inheritance": inheritance},
        headers=alice,
    )
    if private:
        _upload(client, alice, private, "hello", "9.0")
    files = [f["filename"] for f in page(client, "/alice/dev/+simple/hello/").json["files"]]
    assert (hello[0] in files) is served
    explained = client.get("/alice/dev/+explain/hello").json["result"]
    (mirror,) = [s for s in explained["stages"] if s["index"] == "root/pypi"]
    assert bool(mirror["files"]) is served
    assert ("mirror_whitelist" in mirror["reason"]) is (not served)


def test_metadata_taken_from_the_wheel_when_upstream_has_none(client, upstream, hello, monkeypatch):
    upstream.sizes = True
    # As if the wheel were large enough for its metadata to be advertised.
    monkeypatch.setattr(client.context.mirrors, "_metadata_min_size", len(hello[1]))
    monkeypatch.setattr(client.context.mirror_files, "_range_threshold", len(hello[1]))
    (entry,) = page(client).json["files"]
    assert entry["core-metadata"] is True
    html = client.get("/root/pypi/+simple/hello/", accept="text/html").body.decode()
    assert 'data-core-metadata="true"' in html
    answer = client.get(absolute(entry["url"]) + ".metadata", accept=None)
    assert answer.code == 200
    assert answer.body.startswith(b"Metadata-Version: 2.1\nName: hello\nVersion: 1.0\n")
    client.get(absolute(entry["url"]) + ".metadata", accept=None)
    # Once, with one range request (this small wheel's tail is all of it);
    # then from the store.  (tests/test_mirror_remotezip.py has the rest.)
    assert upstream.count("/files/") == 1
    assert upstream.ranges_asked[0][1].startswith("bytes=-")


@pytest.mark.parametrize(
    "sizes, min_size, advertised", [(False, 0, False), (True, 10**9, False), (True, 0, True)]
)
def test_synthesized_metadata_advertised_for_large_wheels_only(
    client, upstream, hello, monkeypatch, sizes, min_size, advertised
):
    """
    Without upstream metadata, a wheel's page entry advertises the
    metadata devpi-tx can read from it only when upstream says the wheel
    is large (small ones cost an installer no more to download); the
    .metadata URL answers either way.
    """
    upstream.sizes = sizes
    monkeypatch.setattr(client.context.mirrors, "_metadata_min_size", min_size)
    (entry,) = page(client).json["files"]
    assert ("core-metadata" in entry) is advertised
    html = client.get("/root/pypi/+simple/hello/", accept="text/html").body.decode()
    assert ("data-core-metadata" in html) is advertised
    answer = client.get(absolute(entry["url"]) + ".metadata", accept=None)
    assert answer.code == 200
    assert answer.body.startswith(b"Metadata-Version: 2.1\nName: hello\n")


def test_metadata_passed_through_from_upstream(client, upstream, hello):
    upstream.metadata = True
    (entry,) = page(client).json["files"]
    digest = entry["core-metadata"]["sha256"]
    answer = client.get(absolute(entry["url"]) + ".metadata", accept=None)
    assert answer.code == 200
    assert hashlib.sha256(answer.body).hexdigest() == digest
    # Only the .metadata file was fetched, not the wheel.
    assert [path for _, path in upstream.requests if path.startswith("/files/")] == [
        f"/files/{hello[0]}.metadata"
    ]


@pytest.mark.parametrize("mode", ["json", "html"])
def test_upstream_project_list_fetched_in_background(client, upstream, mode):
    from twisted.internet.defer import ensureDeferred

    from devpi_tx.model.stages import Stage

    from .conftest import result_of

    upstream.mode = mode
    for name in ("alpha", "beta", "gamma"):
        upstream.add(name, Release(*make_wheel(name, "1.0")))
    lists = client.context.project_lists
    (stage,) = lists.mirrors()
    assert stage == Stage("root/pypi", client.context.storage.get("user/root")["indexes"]["pypi"], True)
    d = ensureDeferred(lists.refresh(stage))
    client._flush(d)
    assert result_of(d) == 3
    assert client.get("/root/pypi").json["result"]["projects"] == ["alpha", "beta", "gamma"]
    listing = client.get("/root/pypi/+simple/", accept=PIP_ACCEPT).json
    assert [p["name"] for p in listing["projects"]] == ["alpha", "beta", "gamma"]


def test_no_project_list_when_disabled(client, root):
    client.request("PATCH", "/root/pypi", ["mirror_no_project_list=true"], headers=root)
    assert client.context.project_lists.mirrors() == []


def test_name_scanner_survives_chunk_boundaries():
    import io

    from devpi_tx.mirror.projectlist import NameScanner

    body = (
        b'{"meta": {}, "projects": [' + b", ".join(b'{"name": "proj-%04d"}' % i for i in range(500)) + b"]}"
    )
    out = io.StringIO()
    scanner = NameScanner("application/vnd.pypi.simple.v1+json", out)
    for start in range(0, len(body), 7):
        scanner.feed(body[start : start + 7])
    assert out.getvalue().split() == [f"proj-{i:04d}" for i in range(500)]


# -- project and version JSON of a mirror -------------------------------------------------


def test_project_json_of_a_mirror(client, upstream, hello):
    sdist = ("hello-2.0.tar.gz", b"sdist bytes")
    upstream.add("hello", Release(*sdist, yanked="broken"))
    answer = client.get("/root/pypi/hello")
    assert answer.code == 200, answer.body
    assert answer.json["type"] == "projectconfig"
    versions = answer.json["result"]
    assert sorted(versions) == ["1.0", "2.0"]
    one = versions["1.0"]
    assert one["name"] == "hello" and one["version"] == "1.0"
    assert one["requires_python"] == ">=3.8"
    assert "yanked" not in one
    (link,) = one["+links"]
    sha = hashlib.sha256(hello[1]).hexdigest()
    assert link == {
        "rel": "releasefile",
        "hash_spec": f"sha256={sha}",
        "hashes": {"sha256": sha},
        "href": f"http://127.0.0.1:3141/root/pypi/+f/{sha[:3]}/{sha[3:16]}/{hello[0]}",
    }
    assert versions["2.0"]["yanked"] == "broken"
    # The links download through this server.
    assert client.get(link["href"][len("http://127.0.0.1:3141") :], accept=None).body == hello[1]

    answer = client.get("/root/pypi/hello/2.0")
    assert answer.json["type"] == "versiondata"
    assert [x["href"].rsplit("/", 1)[1] for x in answer.json["result"]["+links"]] == [sdist[0]]
    answer = client.get("/root/pypi/hello/9.9")
    assert answer.code == 404
    assert answer.message == "The version 9.9 of project hello does not exist."


def test_project_json_of_a_mirror_without_files_or_project(client, upstream, root):
    upstream.add("empty")
    assert client.get("/root/pypi/empty").json["result"] == {}
    assert client.get("/root/pypi/nowhere").code == 404
    client.request("PATCH", "/root/pypi", ["mirror_cache_expiry=0"], headers=root)
    del upstream.projects["empty"]
    assert client.get("/root/pypi/empty").code == 404


def test_project_json_through_a_private_index(client, upstream, hello, alice):
    assert client.request("PUT", "/alice/dev", {"bases": "root/pypi"}, headers=alice).code == 200
    versions = client.get("/alice/dev/hello").json["result"]
    assert list(versions) == ["1.0"]
    assert "/root/pypi/+f/" in versions["1.0"]["+links"][0]["href"]
    assert client.get("/alice/dev/hello/1.0").json["result"]["version"] == "1.0"
    # ?ignore_bases: this index alone.
    assert client.get("/alice/dev/hello?ignore_bases").code == 404
    # A private copy hides the mirror (the simple page's whitelist rule).
    _upload(client, alice, "alice/dev", "hello", "3.0")
    assert list(client.get("/alice/dev/hello").json["result"]) == ["3.0"]


def test_project_json_when_upstream_fails(client, upstream, hello):
    # Nothing cached: as devpi (whose stale project list lacks it), no
    # such project; the message says why.
    upstream.fail_status = 500
    answer = client.get("/root/pypi/hello")
    assert answer.code == 404
    assert answer.message.startswith("no project 'hello'; root/pypi: upstream ")
    upstream.fail_status = None
    assert list(client.get("/root/pypi/hello").json["result"]) == ["1.0"]


def test_a_full_disk_while_storing_a_download_ends_it_for_every_waiter(client, upstream, hello, monkeypatch):
    """
    A store that raises ENOSPC when the file is committed: every request
    for the file gets an error (none hangs), no temporary file is left, and
    the next request starts the download again.
    """
    import errno

    url = absolute(page(client).json["files"][0]["url"])
    path = url.lstrip("/")
    store = client.context.files
    make_writer = store.writer

    def full_disk_writer(*args, **kwargs):
        writer = make_writer(*args, **kwargs)

        def commit_fails(durable: bool = True):
            # As the store's commit fails: its temporary file is gone.
            writer.abort()
            raise OSError(errno.ENOSPC, "No space left on device")

        writer.commit = commit_fails
        return writer

    monkeypatch.setattr(store, "writer", full_disk_writer)
    files = client.context.mirror_files
    entry = client.context.storage.get("file/" + path)
    first = files.download(path, entry)
    waiters = [first.wait("finished"), files.download(path, entry).wait("finished")]
    for waiting in waiters:
        client._flush(waiting)
    failures: list = []
    for waiting in waiters:
        waiting.addErrback(failures.append)
    assert len(failures) == 2
    assert all("No space left on device" in str(f.value) for f in failures)
    assert files._downloads == {}
    assert os.listdir(store.tmpdir) == []
    monkeypatch.setattr(store, "writer", make_writer)
    assert client.get(url, accept=None).body == hello[1]


def test_md5_links_are_shown_and_checked(client, upstream, root):
    """
    An old index gives md5 hashes only: devpi-tx shows them (page, project
    JSON) and checks the download against them.
    """
    good, bad = make_wheel("old", "1.0"), make_wheel("old", "2.0")
    upstream.mode = "html"
    upstream.add("old", Release(*good, hash_name="md5"), Release(*bad, hash_name="md5", wrong_hash=True))
    md5 = hashlib.md5(good[1]).hexdigest()
    files = page(client, "/root/pypi/+simple/old/").json["files"]
    assert [f["hashes"] for f in files][0] == {"md5": md5}
    html = client.get("/root/pypi/+simple/old/", accept="text/html").body.decode()
    assert f"#md5={md5}" in html
    versions = client.get("/root/pypi/old").json["result"]
    (link,) = versions["1.0"]["+links"]
    assert (link["hash_spec"], link["hashes"]) == (f"md5={md5}", {"md5": md5})
    base = "http://127.0.0.1:3141"
    assert client.get(link["href"][len(base) :], accept=None).body == good[1]
    (wrong,) = versions["2.0"]["+links"]
    answer = client.get(wrong["href"][len(base) :], accept=None)
    assert answer.code == 502
    assert b"md5 mismatch" in answer.body
    assert os.listdir(client.context.files.tmpdir) == []

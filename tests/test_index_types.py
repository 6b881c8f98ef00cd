"""
The index types' contract (L{IStageCustomizer}): defaults equal to today's
behaviour, and what a type of a plugin changes (validation, read-only,
principals, filters over simple pages, project and version JSON and
C{+explain}, hooks).
"""

from __future__ import annotations

import json
import urllib.parse

import pytest
from zope.interface.verify import verifyObject

from devpi_tx.customizers import BaseStageCustomizer, MirrorCustomizer, StageCustomizer
from devpi_tx.customizers.base import COMMON_PARSERS, TableCustomizer
from devpi_tx.interfaces import IStageCustomizer
from devpi_tx.model import values
from devpi_tx.model.errors import InvalidInput

from .distfiles import make_sdist, make_wheel, upload_form
from .fakeupstream import Release

JSON_V1 = "application/vnd.pypi.simple.v1+json"


class Hiding(TableCustomizer):
    """
    A type of a plugin: bases whose versions and files are hidden by name.
    """

    type_name = "hiding"
    filters = True
    parsers = {
        **COMMON_PARSERS,
        "bases": values.parse_list,
        "acl_upload": values.parse_acl,
        "hide_versions": values.parse_list,
        "hide_files": values.parse_list,
        "hide_projects": values.parse_list,
    }
    list_keys = frozenset(["bases", "acl_upload", "hide_versions", "hide_files", "hide_projects"])

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def defaults(self) -> dict:
        return {
            "type": "hiding",
            "bases": [],
            "volatile": True,
            "acl_upload": [],
            "hide_versions": [],
            "hide_files": [],
            "hide_projects": [],
        }

    def validate_config(self, oldconfig, newconfig) -> None:
        if "0" in newconfig["hide_versions"]:
            was = "none" if oldconfig is None else ",".join(oldconfig["hide_versions"]) or "none"
            raise InvalidInput(f"hiding: version 0 cannot be hidden (was {was})")

    def projects_filter(self, config, names):
        return [name not in config["hide_projects"] for name in names]

    def versions_filter(self, config, project, versions):
        return [version not in config["hide_versions"] for version in versions]

    def links_filter(self, config, project, links):
        return [link["basename"] not in config["hide_files"] for link in links]

    def on_created(self, stagename, config) -> None:
        self.calls.append(("created", stagename, config["type"]))

    def on_modified(self, stagename, oldconfig, newconfig) -> None:
        self.calls.append(("modified", stagename, oldconfig["hide_versions"], newconfig["hide_versions"]))

    def on_upload(self, stagename, project, version, link) -> None:
        self.calls.append(("upload", stagename, project, version, link["basename"]))


class Frozen(BaseStageCustomizer):
    type_name = "frozen"
    readonly = True


class Open(TableCustomizer):
    """
    Anyone logged in may upload, and bob may modify the index.
    """

    type_name = "open"
    parsers = {**COMMON_PARSERS, "bases": values.parse_list}

    def defaults(self) -> dict:
        return {"type": "open", "bases": [], "volatile": True}

    def principals_for_upload(self, config):
        return frozenset([":AUTHENTICATED:"])

    def principals_for_delete(self, config):
        return frozenset([":AUTHENTICATED:"])

    def principals_for_modify(self, config):
        return frozenset(["bob"])


class Secret(TableCustomizer):
    """
    Only the principals in C{acl_read} (and the owner) may read the index.
    """

    type_name = "secret"
    parsers = {**COMMON_PARSERS, "bases": values.parse_list, "acl_read": values.parse_acl}
    list_keys = frozenset(["bases", "acl_read"])

    def defaults(self) -> dict:
        return {"type": "secret", "bases": [], "volatile": True, "acl_upload": [], "acl_read": []}

    def principals_for_read(self, config):
        return frozenset(config["acl_read"])


class Broken(Hiding):
    type_name = "broken"

    def on_created(self, stagename, config) -> None:
        raise RuntimeError("the hook failed")


@pytest.fixture
def hiding(context) -> Hiding:
    customizer = Hiding()
    for each in (customizer, Frozen(), Open(), Secret(), Broken()):
        context.registry.register(each)
    return customizer


def upload(client, auth, path, name, version, filename=None, data=None):
    if filename is None:
        filename, data = make_sdist(name, version)
    content_type, body = upload_form(name, version, filename, data)
    return client.request("POST", path, raw=body, headers={"Content-Type": content_type, **auth}, accept=None)


def make_index(client, auth, path, **config):
    answer = client.request("PUT", path, config, headers=auth)
    assert answer.code == 200, answer.body
    return answer.json["result"]


@pytest.fixture
def chain(client, alice, hiding):
    """
    alice/dev with pkg 1.0, 2.0 and 3.0; alice/hide over it.
    """
    make_index(client, alice, "/alice/dev", bases=[])
    for version in ("1.0", "2.0", "3.0"):
        assert upload(client, alice, "/alice/dev/", "pkg", version).code == 200
    make_index(client, alice, "/alice/hide", type="hiding", bases=["alice/dev"], hide_versions=["1.0"])
    return alice


@pytest.mark.parametrize(
    "customizer", [StageCustomizer(), MirrorCustomizer(), BaseStageCustomizer(), Hiding(), Frozen(), Open()]
)
def test_providers(customizer):
    assert verifyObject(IStageCustomizer, customizer)


def test_defaults_are_todays_behaviour():
    stage, mirror = StageCustomizer(), MirrorCustomizer()
    config = {**stage.defaults(), "acl_upload": ["alice"]}
    assert stage.principals_for_upload(config) == {"alice"}
    assert stage.principals_for_delete(config) == {"alice"}
    assert stage.principals_for_toxresult_upload(config) == {":ANONYMOUS:"}
    assert stage.principals_for_modify(config) == frozenset()
    assert stage.principals_for_read(config) == {":ANONYMOUS:"}
    assert (stage.readonly, stage.is_mirror, stage.filters) == (False, False, False)
    assert (mirror.readonly, mirror.is_mirror, mirror.filters) == (True, True, False)
    assert mirror.principals_for_upload(mirror.defaults()) == frozenset()
    for customizer in (stage, mirror):
        assert customizer.projects_filter(config, ["a"]) is None
        assert customizer.versions_filter(config, "a", ["1"]) is None
        assert customizer.links_filter(config, "a", [{"basename": "a-1.tar.gz"}]) is None
        assert customizer.validate_config(None, config) is None


def files(answer) -> list[str]:
    return sorted(f["filename"] for f in answer.json["files"])


def test_simple_page_json_and_html_filtered(client, chain):
    page = client.get("/alice/hide/+simple/pkg/", accept=JSON_V1)
    assert page.code == 200, page.body
    assert files(page) == ["pkg-2.0.tar.gz", "pkg-3.0.tar.gz"]
    assert page.json["versions"] == ["2.0", "3.0"]
    html = client.get("/alice/hide/+simple/pkg/", accept="text/html").body.decode()
    assert "pkg-2.0.tar.gz" in html and "pkg-1.0.tar.gz" not in html
    # The base itself shows everything (and its cached pieces are its own).
    assert files(client.get("/alice/dev/+simple/pkg/", accept=JSON_V1)) == [
        "pkg-1.0.tar.gz",
        "pkg-2.0.tar.gz",
        "pkg-3.0.tar.gz",
    ]


def test_changing_the_filter_changes_the_page(client, chain):
    assert files(client.get("/alice/hide/+simple/pkg/", accept=JSON_V1)) == [
        "pkg-2.0.tar.gz",
        "pkg-3.0.tar.gz",
    ]
    answer = client.request(
        "PATCH", "/alice/hide", ["hide_files+=pkg-3.0.tar.gz", "hide_versions-=1.0"], headers=chain
    )
    assert answer.code == 200, answer.body
    assert files(client.get("/alice/hide/+simple/pkg/", accept=JSON_V1)) == [
        "pkg-1.0.tar.gz",
        "pkg-2.0.tar.gz",
    ]
    project = client.get("/alice/hide/pkg").json["result"]
    assert sorted(project) == ["1.0", "2.0", "3.0"]  # 3.0 is still there, without its file
    assert project["3.0"]["+links"] == []
    assert [link["href"].rsplit("/", 1)[1] for link in project["2.0"]["+links"]] == ["pkg-2.0.tar.gz"]


def test_project_and_version_json_filtered(client, chain):
    assert sorted(client.get("/alice/hide/pkg").json["result"]) == ["2.0", "3.0"]
    assert sorted(client.get("/alice/dev/pkg").json["result"]) == ["1.0", "2.0", "3.0"]
    assert client.get("/alice/hide/pkg/1.0").code == 404
    assert client.get("/alice/hide/pkg/2.0").code == 200
    # Again, from the page cache and the versions memo.
    assert sorted(client.get("/alice/hide/pkg").json["result"]) == ["2.0", "3.0"]
    assert sorted(client.get("/alice/dev/pkg").json["result"]) == ["1.0", "2.0", "3.0"]


def test_explain_shows_what_the_type_hid(client, chain):
    result = client.get("/alice/hide/+explain/pkg").json["result"]
    dev = next(stage for stage in result["stages"] if stage["index"] == "alice/dev")
    assert dev["files"] == ["pkg-1.0.tar.gz", "pkg-2.0.tar.gz", "pkg-3.0.tar.gz"]
    assert dev["hidden_by_index_type"] == ["pkg-1.0.tar.gz"]


def test_filter_applies_through_inheritance_not_to_the_inheritors_own(client, chain):
    make_index(client, chain, "/alice/top", bases=["alice/hide"])
    assert files(client.get("/alice/top/+simple/pkg/", accept=JSON_V1)) == [
        "pkg-2.0.tar.gz",
        "pkg-3.0.tar.gz",
    ]
    filename, data = make_sdist("pkg", "1.0")
    other = data + b"\0"  # not the base's file
    assert upload(client, chain, "/alice/top/", "pkg", "1.0", "pkg-1.0.zip", other).code == 200
    page = client.get("/alice/top/+simple/pkg/", accept=JSON_V1)
    assert files(page) == ["pkg-1.0.zip", "pkg-2.0.tar.gz", "pkg-3.0.tar.gz"]


def test_mirror_links_filtered(client, alice, hiding, upstream):
    filename, data = make_sdist("hello", "1.0")
    upstream.add("hello", Release(filename, data), Release(*make_sdist("hello", "2.0")), serial=5)
    make_index(client, alice, "/alice/hide", type="hiding", bases=["root/pypi"], hide_files=[filename])
    page = client.get("/alice/hide/+simple/hello/", accept=JSON_V1)
    assert files(page) == ["hello-2.0.tar.gz"]
    assert sorted(client.get("/alice/hide/hello").json["result"]) == ["1.0", "2.0"]
    assert client.get("/alice/hide/hello/1.0").json["result"]["+links"] == []
    assert len(client.get("/alice/hide/hello/2.0").json["result"]["+links"]) == 1
    assert files(client.get("/root/pypi/+simple/hello/", accept=JSON_V1)) == [filename, "hello-2.0.tar.gz"]


def test_whole_config_validation(client, alice, hiding):
    answer = client.request("PUT", "/alice/h", {"type": "hiding", "hide_versions": ["0"]}, headers=alice)
    assert answer.code == 400
    assert answer.message == "hiding: version 0 cannot be hidden (was none)"
    make_index(client, alice, "/alice/h", type="hiding", hide_versions=["1"])
    answer = client.request("PATCH", "/alice/h", ["hide_versions+=0"], headers=alice)
    assert answer.code == 400
    assert answer.message == "hiding: version 0 cannot be hidden (was 1)"
    assert client.get("/alice/h").json["result"]["hide_versions"] == ["1"]


def test_hooks(client, chain, hiding, context):
    client.request("PATCH", "/alice/hide", ["hide_versions=2.0"], headers=chain)
    client.request("PATCH", "/alice/hide", ["hide_versions=2.0"], headers=chain)  # no change, no call
    assert upload(client, chain, "/alice/hide/", "other", "1.0").code == 200
    assert hiding.calls == [
        ("created", "alice/hide", "hiding"),
        ("modified", "alice/hide", ["1.0"], ["2.0"]),
        ("upload", "alice/hide", "other", "1.0", "other-1.0.tar.gz"),
    ]
    # A failing hook is logged; what it followed stands.
    make_index(client, chain, "/alice/b", type="broken")
    assert client.get("/alice/b").code == 200


def test_read_only_type(client, alice, hiding):
    make_index(client, alice, "/alice/frozen", type="frozen")
    answer = upload(client, alice, "/alice/frozen/", "pkg", "1.0")
    assert answer.code == 404
    assert b"cannot submit to frozen index" in answer.body
    assert "pypisubmit" not in client.get("/alice/frozen/+api").json["result"]
    make_index(client, alice, "/alice/dev", bases=[])
    assert upload(client, alice, "/alice/dev/", "pkg", "1.0").code == 200
    push = {"name": "pkg", "version": "1.0", "targetindex": "alice/frozen"}
    answer = client.request("POST", "/alice/dev", push, headers=alice)
    assert answer.code == 400
    assert answer.message == "cannot push to frozen index alice/frozen"


def test_principals_come_from_the_type(client, alice, hiding):
    make_index(client, alice, "/alice/open", type="open")
    assert client.request("PUT", "/bob", {"password": "bobpw"}).code == 201
    bob = client.login("bob", "bobpw")
    assert upload(client, bob, "/alice/open/", "pkg", "1.0").code == 200
    assert upload(client, {}, "/alice/open/", "pkg", "2.0").code == 401
    assert client.request("PATCH", "/alice/open", ["title=Bob's"], headers=bob).code == 200
    assert client.request("DELETE", "/alice/open/pkg/1.0", headers=bob).code == 200
    # On a private index bob may do none of it.
    make_index(client, alice, "/alice/dev", bases=[])
    assert upload(client, bob, "/alice/dev/", "pkg", "1.0").code == 403
    assert client.request("PATCH", "/alice/dev", ["title=Bob's"], headers=bob).code == 403


def test_readers_come_from_the_type(client, alice, hiding):
    make_index(client, alice, "/alice/secret", type="secret", acl_read=["carol"])
    assert upload(client, alice, "/alice/secret/", "pkg", "1.0").code == 200
    for name in ("bob", "carol"):
        assert client.request("PUT", f"/{name}", {"password": f"{name}pw"}).code == 201
    bob, carol = client.login("bob", "bobpw"), client.login("carol", "carolpw")
    make_index(client, bob, "/bob/over", bases=["alice/secret"])
    paths = ["/alice/secret/+simple/pkg/", "/alice/secret/+simple/", "/alice/secret", "/alice/secret/pkg"]
    for path in [*paths, "/bob/over/+simple/pkg/"]:
        accept = "text/html" if "+simple" in path else "application/json"
        anonymous = client.get(path, accept=accept)
        assert anonymous.code == 401, path
        assert anonymous.headers.getRawHeaders("WWW-Authenticate") == ['Basic realm="pypi"']
        assert client.get(path, headers=bob, accept=accept).code == 403, path
        assert client.get(path, headers=carol, accept=accept).code == 200, path
    assert client.get("/alice/secret/+simple/pkg/", headers=alice, accept=JSON_V1).code == 200  # the owner
    href = client.get("/alice/secret/+simple/pkg/", headers=carol, accept=JSON_V1).json["files"][0]["url"]
    path = urllib.parse.urlsplit(urllib.parse.urljoin("/alice/secret/+simple/pkg/", href)).path
    assert path.startswith("/alice/secret/+f/")
    assert client.get(path, accept=None).code == 401
    assert client.get(path, headers=carol, accept=None).code == 200
    # Opened to everyone: no credentials asked for any more.
    assert client.request("PATCH", "/alice/secret", ["acl_read+=:ANONYMOUS:"], headers=alice).code == 200
    assert client.get("/alice/secret/+simple/pkg/", accept=JSON_V1).code == 200
    assert client.get("/bob/over/+simple/pkg/", accept=JSON_V1).code == 200


def test_index_json_lists_own_projects_as_the_type_shows_them(client, alice, hiding):
    make_index(client, alice, "/alice/hide", type="hiding", acl_upload=["alice"])
    for name in ("mine", "other"):
        assert upload(client, alice, "/alice/hide/", name, "1.0").code == 200
    assert client.get("/alice/hide").json["result"]["projects"] == ["mine", "other"]
    assert client.request("PATCH", "/alice/hide", ["hide_projects+=other"], headers=alice).code == 200
    for _ in range(2):  # made, then from the page cache
        assert client.get("/alice/hide").json["result"]["projects"] == ["mine"]


def test_push_takes_what_the_source_index_shows(client, alice, hiding):
    make_index(client, alice, "/alice/hide", type="hiding", acl_upload=["alice"], hide_versions=["1.0"])
    make_index(client, alice, "/alice/dev", bases=[])
    for version in ("1.0", "2.0"):
        assert upload(client, alice, "/alice/hide/", "pkg", version).code == 200
    wheel, data = make_wheel("pkg", "2.0")
    assert upload(client, alice, "/alice/hide/", "pkg", "2.0", wheel, data).code == 200
    assert client.request("PATCH", "/alice/hide", [f"hide_files+={wheel}"], headers=alice).code == 200

    def push(version):
        body = {"name": "pkg", "version": version, "targetindex": "alice/dev"}
        return client.request("POST", "/alice/hide", body, headers=alice)

    hidden = push("1.0")
    assert hidden.code == 400
    assert hidden.message == "there are no files for pkg 1.0 on stage alice/hide"
    answer = push("2.0")
    assert answer.code == 200, answer.body
    pushed = client.get("/alice/dev/pkg/2.0").json["result"]["+links"]
    assert [link["href"].rsplit("/", 1)[1] for link in pushed] == ["pkg-2.0.tar.gz"]


def test_api_unchanged_for_private_index(client, alice):
    make_index(client, alice, "/alice/dev", bases=[])
    assert json.loads(client.get("/alice/dev/+api").body)["result"]["pypisubmit"].endswith("/alice/dev/")


def test_project_list_filtered(client, chain):
    assert upload(client, chain, "/alice/dev/", "other", "1.0").code == 200
    answer = client.request("PATCH", "/alice/hide", ["hide_projects+=other"], headers=chain)
    assert answer.code == 200, answer.body
    for _ in range(2):  # made, then from the page cache
        names = [p["name"] for p in client.get("/alice/hide/+simple/", accept=JSON_V1).json["projects"]]
        assert names == ["pkg"]
        html = client.get("/alice/hide/+simple/", accept="text/html").body.decode()
        assert "pkg" in html and "other" not in html
    names = [p["name"] for p in client.get("/alice/dev/+simple/", accept=JSON_V1).json["projects"]]
    assert sorted(names) == ["other", "pkg"]

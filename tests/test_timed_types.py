"""
The C{minage} and C{cutoff} index types: their parsers, their filters as
tables of cases, the page cache's expiry on a fake clock, and indexes over
a private base and root/pypi.
"""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from devpi_tx.customizers import CutoffCustomizer, MinAgeCustomizer
from devpi_tx.customizers.timed import parse_cutoff, parse_min_age, parse_time, seconds
from devpi_tx.interfaces import IStageCustomizer
from devpi_tx.model import typefilters
from devpi_tx.model.errors import InvalidInput
from devpi_tx.model.stages import Contribution, Stage
from devpi_tx.web.pagecache import Page, PageCache

from .distfiles import make_sdist
from .fakeupstream import Release
from .test_index_types import JSON_V1, files, make_index, upload

DAY = 86400.0
NOW = parse_time("2026-01-31T00:00:00Z")


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def iso(when: float) -> str:
    from devpi_tx.model.releases import iso_time

    return iso_time(when)


def mirrored(name: str, when: float | None) -> dict:
    link = {"rel": "releasefile", "basename": name, "relpath": f"root/pypi/+f/{name}"}
    if when is not None:
        link["upload_time"] = iso(when)
    return link


def private(name: str, when: float) -> dict:
    return {
        "rel": "releasefile",
        "basename": name,
        "relpath": f"a/b/+f/{name}",
        "last_modified": when,
        "log": [],
    }


@pytest.mark.parametrize("customizer", [MinAgeCustomizer(), CutoffCustomizer()])
def test_providers(customizer):
    assert verifyObject(IStageCustomizer, customizer)
    assert customizer.readonly and customizer.filters and not customizer.is_mirror


@pytest.mark.parametrize(
    "given, parsed, secs",
    [
        ("7", "7", 7 * DAY),
        ("7d", "7d", 7 * DAY),
        (" 36 h", "36h", 36 * 3600.0),
        (90, "90", 90 * DAY),
        ("0", "0", 0),
    ],
)
def test_parse_min_age(given, parsed, secs):
    assert parse_min_age(given) == parsed
    assert seconds(parsed) == secs


@pytest.mark.parametrize("given", ["seven", "7w", "-1d", True, None, [7]])
def test_parse_min_age_refuses(given):
    with pytest.raises(InvalidInput, match="min_age: expected a duration"):
        parse_min_age(given)


@pytest.mark.parametrize(
    "given, parsed",
    [
        ("2024-05-01", "2024-05-01T00:00:00Z"),
        ("2024-05-01T12:30:00Z", "2024-05-01T12:30:00Z"),
        ("2024-05-01T14:30:00+02:00", "2024-05-01T12:30:00Z"),
    ],
)
def test_parse_cutoff(given, parsed):
    assert parse_cutoff(given) == parsed


@pytest.mark.parametrize("given", ["yesterday", "2024-13-01", 1714521600, None])
def test_parse_cutoff_refuses(given):
    with pytest.raises(InvalidInput, match="cutoff: expected a UTC time"):
        parse_cutoff(given)


@pytest.mark.parametrize(
    "min_age, link, shown",
    [
        ("7d", mirrored("a-1.tar.gz", NOW - 8 * DAY), True),
        ("7d", mirrored("a-1.tar.gz", NOW - 7 * DAY), True),  # exactly old enough
        ("7d", mirrored("a-1.tar.gz", NOW - 6 * DAY), False),
        ("7d", mirrored("a-1.tar.gz", None), False),  # unknown time: hidden
        ("7d", private("a-1.tar.gz", NOW - 60), True),  # private files exempt
        ("12h", mirrored("a-1.tar.gz", NOW - 13 * 3600), True),
        ("12h", mirrored("a-1.tar.gz", NOW - 11 * 3600), False),
        ("0", mirrored("a-1.tar.gz", None), True),  # no minimum: everything
    ],
)
def test_min_age_links(min_age, link, shown):
    customizer = MinAgeCustomizer(clock=Clock())
    config = {**customizer.defaults(), "min_age": min_age}
    flags = customizer.links_filter(config, "a", [link])
    assert (flags or [True]) == [shown]


def test_min_age_valid_until():
    customizer = MinAgeCustomizer(clock=Clock())
    config = {**customizer.defaults(), "min_age": "7d"}
    links = [
        mirrored("a-1.tar.gz", NOW - 30 * DAY),  # shown
        mirrored("a-2.tar.gz", NOW - 2 * DAY),  # shown in 5 days
        mirrored("a-3.tar.gz", NOW - 1 * DAY),  # in 6
        mirrored("a-4.tar.gz", None),  # never
        private("a-5.tar.gz", NOW),
    ]
    assert customizer.valid_until(config, "a", links) == NOW + 5 * DAY
    assert customizer.valid_until(config, "a", links[:1]) is None
    assert customizer.valid_until({**config, "min_age": "0"}, "a", links) is None


@pytest.mark.parametrize(
    "link, shown",
    [
        (mirrored("a-1.tar.gz", NOW - 1), True),
        (mirrored("a-1.tar.gz", NOW), True),  # at the cut-off: shown
        (mirrored("a-1.tar.gz", NOW + 1), False),
        (mirrored("a-1.tar.gz", None), False),  # unknown time: hidden
        (private("a-1.tar.gz", NOW - 1), True),
        (private("a-1.tar.gz", NOW + 1), False),  # private files too
        ({**mirrored("a-1.tar.gz", None), "upload_time": "2026-01-30T23:59:59.123456Z"}, True),
    ],
)
def test_cutoff_links(link, shown):
    customizer = CutoffCustomizer()
    config = {**customizer.defaults(), "cutoff": iso(NOW)}
    assert customizer.links_filter(config, "a", [link]) == [shown]
    assert getattr(customizer, "valid_until", None) is None  # time does not change its answer


def test_cutoff_needs_a_time():
    with pytest.raises(InvalidInput, match="needs a cutoff time"):
        CutoffCustomizer().validate_config(None, CutoffCustomizer().defaults())


def test_versions_left_without_files_are_hidden():
    customizer = MinAgeCustomizer(clock=Clock())
    config = {**customizer.defaults(), "min_age": "7d"}
    order = [Stage("a/view", config), Stage("root/pypi", {"type": "mirror"}, is_mirror=True)]
    links = [
        mirrored("a-1.tar.gz", NOW - 30 * DAY),
        mirrored("a-2.tar.gz", NOW - 30 * DAY),
        mirrored("a-2-py3-none-any.whl", NOW - DAY),
        mirrored("a-3.tar.gz", NOW - DAY),
    ]
    contributions = [
        Contribution("a/view", [], [], "x"),
        Contribution("root/pypi", links, ["1", "2", "3"], "m"),
    ]
    expiry = typefilters.Expiry()
    shown = typefilters.filter_contributions(None, order, "a", contributions, lambda c: customizer, expiry)
    assert [link["basename"] for link in shown[1].links] == ["a-1.tar.gz", "a-2.tar.gz"]
    assert shown[1].versions == ["1", "2"]
    assert expiry.at == NOW + 6 * DAY
    records = {
        v: {
            "name": "a",
            "version": v,
            "+links": [link for link in links if link["basename"].startswith(f"a-{v}")],
        }
        for v in ("1", "2", "3")
    }
    expiry = typefilters.Expiry()
    kept, changed = typefilters.filter_records(
        None, order, "a", "root/pypi", records, lambda c: customizer, expiry=expiry
    )
    assert sorted(kept) == ["1", "2"] and changed == {"2"}
    assert [link["basename"] for link in kept["2"]["+links"]] == ["a-2.tar.gz"]
    assert expiry.at == NOW + 6 * DAY


def test_page_cache_expiry():
    clock = Clock()
    cache = PageCache(clock=clock)
    cache.put(("a", "p", "html"), Page(b"kept", "e1", "html"))
    cache.put(("a", "q", "html"), Page(b"timed", "e2", "html", expires=NOW + 10))
    clock.now = NOW + 9
    assert cache.get(("a", "q", "html")).body == b"timed"
    clock.now = NOW + 10
    assert cache.get(("a", "q", "html")) is None
    assert len(cache) == 1 and cache.size == len(b"kept")
    assert cache.get(("a", "p", "html")).body == b"kept"


@pytest.fixture
def clock(context) -> Clock:
    clock = Clock()
    context.registry.register(MinAgeCustomizer(clock=clock), replace=True)
    context.page_cache.clock = clock
    return clock


def test_min_age_index(client, alice, upstream, clock):
    upstream.add(
        "hello",
        Release(*make_sdist("hello", "1.0"), upload_time=iso(NOW - 30 * DAY)),
        Release(*make_sdist("hello", "2.0"), upload_time=iso(NOW - 2 * DAY)),
        Release(*make_sdist("hello", "3.0")),  # no upload time: never shown
        serial=5,
    )
    make_index(client, alice, "/alice/dev", bases=[])
    assert upload(client, alice, "/alice/dev/", "pkg", "1.0").code == 200
    answer = client.request(
        "PUT",
        "/alice/aged",
        {"type": "minage", "bases": ["alice/dev", "root/pypi"], "min_age": "7d"},
        headers=alice,
    )
    assert answer.code == 200, answer.body
    assert answer.json["result"]["min_age"] == "7d"
    assert files(client.get("/alice/aged/+simple/hello/", accept=JSON_V1)) == ["hello-1.0.tar.gz"]
    assert sorted(client.get("/alice/aged/hello").json["result"]) == ["1.0"]
    # A private file is exempt, however new.
    assert files(client.get("/alice/aged/+simple/pkg/", accept=JSON_V1)) == ["pkg-1.0.tar.gz"]
    # The mirror itself shows everything.
    assert len(files(client.get("/root/pypi/+simple/hello/", accept=JSON_V1))) == 3
    # Time passes without a commit: the cached pages expire when 2.0 is old enough.
    clock.now = NOW + 5 * DAY - 1
    assert files(client.get("/alice/aged/+simple/hello/", accept=JSON_V1)) == ["hello-1.0.tar.gz"]
    assert sorted(client.get("/alice/aged/hello").json["result"]) == ["1.0"]
    clock.now = NOW + 5 * DAY
    assert files(client.get("/alice/aged/+simple/hello/", accept=JSON_V1)) == [
        "hello-1.0.tar.gz",
        "hello-2.0.tar.gz",
    ]
    assert sorted(client.get("/alice/aged/hello").json["result"]) == ["1.0", "2.0"]
    # A view: no uploads; a bad duration is refused.
    assert upload(client, alice, "/alice/aged/", "pkg", "3.0").code == 404
    answer = client.request("PATCH", "/alice/aged", ["min_age=soon"], headers=alice)
    assert answer.code == 400 and "min_age: expected a duration" in answer.message
    answer = client.request("PATCH", "/alice/aged", ["min_age=1h"], headers=alice)
    assert answer.code == 200, answer.body
    assert len(files(client.get("/alice/aged/+simple/hello/", accept=JSON_V1))) == 2


def test_cutoff_index(client, alice, upstream):
    upstream.add(
        "hello",
        Release(*make_sdist("hello", "1.0"), upload_time=iso(NOW - 30 * DAY)),
        Release(*make_sdist("hello", "2.0"), upload_time=iso(NOW + DAY)),
        Release(*make_sdist("hello", "3.0")),  # no upload time: hidden
        serial=5,
    )
    make_index(client, alice, "/alice/dev", bases=[])
    assert upload(client, alice, "/alice/dev/", "pkg", "1.0").code == 200
    answer = client.request(
        "PUT",
        "/alice/then",
        {"type": "cutoff", "bases": ["alice/dev", "root/pypi"], "cutoff": "2026-01-31"},
        headers=alice,
    )
    assert answer.code == 200, answer.body
    assert answer.json["result"]["cutoff"] == "2026-01-31T00:00:00Z"
    assert files(client.get("/alice/then/+simple/hello/", accept=JSON_V1)) == ["hello-1.0.tar.gz"]
    assert sorted(client.get("/alice/then/hello").json["result"]) == ["1.0"]
    # The private file was uploaded now, after the cut-off: hidden, the project with it.
    assert client.get("/alice/then/+simple/pkg/", accept=JSON_V1).code == 404
    answer = client.request("PATCH", "/alice/then", ["cutoff=2999-01-01"], headers=alice)
    assert answer.code == 200, answer.body
    assert files(client.get("/alice/then/+simple/pkg/", accept=JSON_V1)) == ["pkg-1.0.tar.gz"]
    assert files(client.get("/alice/then/+simple/hello/", accept=JSON_V1)) == [
        "hello-1.0.tar.gz",
        "hello-2.0.tar.gz",
    ]
    answer = client.request("PUT", "/alice/nothen", {"type": "cutoff", "bases": ["root/pypi"]}, headers=alice)
    assert answer.code == 400 and "needs a cutoff time" in answer.message
    answer = client.request("PATCH", "/alice/then", ["cutoff=someday"], headers=alice)
    assert answer.code == 400 and "cutoff: expected a UTC time" in answer.message


@pytest.mark.parametrize(
    "inheritance, own, base, mirrored",
    [
        ("intersection", [], [], False),
        ("intersection", ["*"], ["*"], True),
        ("intersection", ["hello"], [], False),  # the base does not agree
        ("union", ["*"], [], True),
        ("union", [], ["hello"], True),  # the base's list lets it in
        ("explicit", [], ["*"], False),  # the guard: the bases' lists do not count
        ("explicit", ["*"], ["*"], False),  # nor "*"
        ("explicit", ["hello"], [], True),  # only a name listed on the index itself
        ("explicit", ["Hello"], [], True),  # normalised
    ],
)
def test_dependency_confusion_guard(client, alice, upstream, inheritance, own, base, mirrored):
    upstream.add("hello", Release(*make_sdist("hello", "9.0")), serial=5)
    make_index(client, alice, "/alice/dev", bases=[], mirror_whitelist=base)
    assert upload(client, alice, "/alice/dev/", "hello", "1.0").code == 200
    make_index(
        client,
        alice,
        "/alice/g",
        bases=["alice/dev", "root/pypi"],
        mirror_whitelist=own,
        mirror_whitelist_inheritance=inheritance,
    )
    expected = ["hello-1.0.tar.gz", "hello-9.0.tar.gz"] if mirrored else ["hello-1.0.tar.gz"]
    assert sorted(files(client.get("/alice/g/+simple/hello/", accept=JSON_V1))) == expected
    assert sorted(client.get("/alice/g/hello").json["result"]) == (["1.0", "9.0"] if mirrored else ["1.0"])
    stages = client.get("/alice/g/+explain/hello").json["result"]["stages"]
    assert [s["files"] for s in stages if s["index"] == "root/pypi"] == [
        ["hello-9.0.tar.gz"] if mirrored else []
    ]


def test_explicit_inheritance_refuses_nonsense(client, alice):
    answer = client.request("PUT", "/alice/g", {"mirror_whitelist_inheritance": "some"}, headers=alice)
    assert answer.code == 400 and "'intersection', 'union' or 'explicit'" in answer.message


def test_min_age_explained(client, alice, upstream, clock):
    upstream.add(
        "hello",
        Release(*make_sdist("hello", "1.0"), upload_time=iso(NOW - 30 * DAY)),
        Release(*make_sdist("hello", "2.0"), upload_time=iso(NOW - 2 * DAY)),
        Release(*make_sdist("hello", "3.0")),
        serial=5,
    )
    make_index(client, alice, "/alice/aged", type="minage", bases=["root/pypi"], min_age="7d")
    stages = client.get("/alice/aged/+explain/hello").json["result"]["stages"]
    (mirror,) = [s for s in stages if s["index"] == "root/pypi"]
    assert mirror["hidden_by_index_type"] == ["hello-2.0.tar.gz", "hello-3.0.tar.gz"]
    assert mirror["index_type"] == {
        "hello-1.0.tar.gz": {"age_days": 30.0, "private": False, "shown_for_age": True},
        "hello-2.0.tar.gz": {"age_days": 2.0, "private": False, "shown_for_age": False},
        "hello-3.0.tar.gz": {"age_days": None, "private": False, "shown_for_age": False},
    }

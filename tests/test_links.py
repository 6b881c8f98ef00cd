"""
Link addresses: the relative links of served pages (the same as
posixpath.relpath gives, without its normalising for clean paths), and
the links read from upstream PEP 691 pages (absolute or relative, never
with a fragment).
"""

from __future__ import annotations

import json
import posixpath

import pytest

from devpi_tx.mirror.parse import UpstreamLink, parse_html, parse_json
from devpi_tx.web.simple import link_url

PAGE_DIRS = [
    "/",
    "/root/",
    "/root/pypi/",
    "/root/pypi/+simple/",
    "/root/pypi/+simple/proj/",
    "/root/pypi/+simple/proj",
    "/a/b/",
    "/a/b/c/",
    "/x//y/",
    "/r/./p/",
    "/r/../p/",
]
TARGETS = [
    "root/pypi/+f/abc/def0123456789/proj-1.0-py3-none-any.whl",
    "root/other/+f/1/2/f.tar.gz",
    "root/pypi/+simple/proj/f.whl",
    "root/pypi/+simple/proj/sub/f.whl",
    "root/pypi/x",
    "x.whl",
    "a",
    "a/b",
    "a/b/c",
    "a/b/c/d",
    "a/bc/x",
    "a/./b",
]


@pytest.mark.parametrize("page_dir", PAGE_DIRS)
@pytest.mark.parametrize("target", TARGETS)
def test_relative_links_are_what_relpath_makes(page_dir, target):
    assert link_url(page_dir, target, None) == posixpath.relpath("/" + target, page_dir)


def test_absolute_links_when_asked():
    assert link_url("/root/pypi/+simple/p/", "root/pypi/+f/a/b/f.whl", "https://h:1") == (
        "https://h:1/root/pypi/+f/a/b/f.whl"
    )


def test_upstream_links_are_resolved_and_lose_their_fragment():
    page = {
        "files": [
            {"filename": "a-1.whl", "url": "../../files/a-1.whl#sha256=00", "hashes": {"sha256": "ab"}},
            {"filename": "a-2.whl", "url": "https://files.test/a-2.whl#frag", "hashes": {}},
            {"filename": "a-3.whl", "url": "http://other.test/x/a-3.whl", "hashes": {}},
            {"filename": "a-4.whl", "url": "/top/a-4.whl", "hashes": {}},
        ]
    }
    links, _ = parse_json(json.dumps(page).encode(), "https://up.test/simple/a/")
    assert [link.url for link in links] == [
        "https://up.test/files/a-1.whl",
        "https://files.test/a-2.whl",
        "http://other.test/x/a-3.whl",
        "https://up.test/top/a-4.whl",
    ]


def test_a_link_as_json_leaves_out_what_is_unknown():
    link = UpstreamLink("a-1.whl", "https://up.test/a-1.whl", sha256="ab", size=3, yanked="bad")
    assert link.to_json() == {
        "filename": "a-1.whl",
        "url": "https://up.test/a-1.whl",
        "sha256": "ab",
        "yanked": "bad",
        "size": 3,
    }


def test_other_hashes_of_upstream_links_are_kept_when_there_is_no_sha256():
    md5 = "0123456789abcdef0123456789ABCDEF"
    html = (
        f'<a href="../../pkg/a-1.0.zip#md5={md5}">a-1.0.zip</a>'
        '<a href="../../pkg/a-1.1.zip#md5=short">a-1.1.zip</a>'
        f'<a href="../../pkg/a-1.2.zip#sha256={"e" * 64}">a-1.2.zip</a>'
        '<a href="../../pkg/a-2.0%2Blocal.tar.gz"></a>'
    ).encode()
    links = parse_html(html, "http://up.test/simple/a/")
    assert [(link.filename, link.sha256, link.hash_spec) for link in links] == [
        ("a-1.0.zip", None, f"md5={md5.lower()}"),
        ("a-1.1.zip", None, None),
        ("a-1.2.zip", "e" * 64, None),
        # No text: the name is the URL's, unquoted; the URL stays quoted.
        ("a-2.0+local.tar.gz", None, None),
    ]
    assert links[3].url == "http://up.test/pkg/a-2.0%2Blocal.tar.gz"
    page = {"files": [{"filename": "a-1.0.zip", "url": "a-1.0.zip", "hashes": {"md5": md5, "blake3": "x"}}]}
    (link,) = parse_json(json.dumps(page).encode(), "http://up.test/simple/a/")[0]
    assert (link.sha256, link.hash_spec) == (None, f"md5={md5.lower()}")


@pytest.mark.parametrize(
    "target, quoted",
    [
        ("root/pypi/+f/abc/def/a-2.0+local.tar.gz", "root/pypi/+f/abc/def/a-2.0+local.tar.gz"),
        ("root/pypi/+e/0123/a 1.0#x?.zip", "root/pypi/+e/0123/a%201.0%23x%3F.zip"),
        ("root/pypi/+e/0123/a-1.0%.zip", "root/pypi/+e/0123/a-1.0%25.zip"),
        ("root/pypi/+e/0123/ä-1.0.zip", "root/pypi/+e/0123/%C3%A4-1.0.zip"),
    ],
)
def test_links_are_quoted_where_a_path_needs_it(target, quoted):
    assert link_url("/", target, None) == quoted
    assert link_url("/root/pypi/+simple/a/", target, "http://h") == "http://h/" + quoted

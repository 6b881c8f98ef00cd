"""
Reading upstream simple pages: PEP 691 JSON and PEP 503 HTML, into one
list of links with what installers need (hash, requires-python, yanked,
core metadata).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urljoin

import attrs


class PageError(ValueError):
    """
    The upstream answer is not a simple page.
    """


@attrs.frozen
class UpstreamLink:
    filename: str
    url: str
    sha256: str | None = None
    #: Another hash upstream gave when it gave no sha256 (C{md5=<hex>}):
    #: checked on download and shown as devpi shows it.
    hash_spec: str | None = None
    requires_python: str | None = None
    yanked: str | bool | None = None
    core_metadata: str | bool | None = None  # sha256 of the metadata, or True
    size: int | None = None
    upload_time: str | None = None

    def to_json(self) -> dict:
        # attrs.asdict walks every value for nested attrs classes; these
        # are flat, and a cold page converts every link.
        return {
            field.name: value for field in _LINK_FIELDS if (value := getattr(self, field.name)) is not None
        }


_LINK_FIELDS = attrs.fields(UpstreamLink)


def _absolute(base_url: str, url: str) -> str:
    """
    C{url} resolved against C{base_url}, without its fragment.  Upstream
    pages mostly link with absolute URLs, which need no resolving.
    """
    if url.startswith(("https://", "http://")):
        return url.partition("#")[0]
    return urldefrag(urljoin(base_url, url))[0]


def _hash_from_fragment(fragment: str) -> str | None:
    name, _, value = fragment.partition("=")
    if name == "sha256" and len(value) == 64:
        return value.lower()
    return None


#: The other hashes a link may carry (PEP 503: any of hashlib's guaranteed
#: ones), by the length of their hex digest.
OTHER_HASHES = {"md5": 32, "sha1": 40, "sha224": 56, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"[0-9a-fA-F]+")


def _other_hash(name: str, value: object) -> str | None:
    """
    C{name=value} as a hash spec, if it is a hash devpi-tx can check.
    """
    if isinstance(value, str) and OTHER_HASHES.get(name) == len(value) and _HEX.fullmatch(value):
        return f"{name}={value.lower()}"
    return None


def _metadata_value(value) -> str | bool | None:
    if value is None or value is False:
        return None
    if isinstance(value, dict):
        return value.get("sha256") or True
    if isinstance(value, str):
        return _hash_from_fragment(value) or True
    return True


def parse_json(body: bytes, base_url: str) -> tuple[list[UpstreamLink], list[str]]:
    try:
        data = json.loads(body)
        files = data["files"]
    except (ValueError, KeyError, TypeError):
        raise PageError("upstream answered invalid PEP 691 JSON") from None
    links = []
    for entry in files:
        if not isinstance(entry, dict) or "filename" not in entry or "url" not in entry:
            continue
        url = _absolute(base_url, entry["url"])
        hashes = entry.get("hashes") if isinstance(entry.get("hashes"), dict) else {}
        sha256 = hashes.get("sha256") or None
        others = (_other_hash(name, value) for name, value in hashes.items())
        meta = entry.get("core-metadata", entry.get("dist-info-metadata"))
        yanked = entry.get("yanked")
        size = entry.get("size")
        links.append(
            UpstreamLink(
                filename=entry["filename"],
                url=url,
                sha256=sha256,
                hash_spec=None if sha256 else next((spec for spec in others if spec), None),
                requires_python=entry.get("requires-python") or None,
                yanked=None if yanked in (None, False) else yanked,
                core_metadata=_metadata_value(meta),
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                upload_time=entry.get("upload-time") or None,
            )
        )
    versions = [v for v in data.get("versions", []) if isinstance(v, str)]
    return links, versions


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict, list[str]]] = []
        self._current: tuple[dict, list[str]] | None = None
        self.base: str | None = None

    def handle_starttag(self, tag, attrs_):
        if tag == "base":
            self.base = dict(attrs_).get("href") or self.base
        elif tag == "a":
            self._current = (dict(attrs_), [])
            self.anchors.append(self._current)

    def handle_endtag(self, tag):
        if tag == "a":
            self._current = None

    def handle_data(self, data):
        if self._current is not None:
            self._current[1].append(data)


def parse_html(body: bytes, base_url: str) -> list[UpstreamLink]:
    parser = _AnchorParser()
    parser.feed(body.decode("utf-8", "replace"))
    parser.close()
    base = urljoin(base_url, parser.base) if parser.base else base_url
    links = []
    for attributes, text in parser.anchors:
        href = attributes.get("href")
        if not href:
            continue
        url, fragment = urldefrag(urljoin(base, href))
        filename = "".join(text).strip() or unquote(url.rsplit("/", 1)[-1])
        sha256 = _hash_from_fragment(fragment)
        name, _, value = fragment.partition("=")
        yanked = attributes.get("data-yanked")
        meta = attributes.get("data-core-metadata", attributes.get("data-dist-info-metadata"))
        links.append(
            UpstreamLink(
                filename=filename,
                url=url,
                sha256=sha256,
                hash_spec=None if sha256 else _other_hash(name, value),
                requires_python=attributes.get("data-requires-python") or None,
                yanked=None if yanked is None else (yanked or True),
                core_metadata=_metadata_value(meta),
            )
        )
    return links

"""
Speaking to an upstream simple index (PEP 503 HTML, PEP 691 JSON): a
project's page, asked conditionally (ETag), with the serial upstream
reports.  The transport, errors and body reading are L{.http}'s; they are
named here too, for the modules that speak to upstream through this one.
"""

from __future__ import annotations

from urllib.parse import quote

import attrs

from ..model.indexes import redact_url as redact
from .bodies import collect_until_idle, read_body
from .errors import UpstreamError, UpstreamTimeout, gateway_status, upstream_error
from .http import (
    MAX_BODY,
    MAX_KEPT_CONNECTIONS,
    MAX_REDIRECTS,
    UpstreamHTTP,
    WholeResponse,
    ask_upstream,
    fetch_whole,
    make_http_client,
    split_credentials,
)
from .parse import PageError, UpstreamLink, parse_html, parse_json

__all__ = [
    "ACCEPT",
    "JSON_V1",
    "MAX_BODY",
    "MAX_KEPT_CONNECTIONS",
    "MAX_REDIRECTS",
    "Fetched",
    "NotFoundUpstream",
    "NotModified",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamHTTP",
    "UpstreamTimeout",
    "WholeResponse",
    "ask_upstream",
    "collect_until_idle",
    "fetch_whole",
    "gateway_status",
    "make_http_client",
    "read_body",
    "redact",
    "split_credentials",
    "upstream_error",
]

JSON_V1 = "application/vnd.pypi.simple.v1+json"
#: PEP 691 JSON first, HTML as the fallback.
ACCEPT = f"{JSON_V1}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"


@attrs.frozen
class Fetched:
    links: list[UpstreamLink]
    versions: list[str]
    etag: str | None
    serial: int | None


class NotModified(Exception):
    pass


class NotFoundUpstream(Exception):
    pass


class UpstreamClient:
    """
    Fetch project pages from upstream simple indexes.
    """

    def __init__(self, http: UpstreamHTTP, timeout: float) -> None:
        self._http = http
        self._timeout = timeout

    async def project_page(self, mirror_url: str, project: str, etag: str | None = None) -> Fetched:
        """
        @raise NotModified: upstream answered 304 to C{etag}.
        @raise NotFoundUpstream: upstream has no such project.
        @raise UpstreamError: anything else went wrong.
        """
        headers = {"Accept": ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        # The name as a path segment: a '#' or '?' in it must not end the path.
        page = f"{mirror_url.rstrip('/')}/{quote(project, safe='')}/"
        response = await fetch_whole(self._http, "GET", page, headers=headers, timeout=self._timeout)
        url, body = response.url, response.body
        if response.code == 304:
            raise NotModified()
        if response.code == 404:
            raise NotFoundUpstream()
        if response.code != 200:
            raise UpstreamError(f"{redact(url)}: upstream answered {response.code}")
        content_type = response.header("content-type") or ""
        serial_header = response.header("x-pypi-last-serial")
        try:
            serial = int(serial_header) if serial_header is not None else None
        except ValueError:
            serial = None
        try:
            # devpi's rule: JSON by its type, or by its first character
            # (upstreams that send no type at all).
            if content_type.startswith(JSON_V1) or (not content_type and body.lstrip()[:1] == b"{"):
                links, versions = parse_json(body, url)
            else:
                links, versions = parse_html(body, url), []
        except PageError as exc:
            raise UpstreamError(f"{redact(url)}: {exc}") from None
        new_etag = response.header("etag")
        return Fetched(links, versions, new_etag, serial)

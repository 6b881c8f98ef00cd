"""
Upstream requests honour http_proxy and no_proxy.
"""

from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from devpi_tx.mirror.client import UpstreamClient, UpstreamError, make_http_client

from .conftest import on_loopback


class Proxy(Resource):
    """
    Answers every request itself, as a proxy in front of upstream would,
    and keeps the request URIs (absolute when sent to a proxy).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.uris: list[bytes] = []
        self.authorizations: list[bytes | None] = []

    def render_GET(self, request):
        self.uris.append(request.uri)
        self.authorizations.append(request.getHeader(b"proxy-authorization"))
        request.setHeader("Content-Type", "application/vnd.pypi.simple.v1+json")
        files = [{"filename": "hello-1.0.tar.gz", "url": "hello-1.0.tar.gz", "hashes": {}}]
        return json.dumps({"meta": {"api-version": "1.1"}, "name": "hello", "files": files}).encode()


@pytest.fixture
def proxy():
    resource = Proxy()
    with on_loopback(Site(resource)) as port:
        yield resource, f"http://127.0.0.1:{port}"


@pytest_twisted.ensureDeferred
async def test_http_upstream_goes_through_the_proxy(proxy):
    resource, proxy_url = proxy
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = UpstreamClient(make_http_client(reactor, pool, {"http_proxy": proxy_url}), timeout=5)
    page = await client.project_page("http://upstream.invalid/simple/", "hello")
    assert resource.uris == [b"http://upstream.invalid/simple/hello/"]
    assert [link.filename for link in page.links] == ["hello-1.0.tar.gz"]
    assert page.links[0].url == "http://upstream.invalid/simple/hello/hello-1.0.tar.gz"
    assert resource.authorizations == [None]


@pytest_twisted.ensureDeferred
async def test_http_proxy_credentials_are_sent_to_the_proxy(proxy):
    resource, proxy_url = proxy
    pool = HTTPConnectionPool(reactor, persistent=False)
    with_credentials = proxy_url.replace("http://", "http://alice:s%40cret@")
    client = UpstreamClient(make_http_client(reactor, pool, {"http_proxy": with_credentials}), timeout=5)
    await client.project_page("http://upstream.invalid/simple/", "hello")
    assert resource.authorizations == [b"Basic " + base64.b64encode(b"alice:s@cret")]


@pytest_twisted.ensureDeferred
async def test_no_proxy_hosts_are_reached_directly(proxy):
    resource, proxy_url = proxy
    pool = HTTPConnectionPool(reactor, persistent=False)
    environ = {"http_proxy": proxy_url, "no_proxy": "localhost,127.0.0.1"}
    client = UpstreamClient(make_http_client(reactor, pool, environ), timeout=5)
    # Directly to a closed loopback port: refused, and the proxy saw nothing.
    with pytest.raises(UpstreamError, match="refused"):
        await client.project_page("http://127.0.0.1:9/simple/", "hello")
    assert resource.uris == []

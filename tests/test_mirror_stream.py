"""
A mirrored file's first download, over real connections: served to its
requesters while it arrives, shared between them, and never passed off as
complete when upstream fails halfway.
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import urljoin

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.config import ServerConfig
from devpi_tx.mirror.client import make_http_client
from devpi_tx.service import build_context, make_site

from .conftest import synchronous_passwords
from .distfiles import make_wheel
from .fakeupstream import FakeUpstream, Release

SIZE = 2 * 1024 * 1024


@pytest.fixture
def setup(tmp_path):
    upstream = FakeUpstream()
    filename, data = make_wheel("big", "1.0", payload=os.urandom(SIZE))
    upstream.add("big", Release(filename, data))
    up_port = pytest_twisted.blockon(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(upstream))
    )
    pool = HTTPConnectionPool(reactor, persistent=False)
    config = ServerConfig(
        serverdir=str(tmp_path / "s"),
        mirror_url=f"http://127.0.0.1:{up_port.getHost().port}/simple/",
        root_passwd_hash=fast_hasher().hash("rootpw"),
    )
    context = build_context(
        config, passwords=synchronous_passwords(), upstream_http=make_http_client(reactor, pool)
    )
    port = pytest_twisted.blockon(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(make_site(context))
    )
    client_pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=client_pool))
    yield upstream, context, f"http://127.0.0.1:{port.getHost().port}", client, (filename, data)
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(up_port.stopListening())
    context.close()


async def file_url(client, base: str) -> str:
    response = await client.get(
        base + "/root/pypi/+simple/big/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    page = await response.json()
    return urljoin(base + "/root/pypi/+simple/big/", page["files"][0]["url"])


@pytest_twisted.ensureDeferred
async def test_first_bytes_arrive_before_the_download_ends_and_are_shared(setup):
    upstream, context, base, client, (filename, data) = setup
    url = await file_url(client, base)
    upstream.file_delay = 0.01
    linked: Deferred = Deferred()

    def watch(serial, changes) -> None:
        if not linked.called and any(key.startswith("blob/") for key in changes):
            linked.callback(None)

    context.storage.subscribe(watch)
    first = await client.get(url, unbuffered=True)
    assert first.code == 200
    assert first.length == len(data)
    # Headers came before upstream finished: the file is not stored yet.
    assert list(context.storage.keys("blob/")) == []
    second = await client.get(url, unbuffered=True)
    bodies = [await treq.content(first), await treq.content(second)]
    assert bodies == [data, data]
    assert upstream.count("/files/") == 1
    # The clients may have every byte before the server has fsynced and
    # linked the file; it is linked right after.
    await linked.addTimeout(10, reactor)
    assert list(context.storage.keys("blob/")) == [f"blob/{hashlib.sha256(data).hexdigest()}"]


@pytest_twisted.ensureDeferred
async def test_upstream_cut_halfway_aborts_the_client(setup):
    upstream, context, base, client, (filename, data) = setup
    url = await file_url(client, base)
    upstream.file_delay = 0.005
    upstream.cut_files = True
    response = await client.get(url, unbuffered=True)
    assert response.code == 200
    with pytest.raises(Exception):  # noqa: B017 - any failure, never a clean short body
        await treq.content(response)
    assert list(context.storage.keys("blob/")) == []
    assert os.listdir(context.files.tmpdir) == []
    upstream.cut_files = False
    upstream.file_delay = None
    again = await client.get(url)
    assert await again.content() == data


@pytest_twisted.ensureDeferred
async def test_upstream_metadata_comes_over_a_real_connection_and_is_checked(setup):
    upstream, context, base, client, (filename, data) = setup
    upstream.metadata = True
    url = await file_url(client, base)
    response = await client.get(url + ".metadata")
    assert response.code == 200
    body = await response.content()
    assert body.startswith(b"Metadata-Version") and b"Name: big" in body
    assert filename not in upstream.served  # the wheel itself was not downloaded
    assert any(path.endswith(".metadata") for method, path in upstream.requests)


@pytest_twisted.ensureDeferred
async def test_an_http10_upstream_without_lengths_or_types(tmp_path):
    """
    An old-school index (HTTP/1.0, no Content-Length or Content-Type,
    relative links with md5 or sha256 fragments, a mirror_url without a
    trailing slash): pages, project JSON and the files (whose ends are the
    ends of their connections) all come through.
    """
    from .legacy_upstream import LegacyFile, LegacyIndex, serve

    index = LegacyIndex()
    md5_file, sha_file = make_wheel("old", "1.0"), make_wheel("old", "2.0")
    index.add("old", LegacyFile(*md5_file, hash_name="md5"), LegacyFile(*sha_file))
    legacy, url = serve(index)
    config = ServerConfig(
        serverdir=str(tmp_path / "s"), mirror_url=url, root_passwd_hash=fast_hasher().hash("rootpw")
    )
    context = build_context(
        config,
        passwords=synchronous_passwords(),
        upstream_http=make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False)),
    )
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(make_site(context))
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        response = await client.get(base + "/root/pypi/old", headers={"Accept": "application/json"})
        versions = (await response.json())["result"]
        assert sorted(versions) == ["1.0", "2.0"]
        for version, (_, data) in (("1.0", md5_file), ("2.0", sha_file)):
            (link,) = versions[version]["+links"]
            response = await client.get(link["href"], timeout=10)
            assert response.code == 200
            assert await response.content() == data
        assert [p for p in index.requests if p.startswith("/pkg/")] == [
            f"/pkg/{md5_file[0]}",
            f"/pkg/{sha_file[0]}",
        ]
    finally:
        await port.stopListening()
        context.close()
        legacy.shutdown()
        legacy.server_close()

"""
A server whose release files are in S3 (moto on loopback), over real
connections: an upload goes to the bucket, downloads are streamed from it
(whole, and a byte range) or redirected to it, and a wheel's METADATA
(PEP 658) is read from the wheel in the bucket.
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import urljoin
from urllib.request import Request, urlopen

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.config import ServerConfig
from devpi_tx.interfaces import IRemoteFileStore
from devpi_tx.mirror.client import make_http_client
from devpi_tx.service import build_context, make_site
from devpi_tx.storage.s3 import make_client

from .conftest import basic, synchronous_passwords
from .distfiles import make_wheel, upload_form
from .fakeupstream import FakeUpstream, Release

pytestmark = pytest.mark.scaleout


@pytest.fixture(params=[False, True], ids=["stream", "redirect"])
def server(request, tmp_path, s3_bucket):
    s3, bucket = s3_bucket
    config = ServerConfig(
        serverdir=str(tmp_path / "s"),
        mirror_url="http://127.0.0.1:9/simple/",
        root_passwd_hash=fast_hasher().hash("rootpw"),
        access_log="off",
        files=f"s3://{bucket}/devpi",
        files_redirect=request.param,
    )
    context = build_context(
        config,
        passwords=synchronous_passwords(),
        upstream_http=make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False)),
    )
    port = pytest_twisted.blockon(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(make_site(context))
    )
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    yield context, f"http://127.0.0.1:{port.getHost().port}", client, s3.client(), bucket
    pytest_twisted.blockon(port.stopListening())
    context.close()


async def _upload(client, base: str, filename: str, data: bytes) -> str:
    auth = basic("root", "rootpw")
    answer = await client.put(base + "/root/dev", json={"bases": []}, headers=auth)
    assert answer.code == 200, await answer.text()
    content_type, body = upload_form("big", filename.split("-")[1], filename, data)
    answer = await client.post(base + "/root/dev/", data=body, headers={"Content-Type": content_type, **auth})
    assert answer.code == 200, await answer.text()
    sha = hashlib.sha256(data).hexdigest()
    return f"{base}/root/dev/+f/{sha[:3]}/{sha[3:16]}/{filename}"


async def _get(client, url: str, headers: dict | None = None):
    """
    GET C{url}; a redirect (to the store) is followed by hand, once.
    """
    response = await client.get(url, headers=headers or {}, allow_redirects=False)
    if response.code == 302:
        location = response.headers.getRawHeaders("Location")[0]
        assert location.startswith(os.environ["AWS_ENDPOINT_URL"])
        assert response.headers.getRawHeaders("Cache-Control") == ["no-store"]
        await response.content()
        response = await client.get(location, headers=headers or {}, allow_redirects=False)
        response.redirected = True
    else:
        response.redirected = False
    return response, await response.content()


@pytest_twisted.ensureDeferred
async def test_upload_download_range_and_metadata_from_s3(server):
    context, base, client, s3, bucket = server
    assert IRemoteFileStore.providedBy(context.files)
    # Larger than the upload spool: its METADATA is read from the bucket.
    filename, data = make_wheel("big", "1.0", payload=os.urandom(1024 * 1024))
    assert len(data) > 512 * 1024
    url = await _upload(client, base, filename, data)
    sha = hashlib.sha256(data).hexdigest()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"devpi/{sha[:3]}/{sha[3:]}" in keys
    assert not os.path.exists(os.path.join(context.config.serverdir, "+files"))

    response, body = await _get(client, url)
    assert response.redirected is context.config.files_redirect
    assert response.code == 200 and body == data
    assert response.length == len(data)  # (treq takes Content-Length out of the headers)
    if not response.redirected:
        assert response.headers.getRawHeaders("ETag") == [f'"{sha}"']
        assert response.headers.getRawHeaders("Accept-Ranges") == ["bytes"]

    response, body = await _get(client, url, {"Range": "bytes=1000-1999"})
    assert response.code == 206 and body == data[1000:2000]
    assert response.headers.getRawHeaders("Content-Range") == [f"bytes 1000-1999/{len(data)}"]

    response, body = await _get(client, url, {"Range": "bytes=-10"})
    assert response.code == 206 and body == data[-10:]

    response, body = await _get(client, url, {"Range": f"bytes={len(data)}-"})
    assert response.code == 416
    if not response.redirected:
        # (moto, and S3, send no "Content-Range: bytes */size" with it.)
        assert body == b""

    if not response.redirected:
        response = await client.get(url, headers={"If-None-Match": f'"{sha}"'})
        assert response.code == 304
        # (Twisted's client gives no length for a HEAD: urllib, in a thread.)
        head = await deferToThread(lambda: urlopen(Request(url, method="HEAD"), timeout=10))
        assert head.status == 200 and head.headers["Content-Length"] == str(len(data))
        assert head.headers["ETag"] == f'"{sha}"' and head.read() == b""

    response, body = await _get(client, url + ".metadata")
    assert response.code == 200 and body.startswith(b"Metadata-Version") and b"Name: big" in body
    assert response.headers.getRawHeaders("Content-Type") == ["text/plain; charset=utf-8"]


@pytest_twisted.ensureDeferred
async def test_metadata_lost_in_the_bucket_is_made_again_from_the_wheel(server):
    context, base, client, s3, bucket = server
    filename, data = make_wheel("big", "2.0")
    url = await _upload(client, base, filename, data)
    page = await client.get(
        base + "/root/dev/+simple/big/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    digest = (await page.json())["files"][0]["core-metadata"]["sha256"]
    await context.derived_blobs.flush()
    assert context.files.exists(digest)
    context.files.remove(digest)
    response = await client.get(url + ".metadata", allow_redirects=False)
    assert response.code in (200, 302)
    await response.content()
    assert context.files.exists(digest)


@pytest_twisted.ensureDeferred
async def test_a_file_missing_from_the_bucket_is_an_error(server):
    context, base, client, s3, bucket = server
    if context.config.files_redirect:
        pytest.skip("a redirect is not checked against the bucket")
    filename, data = make_wheel("big", "1.0")
    url = await _upload(client, base, filename, data)
    context.files.remove(hashlib.sha256(data).hexdigest())
    response = await client.get(url)
    assert response.code == 500


@pytest.fixture
def mirror(tmp_path, s3_bucket):
    """
    A server with its files in S3 whose root/pypi mirrors a fake upstream
    on loopback.
    """
    _, bucket = s3_bucket
    upstream = FakeUpstream()
    filename, data = make_wheel("big", "1.0", payload=os.urandom(2 * 1024 * 1024))
    upstream.add("big", Release(filename, data))
    up_port = pytest_twisted.blockon(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(upstream))
    )
    config = ServerConfig(
        serverdir=str(tmp_path / "s"),
        mirror_url=f"http://127.0.0.1:{up_port.getHost().port}/simple/",
        root_passwd_hash=fast_hasher().hash("rootpw"),
        access_log="off",
        files=f"s3://{bucket}/devpi",
    )
    context = build_context(
        config,
        passwords=synchronous_passwords(),
        upstream_http=make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False)),
    )
    port = pytest_twisted.blockon(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(make_site(context))
    )
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    yield upstream, context, f"http://127.0.0.1:{port.getHost().port}", client, data
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(up_port.stopListening())
    context.close()


@pytest_twisted.ensureDeferred
async def test_a_mirrored_file_is_cached_in_s3_and_served_from_there(mirror):
    upstream, context, base, client, data = mirror
    page = await client.get(
        base + "/root/pypi/+simple/big/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    url = urljoin(base + "/root/pypi/+simple/big/", (await page.json())["files"][0]["url"])
    first = await client.get(url)
    assert await first.content() == data
    sha = hashlib.sha256(data).hexdigest()
    for _ in range(100):  # committed to the bucket after the client has every byte
        if list(context.storage.keys("blob/")):
            break
        await deferLater(reactor, 0.05)
    assert context.files.exists(sha)
    again = await client.get(url, headers={"Range": "bytes=10-19"})
    assert again.code == 206 and await again.content() == data[10:20]
    assert upstream.count("/files/") == 1


@pytest_twisted.ensureDeferred
async def test_an_unreachable_store_is_a_503_with_one_line(server, monkeypatch):
    context, base, client, s3, bucket = server
    await _upload(client, base, *make_wheel("big", "1.0"))
    # The store goes away (nothing listens on the discard port).
    dead = make_client("http://127.0.0.1:9", "us-east-1")
    monkeypatch.setattr(context.files, "_client", dead)
    filename, data = make_wheel("big", "2.0")
    content_type, body = upload_form("big", "2.0", filename, data)
    headers = {"Content-Type": content_type, "Accept": "application/json", **basic("root", "rootpw")}
    answer = await client.post(base + "/root/dev/", data=body, headers=headers)
    assert answer.code == 503
    message = (await answer.json())["message"]
    assert message.startswith(f"file store unavailable: s3://{bucket} (") and "\n" not in message
    assert "EndpointConnectionError" in message
    # Nothing was committed: the version is not there.
    answer = await client.get(base + "/root/dev/big", headers={"Accept": "application/json"})
    assert sorted((await answer.json())["result"]) == ["1.0"]

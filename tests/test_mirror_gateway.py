"""
What a client gets when upstream fails and nothing is cached, over real
connections: 504 when upstream did not answer within the request timeout,
502 when it answered with an error; a cached page is served either way,
with a warning.  Transfers that stall halfway are given up.
"""

from __future__ import annotations

import os
from urllib.parse import urljoin

import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError as DeadlinePassed
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from devpi_tx.config import ServerConfig
from devpi_tx.mirror.client import make_http_client
from devpi_tx.mirror.projectlist import ProjectLists
from devpi_tx.model.stages import Stage
from devpi_tx.service import build_context, make_site

from .conftest import synchronous_passwords
from .distfiles import make_wheel
from .fakeupstream import CannedAnswer, FakeUpstream, Release

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}


@pytest.fixture
def gateway(request, tmp_path):
    """
    devpi-tx with a request timeout of 0.3 s (or the test's parameter;
    files wait twelve times as long), its upstream, its base URL and a
    client.
    """
    timeout = getattr(request, "param", 0.3)
    upstream = FakeUpstream()
    upstream.add("hello", Release(*make_wheel("hello", "1.0")))
    up_port = pytest_twisted.blockon(
        serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(upstream))
    )
    config = ServerConfig(
        serverdir=str(tmp_path / "s"),
        mirror_url=f"http://127.0.0.1:{up_port.getHost().port}/simple/",
        request_timeout=timeout,
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
    yield upstream, context, f"http://127.0.0.1:{port.getHost().port}", client
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(up_port.stopListening())
    context.close()


@pytest_twisted.ensureDeferred
async def test_a_silent_upstream_is_a_gateway_timeout_a_failing_one_a_bad_gateway(gateway):
    upstream, context, base, client = gateway
    upstream.silent = True
    answer = await client.get(base + "/root/pypi/+simple/hello/", headers=JSON)
    assert answer.code == 504
    assert "no answer for 0.3 s" in await answer.text()
    upstream.silent = False
    upstream.fail_status = 503
    answer = await client.get(base + "/root/pypi/+simple/hello/", headers=JSON)
    assert answer.code == 502
    assert "503" in await answer.text()


@pytest_twisted.ensureDeferred
async def test_a_cached_page_is_served_when_upstream_goes_silent(gateway):
    upstream, context, base, client = gateway
    assert (await client.get(base + "/root/pypi/+simple/hello/", headers=JSON)).code == 200
    context.mirrors.forget("root/pypi", "hello")
    upstream.silent = True
    answer = await client.get(base + "/root/pypi/+simple/hello/", headers=JSON)
    assert answer.code == 200
    assert "no answer" in answer.headers.getRawHeaders("X-Devpi-Mirror-Warning")[0]
    assert [f["filename"] for f in (await answer.json())["files"]] == ["hello-1.0-py3-none-any.whl"]


@pytest.mark.parametrize("gateway", [0.1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_an_uncached_file_from_a_silent_upstream_is_a_gateway_timeout(gateway):
    upstream, context, base, client = gateway
    page = await (await client.get(base + "/root/pypi/+simple/hello/", headers=JSON)).json()
    url = urljoin(base + "/root/pypi/+simple/hello/", page["files"][0]["url"])
    upstream.silent = True
    for method in ("GET", "HEAD"):
        answer = await client.request(method, url)
        assert answer.code == 504, method
        await answer.content()
    assert list(context.storage.keys("blob/")) == []


@pytest.mark.parametrize("gateway", [0.1], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_download_that_stalls_is_abandoned_and_the_next_request_starts_again(gateway):
    upstream, context, base, client = gateway
    filename, data = make_wheel("stall", "1.0", payload=os.urandom(300_000))
    upstream.add("stall", Release(filename, data))
    page = await (await client.get(base + "/root/pypi/+simple/stall/", headers=JSON)).json()
    url = urljoin(base + "/root/pypi/+simple/stall/", page["files"][0]["url"])
    upstream.file_delay = 30.0  # one piece, then nothing for half a minute
    response = await client.get(url, unbuffered=True)
    assert response.code == 200
    with pytest.raises(Exception) as caught:  # noqa: B017 - any failure, never a clean short body
        await treq.content(response).addTimeout(10, reactor)
    assert not caught.errisinstance(DeadlinePassed)
    assert list(context.storage.keys("blob/")) == []
    assert os.listdir(context.files.tmpdir) == []
    upstream.file_delay = None
    again = await client.get(url)
    assert await again.content() == data
    assert upstream.count("/files/") == 2


@pytest_twisted.ensureDeferred
async def test_a_project_list_that_stalls_is_given_up_and_can_be_fetched_again(tmp_path, canned):
    head = b'{"meta":{"api-version":"1.1"},"projects":[{"name":"alpha"},'
    stalled_list = canned(CannedAnswer(head, headers={b"Content-Type": JSON["Accept"].encode()}, stall=True))
    lists = ProjectLists(
        None,
        make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False)),
        str(tmp_path),
        timeout=0.2,
    )
    stage = Stage("root/pypi", {"type": "mirror", "mirror_url": stalled_list}, is_mirror=True)
    errors: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "devpi_tx.mirror" and "error" in event:
            errors.append(event["error"])

    globalLogPublisher.addObserver(observe)
    try:
        # The deadline only keeps a failing run short.
        assert await ensureDeferred(lists.refresh(stage)).addTimeout(10, reactor) is None
    finally:
        globalLogPublisher.removeObserver(observe)
    (error,) = errors
    assert "no data for 0.2 s" in error
    assert not lists.has_list("root/pypi")
    assert os.listdir(tmp_path / "+mirrorlists") == []
    assert lists._running == set()

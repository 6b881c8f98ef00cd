"""
The agent of direct upstream connections: connections kept between
requests, retried once when the server closed a kept one, bounded in
number and in idle time, and none kept when keeping is off.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from treq import content
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import Clock
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from devpi_tx.mirror.client import DirectEndpoints
from devpi_tx.mirror.keptalive import KeptAliveAgent, host_header, retryable

from .conftest import on_loopback


class Counting(Resource):
    """
    Answers every GET with its path; remembers which connection asked and
    the Host and Connection headers it sent.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.channels: list[object] = []
        self.hosts: list[bytes | None] = []
        self.connection: list[bytes | None] = []

    def render_GET(self, request):
        self.channels.append(request.channel)
        self.hosts.append(request.getHeader(b"host"))
        self.connection.append(request.getHeader(b"connection"))
        return request.path


@pytest.fixture
def server():
    resource = Counting()
    with on_loopback(Site(resource)) as port:
        yield resource, f"http://127.0.0.1:{port}".encode()


def agent(clock=None, max_kept=4, idle_timeout=60.0) -> KeptAliveAgent:
    return KeptAliveAgent(
        clock or reactor,
        DirectEndpoints(reactor, BrowserLikePolicyForHTTPS()),
        max_kept=max_kept,
        idle_timeout=idle_timeout,
    )


async def get(client: KeptAliveAgent, url: bytes) -> bytes:
    response = await client.request(b"GET", url, Headers())
    return await content(response)


def test_it_is_an_agent():
    assert verifyObject(IAgent, agent())


def test_the_host_header_names_the_port_only_when_not_the_default():
    assert host_header(b"http", b"example.org", 80) == b"example.org"
    assert host_header(b"https", b"example.org", 443) == b"example.org"
    assert host_header(b"http", b"127.0.0.1", 8080) == b"127.0.0.1:8080"
    assert host_header(b"https", b"example.org", 80) == b"example.org:80"


def test_only_idempotent_requests_without_a_body_are_sent_again():
    from twisted.python.failure import Failure
    from twisted.web.client import ResponseNeverReceived

    lost = ResponseNeverReceived([Failure(ConnectionError("closed"))])
    assert retryable(b"GET", lost, None)
    assert not retryable(b"POST", lost, None)
    assert not retryable(b"GET", lost, object())
    assert not retryable(b"GET", ValueError("bad"), None)


@pytest_twisted.ensureDeferred
async def test_a_connection_is_kept_for_the_next_request(server):
    resource, url = server
    client = agent()
    assert await get(client, url + b"/one") == b"/one"
    assert await get(client, url + b"/two") == b"/two"
    assert resource.channels[0] is resource.channels[1]
    assert resource.hosts == [url[len(b"http://") :]] * 2
    assert resource.connection == [None, None]
    await client.close_idle()


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_get_connections_of_their_own_and_keep_at_most_max_kept(server):
    resource, url = server
    client = agent(max_kept=3)
    await gatherResults([ensureDeferred(get(client, url + b"/%d" % n)) for n in range(6)])
    assert len(set(map(id, resource.channels))) == 6
    first = list(resource.channels)
    await gatherResults([ensureDeferred(get(client, url + b"/again/%d" % n)) for n in range(6)])
    again = resource.channels[6:]
    assert len({id(c) for c in again} & {id(c) for c in first}) == 3
    await client.close_idle()


@pytest_twisted.ensureDeferred
async def test_a_kept_connection_the_server_closed_is_replaced_without_an_error(server):
    resource, url = server
    client = agent()
    await get(client, url + b"/one")
    # The server drops the idle connection while it sits in the agent
    # (before the agent notices: the request is written to a dead socket).
    resource.channels[0].transport.abortConnection()
    assert await get(client, url + b"/two") == b"/two"
    assert resource.channels[1] is not resource.channels[0]
    await client.close_idle()


@pytest_twisted.ensureDeferred
async def test_with_keeping_off_every_request_asks_the_server_to_close(server):
    resource, url = server
    client = agent(max_kept=0)
    await get(client, url + b"/one")
    await get(client, url + b"/two")
    assert resource.connection == [b"close", b"close"]
    assert resource.channels[0] is not resource.channels[1]


@pytest_twisted.ensureDeferred
async def test_idle_connections_are_closed_after_the_idle_timeout(server):
    resource, url = server
    clock = Clock()
    client = agent(clock, idle_timeout=10)
    await get(client, url + b"/one")
    clock.advance(5)
    await get(client, url + b"/two")  # idle for 5 s: still kept
    assert resource.channels[1] is resource.channels[0]
    clock.advance(9)
    assert clock.getDelayedCalls()  # the sweep is still to come
    clock.advance(1)  # idle for 10 s since the second request: closed
    assert not clock.getDelayedCalls()
    await get(client, url + b"/three")
    assert resource.channels[2] is not resource.channels[0]
    await client.close_idle()

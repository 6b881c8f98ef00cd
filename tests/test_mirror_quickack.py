"""
Upstream connections: no resolver for IP addresses, and data acknowledged
at once (TCP_NODELAY, TCP_QUICKACK re-armed after each read).
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from zope.interface.verify import verifyObject

from devpi_tx.mirror.http import _tcp_endpoint
from devpi_tx.mirror.quickack import QuickAckEndpoint


@pytest.mark.parametrize(
    "host, kind",
    [
        ("127.0.0.1", TCP4ClientEndpoint),
        ("::1", TCP6ClientEndpoint),
        ("[::1]", TCP6ClientEndpoint),
        ("upstream.invalid", HostnameEndpoint),
    ],
)
def test_ip_addresses_are_not_resolved(host, kind):
    assert isinstance(_tcp_endpoint(reactor, host, 80, timeout=5), kind)


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Client(Protocol):
    def __init__(self):
        self.received = Deferred()
        self.options_after_read = None

    def dataReceived(self, data):
        handle = self.transport.getHandle()
        self.options_after_read = handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        self.received.callback(data)


@pytest_twisted.ensureDeferred
async def test_quickack_endpoint_gives_back_the_callers_protocol():
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Echo))
    try:
        endpoint = QuickAckEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        verifyObject(IStreamClientEndpoint, endpoint)
        client = await endpoint.connect(Factory.forProtocol(Client))
        assert isinstance(client, Client)
        client.transport.write(b"ping")
        assert await client.received == b"ping"
        assert client.options_after_read != 0  # TCP_NODELAY set on the real socket
        client.transport.loseConnection()
    finally:
        await port.stopListening()

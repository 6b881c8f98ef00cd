"""
HTTP in memory: a server factory (the production L{DevpiSite}, with its
request class) and a client connected through L{twisted.test.iosim}
transports, pumped by the test.  No sockets, no real reactor: everything
the server schedules goes to the L{MemoryReactorClock} given to it.

L{InMemoryAgent} is an L{IAgent} (for treq's L{HTTPClient}); L{RawClient}
writes bytes of the test's choosing, for what an agent will not send (a
head without its body, half a body, a connection dropped mid-request).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 3141)
CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 31337)


class Connections:
    """
    Connects client protocols to new protocols of C{server} (a factory);
    L{flush} moves bytes both ways until nothing moves.

    @ivar client_address: the address new connections come from (a test
        may change it between requests).
    """

    def __init__(self, server: IProtocolFactory, clock) -> None:
        self._server = server
        self._clock = clock
        self._pumps: list[iosim.IOPump] = []
        self.client_address = CLIENT_ADDRESS

    def connect(self, client_protocol) -> iosim.IOPump:
        client_address = self.client_address
        server_protocol = self._server.buildProtocol(client_address)
        server_transport = iosim.FakeTransport(
            server_protocol, isServer=True, hostAddress=SERVER_ADDRESS, peerAddress=client_address
        )
        client_transport = iosim.FakeTransport(
            client_protocol, isServer=False, hostAddress=client_address, peerAddress=SERVER_ADDRESS
        )
        pump = iosim.connect(
            server_protocol,
            server_transport,
            client_protocol,
            client_transport,
            greet=False,
            clock=self._clock,
        )
        self._pumps.append(pump)
        return pump

    def flush(self) -> bool:
        """
        Pump every open connection until it is quiet (advancing the clock
        by nothing, so that C{callLater(0, ...)} calls run); forget the
        closed ones.  Returns whether any bytes moved.
        """
        moved = False
        for pump in self._pumps:
            moved = pump.flush() or moved
        self._pumps = [p for p in self._pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
        return moved


@implementer(IStreamClientEndpoint)
class _Endpoint:
    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def connect(self, factory) -> Deferred:
        protocol = factory.buildProtocol(SERVER_ADDRESS)
        self._connections.connect(protocol)
        return succeed(protocol)


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    def __init__(self, connections: Connections) -> None:
        self._connections = connections

    def endpointForURI(self, uri) -> _Endpoint:
        return _Endpoint(self._connections)


def in_memory_agent(connections: Connections, clock) -> Agent:
    """
    Twisted's own L{Agent}, each request on a new in-memory connection.
    """
    return Agent.usingEndpointFactory(clock, _EndpointFactory(connections))


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body written at once (treq's default producer would write
    it through the global reactor's cooperator).
    """

    def __init__(self, body: bytes | str) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.length = len(self.body)

    def startProducing(self, consumer) -> Deferred:
        consumer.write(self.body)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class RawClient(Protocol):
    """
    Writes what the test says and keeps what the server answers.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed = True

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        self.transport.loseConnection()

    @property
    def status_line(self) -> bytes:
        return self.received.split(b"\r\n", 1)[0]

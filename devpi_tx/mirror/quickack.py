"""
Upstream connections that acknowledge what they receive at once.

An upstream that writes a response's head and body in two sends, with
Nagle's algorithm on (most Python servers), holds the body back until the
head is acknowledged; Linux delays that acknowledgement by up to 40 ms
once a connection looks interactive.  Every project page fetched on such a
connection then costs a round trip plus 40 ms.  The connection is made
with C{TCP_NODELAY} (our requests go out whole) and C{TCP_QUICKACK} is set
again after every read, because the kernel clears it on its own.
"""

from __future__ import annotations

import socket

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

#: Linux only; elsewhere connections are left as they are.
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _set(transport, option: int | None) -> None:
    if option is None:
        return
    try:
        transport.getHandle().setsockopt(socket.IPPROTO_TCP, option, 1)
    except (AttributeError, OSError):
        pass  # not a TCP socket (a test transport), or already closed


class _QuickAck(ProtocolWrapper):
    def makeConnection(self, transport) -> None:
        _set(transport, socket.TCP_NODELAY)
        _set(transport, _QUICKACK)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        _set(self.transport, _QUICKACK)
        super().dataReceived(data)


class _QuickAckFactory(WrappingFactory):
    protocol = _QuickAck
    noisy = False


@implementer(IStreamClientEndpoint)
class QuickAckEndpoint:
    """
    Wrap a TCP client endpoint so that its connections acknowledge data
    at once (see the module docstring).  Put it under any TLS layer.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._endpoint.connect(_QuickAckFactory(protocolFactory))
        # Callers (the connection pool) expect their own protocol back.
        return connecting.addCallback(lambda wrapper: wrapper.wrappedProtocol)

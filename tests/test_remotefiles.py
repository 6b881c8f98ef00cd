"""
The relay of a remote store's answer body to a client (L{BodyRelay}):
backpressure passed on, a clean end finishes the request, a broken one
cuts the client, a client gone stops the store's side.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from devpi_tx.web.remotefiles import BodyRelay


class FakeRequest:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer = None
        self.finished = False
        self.lost = False
        self.finish_waiters: list[Deferred] = []

    def registerProducer(self, producer, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def notifyFinish(self) -> Deferred:
        d: Deferred = Deferred()
        self.finish_waiters.append(d)
        return d

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True

    def loseConnection(self) -> None:
        self.lost = True


class FakeTransport:
    """
    The response's transport: a producer of the store's body.
    """

    def __init__(self) -> None:
        self.state = "producing"

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


def relay() -> tuple[FakeRequest, FakeTransport, BodyRelay]:
    request, transport = FakeRequest(), FakeTransport()
    body = BodyRelay(request)
    body.makeConnection(transport)
    return request, transport, body


def test_backpressure_and_a_clean_end():
    request, transport, body = relay()
    assert request.producer is body
    body.dataReceived(b"abc")
    request.producer.pauseProducing()  # the client's connection is full
    assert transport.state == "paused"
    request.producer.resumeProducing()
    assert transport.state == "producing"
    body.dataReceived(b"def")
    body.connectionLost(Failure(ResponseDone()))
    assert request.written == [b"abc", b"def"] and request.finished and not request.lost
    assert request.producer is None and body.done.called


def test_store_breaking_off_cuts_the_client():
    request, transport, body = relay()
    body.dataReceived(b"abc")
    body.connectionLost(Failure(ConnectionLost()))
    assert request.lost and not request.finished and body.done.called


def test_client_gone_stops_the_store_side():
    request, transport, body = relay()
    request.finish_waiters[0].errback(Failure(ConnectionLost()))
    assert transport.state == "stopped" and body.done.called
    body.dataReceived(b"late")
    body.connectionLost(Failure(ConnectionLost()))
    assert request.written == [] and not request.lost


def test_cancelled_relay_drops_the_client():
    request, transport, body = relay()
    cancelled = []
    body.done.addErrback(lambda failure: cancelled.append(failure.trap(CancelledError)))
    body.done.cancel()
    assert transport.state == "stopped" and request.lost and cancelled == [CancelledError]


def test_a_store_that_stalls_cuts_the_client_but_a_slow_client_does_not():
    clock = Clock()
    request, transport = FakeRequest(), FakeTransport()
    body = BodyRelay(request, clock, idle=30)
    body.makeConnection(transport)
    body.dataReceived(b"abc")
    clock.advance(29)
    body.dataReceived(b"def")  # progress: a new allowance
    clock.advance(29)
    assert not request.lost
    request.producer.pauseProducing()  # the client is slow: no allowance runs
    clock.advance(300)
    assert not request.lost
    request.producer.resumeProducing()
    clock.advance(30)  # the store sends nothing more
    assert request.lost and not request.finished and body.done.called
    assert transport.state == "stopped"
    assert clock.getDelayedCalls() == []


def test_a_clean_end_leaves_no_timer():
    clock = Clock()
    request, transport = FakeRequest(), FakeTransport()
    body = BodyRelay(request, clock, idle=30)
    body.makeConnection(transport)
    body.dataReceived(b"abc")
    body.connectionLost(Failure(ResponseDone()))
    assert request.finished and clock.getDelayedCalls() == []

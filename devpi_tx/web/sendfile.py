"""
Large file bodies with zero-copy C{sendfile(2)} in a worker thread.

Copying a file through Python on the reactor thread caps a server at what
one core can copy.  For plain TCP connections the kernel can move bytes
from the page cache to the socket itself: once the response headers have
left Twisted's buffer, a worker thread calls C{os.sendfile} on a duplicate
of the socket's descriptor (the duplicate keeps the socket alive even if
the reactor closes its own descriptor meanwhile), waiting with C{poll} when
the socket is full.  The reactor thread does nothing for the file's bytes,
so other requests are answered meanwhile and several downloads use several
cores.  TLS connections, or transports that do not expose their buffer,
use the ordinary producer instead (L{SendfileBody.usable} says which).

The worker threads are a L{SendfileWorkers}, which the site carries and
the service tree stops (after the web servers, telling transfers still
under way to end); the reactor (timers, the threads' results) is the one
given to L{SendfileBody}.  L{serve_file} gives the site's.
"""

from __future__ import annotations

import os
import select
import threading
from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.iweb import IRequest

from .._compat import tcp_write_pending
from ..logs import logger

log = logger("devpi_tx.sendfile")

#: Bodies smaller than this are not worth a thread.
MIN_SIZE = 1024 * 1024
#: Bytes per sendfile call.
STEP = 8 * 1024 * 1024


class SendfileWorkers:
    """
    The worker threads that run C{sendfile(2)}, started with the first
    transfer, and the transfers under way, which L{stop} tells to end so
    that the threads end even when a client has stopped reading.
    """

    def __init__(self, reactor, maxthreads: int = 32) -> None:
        self._reactor = reactor
        self._maxthreads = maxthreads
        self._pool: ThreadPool | None = None
        self._active: set[SendfileBody] = set()
        self._stopped = False

    @property
    def running(self) -> bool:
        return not self._stopped

    def run(self, body: SendfileBody, sock: int) -> Deferred[int]:
        """
        Run C{body}'s transfer on C{sock} in a worker thread.
        """
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=self._maxthreads, name="devpi-tx-sendfile")
            self._pool.start()
        self._active.add(body)
        d = deferToThreadPool(self._reactor, self._pool, body._send, sock)
        return d.addBoth(lambda result: (self._active.discard(body), result)[1])

    def stop(self) -> None:
        """
        End the transfers under way and the threads (each notices within a
        second, at its next wait for the socket).
        """
        self._stopped = True
        for body in list(self._active):
            body._stop()
        if self._pool is not None:
            self._pool.stop()
            self._pool = None


class SendfileBody:
    """
    Send C{length} bytes of C{file} from C{offset} as the body of a request
    whose headers are set.
    """

    @staticmethod
    def usable(request: IRequest, length: int, workers: SendfileWorkers | None) -> bool:
        transport = getattr(request.channel, "transport", None)
        return (
            workers is not None
            and workers.running
            and hasattr(os, "sendfile")
            and length >= MIN_SIZE
            and transport is not None
            and not ISSLTransport.providedBy(transport)
            and hasattr(transport, "fileno")
            and tcp_write_pending(transport) is not None
        )

    def __init__(
        self,
        request: IRequest,
        file: IO[bytes],
        offset: int,
        length: int,
        *,
        path: str,
        reactor,
        workers: SendfileWorkers,
    ) -> None:
        self._reactor = reactor
        self._workers = workers
        self._request = request
        self._file = file
        self._offset = offset
        self._length = length
        self._path = path
        self._stopped = threading.Event()
        self._keepalive = LoopingCall(self._touch)
        self._keepalive.clock = reactor
        #: Fires when the request is finished or the client has gone away;
        #: cancelling it stops the transfer.
        self.done: Deferred[None] = Deferred(lambda d: self._stop())
        #: Fires once the transfer is over and the file closed: after
        #: C{done} when the client goes away (the thread notices at its
        #: next send).
        self.released: Deferred[None] = Deferred()

    def start(self) -> Deferred[None]:
        self._request.notifyFinish().addErrback(lambda reason: self._stop())
        self._request.write(b"")  # the headers
        self._when_flushed()
        return self.done

    def _touch(self) -> None:
        # Nothing passes through the channel while the thread sends, so
        # keep its idle timeout from firing.
        reset = getattr(self._request.channel, "resetTimeout", None)
        if reset is not None:
            reset()

    def _stop(self) -> None:
        self._stopped.set()

    def _when_flushed(self) -> None:
        if self._stopped.is_set():
            self._file.close()
            self._fire()
            self.released.callback(None)
            return
        transport = self._request.channel.transport
        if tcp_write_pending(transport):
            self._reactor.callLater(0.001, self._when_flushed)
            return
        sock = os.dup(transport.fileno())
        self._keepalive.start(5, now=False)
        self._workers.run(self, sock).addBoth(self._sent, sock)

    def _send(self, sock: int) -> int:
        """
        In the worker thread: the transfer itself.
        """
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        source = self._file.fileno()
        offset, remaining = self._offset, self._length
        while remaining and not self._stopped.is_set():
            try:
                sent = os.sendfile(sock, source, offset, min(remaining, STEP))
            except BlockingIOError:
                poller.poll(1000)
                continue
            except OSError:
                break  # the client went away
            if sent == 0:
                break  # the file is shorter than promised
            offset += sent
            remaining -= sent
        return self._length - remaining

    def _sent(self, result, sock: int) -> None:
        os.close(sock)
        self._file.close()
        if self._keepalive.running:
            self._keepalive.stop()
        if isinstance(result, int) and result == self._length and not self._stopped.is_set():
            self._request.sentLength += result
            self._request.finish()
        else:
            if self._stopped.is_set():
                pass  # the client went away, or the server is stopping
            elif not isinstance(result, int):
                log.failure("sendfile of {path}", result, path=self._path)
            else:
                log.error(
                    "{path}: sent {sent} of {length} bytes", path=self._path, sent=result, length=self._length
                )
            # Never let a short body pass for a complete one.
            channel = self._request.channel  # None once the connection is gone
            if channel is not None and channel.transport is not None:
                channel.transport.abortConnection()
        self._fire()
        self.released.callback(None)

    def _fire(self) -> None:
        if not self.done.called:
            self.done.callback(None)

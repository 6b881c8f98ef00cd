"""
One connection of a L{postgresql.PostgresStorage} to its database, and
what it does when the database goes away: the storage keeps two, one for
write transactions (used in worker threads, one at a time) and one for
reads outside them (used on the reactor), because a psycopg connection
must not be used by two threads at once; and how a write waits for its
threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ..logs import logger
from .errors import StorageUnavailable, first_line
from .pgschema import connect

log = logger("devpi_tx.storage")

T = TypeVar("T")


def run_statements(
    conn: psycopg.Connection, statements: list[tuple[str, tuple | None]], pipeline: bool
) -> psycopg.Cursor:
    """
    Execute C{statements} in order, in one round trip with C{pipeline};
    return the last one's cursor.
    """
    if pipeline:
        with conn.pipeline():
            cursors = [conn.execute(query, params) for query, params in statements]
    else:
        cursors = [conn.execute(query, params) for query, params in statements]
    return cursors[-1]


class Channel:
    """
    A connection opened when first needed and opened again after it was
    lost; its errors become L{StorageUnavailable}.  Not thread-safe: its
    owner makes sure one thread at a time uses it.
    """

    def __init__(self, conninfo: str, dsn: str, lock_timeout: float) -> None:
        """
        @param dsn: the DSN as shown (L{pgschema.safe_dsn}).
        """
        self._conninfo = conninfo
        self.dsn = dsn
        self.lock_timeout = lock_timeout
        self.conn: psycopg.Connection | None = None
        self.closed = False
        #: Called with the new connection after connecting again (not the
        #: first time): the storage catches up with what it missed.
        self.on_reconnect: Callable[[psycopg.Connection], None] | None = None
        self._connected_before = False
        #: Whether the connection is new since the last operation.
        self._fresh = False

    def connect(self) -> psycopg.Connection:
        """
        A new connection, not this channel's (L{pgschema.connect}).
        """
        return connect(self._conninfo, self.dsn, self.lock_timeout)

    def connection(self) -> psycopg.Connection:
        """
        The open connection, connecting (again) if there is none.
        """
        if self.conn is None or self.conn.closed:
            if self.closed:
                raise RuntimeError(f"the state in {self.dsn} was closed")
            self.conn = self.connect()
            self._fresh = True
            again, self._connected_before = self._connected_before, True
            if again and self.on_reconnect is not None:
                self.on_reconnect(self.conn)
        return self.conn

    def in_transaction(self) -> psycopg.Connection:
        """
        The connection of the transaction its owner began: never a new one
        (whose statements would each commit on their own, outside the
        write lock).

        @raise StorageUnavailable: it was lost or closed meanwhile.
        """
        conn = self.conn
        if (
            conn is None
            or conn.closed
            or conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS
        ):
            raise StorageUnavailable(
                f"the state database {self.dsn}: the write transaction's connection was lost"
            )
        return conn

    def using(self, work: Callable[[psycopg.Connection], T], *, retry: bool = True) -> T:
        """
        C{work(connection)}, its errors as L{errors} says.  A connection
        found dead at its first use since the last operation (the database
        restarted in between) is replaced once, with C{retry}: for what is
        safe to run again, not for what follows other statements of an open
        transaction.
        """
        with self.errors():
            conn = self.connection()
            fresh, self._fresh = self._fresh, False
            try:
                return work(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                lost = conn.broken or conn.closed
                if fresh or not retry or not lost or isinstance(e, psycopg.errors.LockNotAvailable):
                    raise
                log.info("connection to {dsn} lost; connecting again", dsn=self.dsn)
                self.drop()
                conn = self.connection()
                self._fresh = False
                return work(conn)

    def drop(self) -> None:
        """
        Close the connection; the next use opens another.
        """
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def rollback(self) -> None:
        """
        Roll back the open transaction, if the connection still works
        (else drop it: a broken connection's transaction is gone anyway).
        """
        conn = self.conn
        if conn is None or conn.closed:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error:
            self.drop()

    def close(self) -> None:
        self.closed = True
        self.drop()

    @contextmanager
    def errors(self) -> Iterator[None]:
        """
        Raise L{StorageUnavailable} for what a lost or unreachable database
        raises, and drop the connection (the next use opens another).
        """
        try:
            yield
        except psycopg.errors.LockNotAvailable as e:
            raise StorageUnavailable(
                f"the state database {self.dsn} is busy: another node held its write lock for over "
                f"{self.lock_timeout:g} s"
            ) from e
        except (
            psycopg.OperationalError,
            psycopg.InterfaceError,
            # A server demoted to a standby after a failover, and a session
            # the server ended: the next connection may reach the primary.
            psycopg.errors.ReadOnlySqlTransaction,
            psycopg.errors.IdleInTransactionSessionTimeout,
        ) as e:
            self.drop()
            raise StorageUnavailable(f"the state database {self.dsn} is unavailable: {first_line(e)}") from e


async def uncancellable(work: Deferred[T]) -> T:
    """
    Await C{work} such that cancelling the awaiting coroutine (Klein
    cancels a request's when its client goes away) does not cancel it:
    the cancellation is ignored and C{work}'s outcome is awaited all the
    same.  A write once started finishes as the synchronous one did, and a
    thread's work on the write connection is never left running while the
    next write takes the connection.
    """
    outcome: list = []
    waiting: list[Deferred[None]] = []

    def done(result: object) -> None:
        outcome.append(result)
        for waiter in waiting:
            if not waiter.called:
                waiter.callback(None)

    work.addBoth(done)
    while not outcome:
        waiter: Deferred[None] = Deferred()
        waiting.append(waiter)
        try:
            await waiter
        except CancelledError:
            log.debug("a write of the state goes on, its request cancelled")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


class OwnThread:
    """
    A storage's thread of its own for its writes (a server's), started on
    the first and stopped with the storage.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str = "devpi-tx-state-writer") -> None:
        self._reactor = reactor
        self._name = name
        self._pool: ThreadPool | None = None

    def run(self, work: Callable[..., T], *args: object) -> Deferred[T]:
        if self._pool is None:
            self._pool = ThreadPool(minthreads=0, maxthreads=1, name=self._name)
            self._pool.start()
        return deferToThreadPool(self._reactor, self._pool, work, *args)

    def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

"""
The private names devpi-tx relies on (Twisted's, and one of pip's), in one
place, each with a test in C{tests/test_compat.py} that pins the
behaviour relied on, so that a release that changes one fails there
first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # twisted.web.client takes 0.1 s to import: not for devpi-tx's commands
    from twisted.web.client import HTTPConnectionPool


def quiet_pool(pool: HTTPConnectionPool) -> None:
    """
    Stop C{pool} from logging "Starting factory" and "Stopping factory"
    for every connection it opens and closes: two formatted lines per
    upstream connection, a hundred for fifty cold pages at once.

    Relies on: L{HTTPConnectionPool} documents its C{_factory} class
    attribute as what it makes a connection's protocol factory with, called
    with the reactor-independent arguments it was given; the factory it
    returns has C{noisy}.
    """
    make = pool._factory
    if getattr(make, "quiet", False):
        return

    def quiet_factory(*args, **kwargs):
        factory = make(*args, **kwargs)
        factory.noisy = False
        return factory

    quiet_factory.quiet = True  # type: ignore[attr-defined]
    pool._factory = quiet_factory  # type: ignore[assignment]


def pending_request_line(channel) -> tuple[bytes | None, bytes | None]:
    """
    The method and target (path with query) of the request whose head an
    L{twisted.web.http.HTTPChannel} has just parsed.

    L{Request.gotLength} is called when the headers are in, before
    L{Request.requestReceived} (which runs once the whole body is in) sets
    C{method} and C{uri} on the request; only the channel knows them then,
    as C{_command} and C{_path}.  L{None}s if it does not.
    """
    return getattr(channel, "_command", None), getattr(channel, "_path", None)


def tcp_write_pending(transport) -> int | None:
    """
    Bytes written to a TCP transport (L{twisted.internet.abstract.FileDescriptor})
    that it has not handed to the kernel yet, or L{None} for a transport
    that keeps them where we cannot see (TLS, in-memory transports).

    C{dataBuffer} from C{offset} on is what a write left over;
    C{_tempDataLen} counts what was written since the last write to the
    socket.
    """
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return None


def pip_builtin_index() -> str | None:
    """
    The index pip uses when nothing configures one (its simple API URL),
    from the installed pip, or L{None} if pip is not installed or no longer
    has it there.

    pip has no public API: its configuration is read from its files in
    L{devpi_tx.pipconfig}; only this built-in default lives in
    C{pip._internal}.  Taken from pip so that no registry host name is
    written in devpi-tx.
    """
    try:
        from pip._internal.models.index import PyPI
    except Exception:
        return None
    url = getattr(PyPI, "simple_url", None)
    return url if isinstance(url, str) else None


def server_endpoint_address(endpoint) -> tuple[str, int] | None:
    """
    The interface and port a TCP or TLS server endpoint (C{tcp:},
    C{tcp6:}, C{ssl:}) will bind, so that the address can be tried before
    anything is written; L{None} for other endpoints (C{unix:},
    C{systemd:}, plugins).

    Relies on: L{TCP4ServerEndpoint}, L{TCP6ServerEndpoint} and
    L{SSL4ServerEndpoint} keep their constructor's C{port} and
    C{interface} as C{_port} and C{_interface}.
    """
    from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint

    if not isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint)):
        return None
    return endpoint._interface, endpoint._port

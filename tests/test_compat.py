"""
What devpi-tx relies on of libraries' private names (L{devpi_tx._compat}),
pinned: each test fails, by name, on a release that changes one.
"""

from __future__ import annotations

import socket
import sys
from urllib.parse import urlsplit

from twisted.internet import reactor, tcp
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.test import iosim
from twisted.web.client import HTTPConnectionPool
from twisted.web.http import HTTPChannel, Request

from devpi_tx._compat import (
    pending_request_line,
    pip_builtin_index,
    quiet_pool,
    server_endpoint_address,
    tcp_write_pending,
)


class _SeesTheHead(Request):
    seen: list = []

    def gotLength(self, length):
        _SeesTheHead.seen.append((pending_request_line(self.channel), self.method, length))
        super().gotLength(length)


def test_the_request_line_is_known_when_the_head_is_in():
    """
    When L{Request.gotLength} is called (the headers are in, the body is
    not), the method and target are on the channel and not yet on the
    request.
    """
    _SeesTheHead.seen = []
    channel = HTTPChannel()
    channel.requestFactory = _SeesTheHead
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /alice/dev/?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
    [((command, path), method, length)] = _SeesTheHead.seen
    assert (command, path, length) == (b"POST", b"/alice/dev/?x=1", 10)
    assert method != b"POST"  # requestReceived sets it, once the body is in


def test_no_request_line_on_other_objects():
    assert pending_request_line(object()) == (None, None)


def test_tcp_write_pending_counts_what_the_kernel_has_not_taken():
    """
    A TCP connection's unsent bytes: what was written since its last send
    and what a send left over.
    """
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    reactor = MemoryReactor()
    try:
        connection = tcp.Connection(ours, None, reactor)
        connection.connected = True  # as a connected transport is
        assert tcp_write_pending(connection) == 0
        connection.write(b"x" * 1000)
        connection.write(b"y" * 2000)
        assert tcp_write_pending(connection) == 3000
        connection.doWrite()  # the kernel takes it all
        assert tcp_write_pending(connection) == 0
        data = b"z" * (8 * 1024 * 1024)
        connection.write(data)
        connection.doWrite()  # the kernel takes some
        left = tcp_write_pending(connection)
        assert 0 < left < len(data)
        connection.write(b"w" * 10)
        assert tcp_write_pending(connection) == left + 10
    finally:
        ours.close()
        theirs.close()


def test_tcp_write_pending_is_none_where_bytes_are_kept_elsewhere():
    assert tcp_write_pending(StringTransport()) is None
    assert tcp_write_pending(iosim.FakeTransport(object(), isServer=True)) is None


def test_pip_builtin_index_is_an_https_simple_index():
    url = pip_builtin_index()
    assert url is not None, "pip is installed in the test environment"
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc
    assert parts.path.rstrip("/") == "/simple"


def test_pip_builtin_index_without_pip(monkeypatch):
    # A None in sys.modules makes the import fail, as without pip.
    monkeypatch.setitem(sys.modules, "pip._internal.models.index", None)
    assert pip_builtin_index() is None


def test_the_pool_makes_its_connection_factories_with_its_factory_attribute():
    # HTTPConnectionPool._newConnection calls self._factory(quiescentCallback,
    # metadata) for every connection it opens.
    pool = HTTPConnectionPool(reactor)
    factory = pool._factory(lambda protocol: None, "metadata")
    assert factory.noisy is True


def test_quiet_pool_makes_quiet_factories_once():
    pool = HTTPConnectionPool(reactor)
    quiet_pool(pool)
    wrapped = pool._factory
    quiet_pool(pool)
    assert pool._factory is wrapped
    factory = pool._factory(lambda protocol: None, "metadata")
    assert factory.noisy is False
    # Other pools are left alone.
    assert HTTPConnectionPool(reactor)._factory(lambda protocol: None, "m").noisy is True


def test_tcp_and_tls_server_endpoints_keep_their_interface_and_port(tmp_path):
    from twisted.internet.endpoints import serverFromString

    from .test_tls import make_self_signed, ssl_endpoint

    memory = MemoryReactor()
    assert server_endpoint_address(serverFromString(memory, "tcp:3141:interface=127.0.0.1")) == (
        "127.0.0.1",
        3141,
    )
    assert server_endpoint_address(serverFromString(memory, "tcp:3142")) == ("", 3142)
    assert server_endpoint_address(serverFromString(memory, "tcp6:3143:interface=\\:\\:1")) == ("::1", 3143)
    tls = serverFromString(memory, ssl_endpoint(3444, make_self_signed(tmp_path)))
    assert server_endpoint_address(tls) == ("127.0.0.1", 3444)
    assert server_endpoint_address(serverFromString(memory, f"unix:{tmp_path}/sock")) is None

"""
A primary in memory for the replication tests: a server on a clock of its
own, a replica's headers and token, GETs read as their bytes arrive, and a
connection whose send buffer fills up like a socket's.
"""

from __future__ import annotations

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.auth.replicatokens import ReplicaTokens
from devpi_tx.config import ServerConfig
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.model.changes import FrameParser
from devpi_tx.serverdir import ensure_secret
from devpi_tx.service import build_context

from .conftest import Client, synchronous, synchronous_passwords
from .fakeupstream import FakeUpstream

REPLICA = "91a580d5a2a84869ad317c8ed4c6c929"


class Server:
    """
    A server on a clock of its own (timers, batched commits, the site).
    """

    def __init__(self, tmp_path, role: str = "primary", storage: str | None = None) -> None:
        """
        @param storage: the state's database (C{--storage}), SQLite by default.
        """
        self.clock = MemoryReactorClock()
        self.clock.advance(1_800_000_000)  # tokens carry the time
        self.config = ServerConfig(
            serverdir=str(tmp_path / "server"),
            no_root_pypi=True,
            root_passwd_hash=fast_hasher().hash("rootpw"),
            access_log="off",
            role=role,
            storage=storage,
        )
        self.context = build_context(
            self.config,
            passwords=synchronous_passwords(),
            run_in_thread=synchronous,
            upstream_http=UpstreamHTTP(StubTreq(FakeUpstream()), self.clock),
            reactor=self.clock,
            clock=self.clock,
        )
        self.client = Client(self.context, clock=self.clock)
        self.storage = self.context.storage
        self.feed = self.context.changefeed
        # Initialisation: user root (and on a shared state, the uuid its nodes answer with).
        assert self.storage.serial == (0 if storage is None else 1)
        # What a replica sharing the secret file makes.
        self.tokens = ReplicaTokens(ensure_secret(self.config.secret_path), clock=self.clock.seconds)

    def commit(self, n: int, durable: bool = True, size: int = 20) -> None:
        with self.storage.transaction(durable=durable) as tx:
            tx.set(f"k/{n}", {"n": n, "pad": "x" * size})

    def headers(self, **overrides) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.tokens.issue(REPLICA)}",
            "X-DEVPI-REPLICA-UUID": REPLICA,
            "X-DEVPI-EXPECTED-PRIMARY-ID": self.context.uuid,
            "X-DEVPI-EXPECTED-MASTER-ID": self.context.uuid,
            "X-DEVPI-REPLICA-OUTSIDE-URL": "https://replica.example.com",
        }
        for name, value in overrides.items():
            name = name.replace("_", "-")
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        return headers

    def raw(self, path: str, headers: dict[str, str] | None = None) -> RawAnswer:
        return RawAnswer(self.client, path, self.headers() if headers is None else headers)

    def entries_match(self, entries) -> None:
        for entry in entries:
            stored = self.storage.changelog_entry(entry.serial)
            assert (entry.timestamp, entry.changes) == (stored["timestamp"], stored["changes"])


class RawAnswer:
    """
    A GET on a connection of its own, read as the bytes arrive (a stream's
    answer is not over until the server ends it).
    """

    def __init__(self, client: Client, path: str, headers: dict[str, str]) -> None:
        self.client = client
        self.conn = client.connect()
        self.pump = client.connections._pumps[-1]
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:3141"] + [f"{k}: {v}" for k, v in headers.items()]
        self.conn.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        client.flush()

    @property
    def started(self) -> bool:
        return b"\r\n\r\n" in self.conn.received

    @property
    def status(self) -> int:
        return int(self.conn.received.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        head = self.conn.received.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.lower() == name.lower():
                return value.strip()
        return None

    def _chunks(self) -> tuple[bytes, bool]:
        rest = self.conn.received.split(b"\r\n\r\n", 1)[1]
        body = b""
        while rest:
            line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                break
            size = int(line, 16)
            if size == 0:
                return body, True
            body += rest[:size]
            rest = rest[size + 2 :]
        return body, False

    @property
    def body(self) -> bytes:
        return self._chunks()[0]

    @property
    def complete(self) -> bool:
        return self._chunks()[1]

    def entries(self) -> list:
        parser = FrameParser()
        entries = parser.feed(self.body)
        assert not parser.midframe
        return entries


def frames_read(monkeypatch, storage) -> list[int]:
    """
    Count the rows each read of the changelog returns.
    """
    calls: list[int] = []
    real = storage.changelog_frames

    def counted(start, max_bytes):
        frames = real(start, max_bytes)
        calls.append(len(frames))
        return frames

    monkeypatch.setattr(storage, "changelog_frames", counted)
    return calls


class BoundedTransport:
    """
    Makes the server's side of a connection behave like a socket with a
    send buffer of C{limit} bytes: past it, the channel is paused (as a TCP
    transport pauses its producer) until the test says the client has read
    (L{drain}).
    """

    def __init__(self, pump, limit: int) -> None:
        transport = pump.serverIO
        #: What a TCP transport pauses when its buffer is full.
        self.channel = pump.server
        self.limit = limit
        self.unread = 0
        self.paused = False
        real_write = transport.write

        def write(data: bytes) -> None:
            real_write(data)
            self.unread += len(data)
            if self.unread > limit and not self.paused:
                self.paused = True
                self.channel.pauseProducing()

        transport.write = write

    def drain(self) -> None:
        self.unread = 0
        if self.paused:
            self.paused = False
            self.channel.resumeProducing()


def bounded_get(server: Server, path: str, limit: int) -> tuple[object, BoundedTransport]:
    """
    A replica's GET on a connection with a send buffer of C{limit} bytes:
    (the raw client, the buffer).
    """
    client = server.client
    conn = client.connect()
    bounded = BoundedTransport(client.connections._pumps[-1], limit=limit)
    headers = "".join(f"{k}: {v}\r\n" for k, v in server.headers().items())
    conn.send(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:3141\r\n{headers}\r\n".encode())
    client.flush()
    return conn, bounded


def dechunk(received: bytes) -> bytes:
    """
    The body of a whole chunked answer.
    """
    _, _, body = received.partition(b"\r\n\r\n")
    data = b""
    while body:
        line, _, body = body.partition(b"\r\n")
        size = int(line, 16)
        data, body = data + body[:size], body[size + 2 :]
    return data

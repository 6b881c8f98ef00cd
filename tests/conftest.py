"""
Shared fixtures: an in-memory devpi-tx (the production site and request
class, connected to treq's client through in-memory transports) with cheap
password hashing, so that API tests need no reactor or threads.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import pytest_twisted
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.server import Site

from devpi_tx.auth.passwords import PasswordChecker, fast_hasher
from devpi_tx.config import ServerConfig
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.service import build_context, make_site
from devpi_tx.web.api import DevpiAPI

from .fakeupstream import FakeUpstream
from .memhttp import BytesProducer, Connections, RawClient, in_memory_agent
from .scaleout import pg_cluster, pg_dsn, s3_bucket, s3_server  # noqa: F401 (fixtures)

UPSTREAM = "http://127.0.0.1:9/simple/"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end-to-end test driving real clients against a server subprocess"
    )
    config.addinivalue_line(
        "markers", "scaleout: needs a PostgreSQL server or an S3-compatible store (tests/scaleout.py)"
    )


def result_of(d: Deferred):
    """
    The result of a Deferred that has already fired; fail the test if it
    has not (or raise its failure).
    """
    box: list = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def synchronous_passwords() -> PasswordChecker:
    return PasswordChecker(fast_hasher(), run_in_thread=lambda f, *a: maybeDeferred(f, *a))


def synchronous(f, *args):
    """
    Stands in for deferToThread in in-memory tests.
    """
    return maybeDeferred(f, *args)


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def devpi_auth(user: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"X-Devpi-Auth": token}


class Answer:
    def __init__(self, response, body: bytes) -> None:
        self.code = response.code
        self.phrase = response.phrase
        self.headers = response.headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def message(self) -> str:
        return self.json.get("message", "")

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class Client:
    """
    Requests against an in-memory server: the site the server runs
    (L{make_site}: L{DevpiSite} and L{DevpiRequest} in front of the
    installer fast path and the Klein app), over in-memory connections.

    @ivar clock: the server's reactor (its connections' timers).
    @ivar site: the server's site.
    """

    def __init__(self, context, *, api: DevpiAPI | None = None, resource=None, clock=None) -> None:
        self.context = context
        self.api = api or DevpiAPI(context)
        # (A test whose context runs on a clock of its own passes it here.)
        self.clock = clock if clock is not None else MemoryReactorClock()
        self.site = make_site(context, reactor=self.clock, api=self.api)
        if resource is not None:
            # The same site in front of another resource (a part of the tree).
            self.site.resource = resource
        self.connections = Connections(self.site, self.clock)
        self.http = HTTPClient(
            in_memory_agent(self.connections, self.clock), data_to_body_producer=BytesProducer
        )

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        accept: str | None = "application/json",
    ) -> Answer:
        all_headers = {}
        if accept:
            all_headers["Accept"] = accept
        all_headers.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        d = self.http.request(
            method,
            "http://127.0.0.1:3141" + path,
            headers=all_headers,
            data=data,
            allow_redirects=False,
        )
        self._flush(d)
        response = result_of(d)
        d = response.content()
        self._flush(d)
        return Answer(response, result_of(d))

    def connect(self) -> RawClient:
        """
        A connection to the server that sends the bytes the test gives
        (C{send}) and keeps what comes back (call L{flush} in between).
        """
        protocol = RawClient()
        self.connections.connect(protocol)
        return protocol

    def flush(self) -> None:
        """
        Pump the server, its connections and its upstream until quiet.
        """
        self._flush(None)

    def _flush(self, d) -> None:
        """
        Pump the server and its upstream until C{d} has fired.
        """
        upstream = self.context.http.http  # the StubTreq under the upstream client
        for _ in range(20):
            self.connections.flush()
            if hasattr(upstream, "flush"):
                upstream.flush()
            if d is not None and d.called:
                return

    def get(self, path: str, **kw) -> Answer:
        return self.request("GET", path, **kw)

    def login(self, user: str, password: str) -> dict[str, str]:
        answer = self.request("POST", "/+login", {"user": user, "password": password})
        assert answer.code == 200, answer.body
        return devpi_auth(user, answer.json["result"]["password"])


@pytest.fixture
def config(tmp_path) -> ServerConfig:
    return ServerConfig(
        serverdir=str(tmp_path / "server"),
        mirror_url=UPSTREAM,
        root_passwd_hash=fast_hasher().hash("rootpw"),
        # The access log has its own tests; elsewhere it would write past
        # pytest's capture onto the real stdout.
        access_log="off",
    )


@pytest.fixture
def upstream() -> FakeUpstream:
    """
    The upstream of root/pypi in memory tests (its URL's host is never
    contacted: requests go to this resource through StubTreq).
    """
    return FakeUpstream()


@pytest.fixture
def context(config, upstream):
    context = build_context(
        config,
        passwords=synchronous_passwords(),
        run_in_thread=synchronous,
        upstream_http=UpstreamHTTP(StubTreq(upstream), reactor),
        reactor=reactor,
    )
    yield context
    context.close()


@pytest.fixture
def client(context) -> Client:
    return Client(context)


@pytest.fixture
def root(client) -> dict[str, str]:
    return client.login("root", "rootpw")


@pytest.fixture
def alice(client) -> dict[str, str]:
    answer = client.request("PUT", "/alice", {"password": "alicepw", "email": "alice@example.com"})
    assert answer.code == 201, answer.body
    return client.login("alice", "alicepw")


@contextmanager
def on_loopback(factory) -> Iterator[int]:
    """
    Serve C{factory} (a L{Site}, say) on an ephemeral loopback port for
    the block; yield the port number.
    """
    port = pytest_twisted.blockon(serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory))
    try:
        yield port.getHost().port
    finally:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def canned():
    """
    C{canned(answer)} serves a L{CannedAnswer} on loopback for the test and
    gives its base URL (callable from a test's coroutine: listening on TCP
    is immediate).
    """
    ports = []

    def serve(answer) -> str:
        ports.append(reactor.listenTCP(0, Site(answer), interface="127.0.0.1"))
        return f"http://127.0.0.1:{ports[-1].getHost().port}"

    yield serve
    for port in ports:
        pytest_twisted.blockon(port.stopListening())

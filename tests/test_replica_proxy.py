"""
A replica's writes relayed to its primary (L{devpi_tx.web.proxy}), over
real loopback connections: a fake primary (a twisted.web site) and the
replica's site (L{DevpiSite}, the production request class) with the
proxy at its root.  Timeouts run on a L{Clock} advanced by hand; nothing
sleeps.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import attrs
import pytest
import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from devpi_tx.auth.passwords import fast_hasher
from devpi_tx.config import ServerConfig
from devpi_tx.mirror.http import UpstreamHTTP, make_http_client
from devpi_tx.service import build_context, make_site
from devpi_tx.web.proxy import CHUNK, ForwardWrites, WriteProxy, rewrite_location
from devpi_tx.web.site import DevpiRequest, DevpiSite

from .conftest import UPSTREAM, devpi_auth, synchronous_passwords

TIMEOUT = 30.0
REPLICA_HEADERS = {
    "Authorization": "Bearer replica-token",
    "X-Devpi-Replica-Uuid": "replica-uuid",
    "X-Devpi-Expected-Primary-Id": "primary-uuid",
}


def watched(d: Deferred) -> list:
    """
    A list that gets the result of C{d} when it has one (C{d.called} is
    also true of a Deferred waiting on another).
    """
    results: list = []

    def got(result):
        results.append(result)
        return result

    d.addBoth(got)
    return results


async def turns_until(condition) -> None:
    """
    Let the reactor turn (no time passing) until C{condition()} holds.
    """
    for _ in range(100_000):
        if condition():
            return
        await deferLater(reactor, 0, lambda: None)
    raise AssertionError("the condition never held")


def within(d: Deferred) -> Deferred:
    # A safety net only: every awaited event is caused by the test.
    return d.addTimeout(10, reactor)


@attrs.define
class Seen:
    method: bytes
    uri: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes
    chunks: int
    request: Request


class CountingRequest(Request):
    """
    The primary's request: counts the pieces its body arrived in.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunks = 0

    def handleContentChunk(self, data: bytes) -> None:
        self.chunks += 1
        super().handleContentChunk(data)


class FakePrimary(Resource):
    """
    Records each request and answers it with C{respond(request)}: 201 with
    serial 5 unless a test says otherwise.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self.arrived: Deferred[Seen] = Deferred()
        self.respond = self.created

    @staticmethod
    def created(request: Request) -> bytes:
        request.setResponseCode(201, b"Created")
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"message": "done"}\n'

    def render(self, request: CountingRequest):
        seen = Seen(
            request.method,
            request.uri,
            {name.lower(): values for name, values in request.requestHeaders.getAllRawHeaders()},
            request.content.read(),
            request.chunks,
            request,
        )
        self.seen.append(seen)
        arrived, self.arrived = self.arrived, Deferred()
        arrived.callback(seen)
        return self.respond(request)


class ReadRecorder:
    """
    The replica's spooled request body, recording the size of each read.
    """

    def __init__(self, file) -> None:
        self._file = file
        self.reads: list[int] = []

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.reads.append(len(data))
        return data

    def __getattr__(self, name: str):
        return getattr(self._file, name)


class RecordingRequest(DevpiRequest):
    made: list[RecordingRequest] = []

    def process(self) -> None:
        if self.devpi_upload is not None:
            self.devpi_upload.file = ReadRecorder(self.devpi_upload.file)
        RecordingRequest.made.append(self)
        super().process()


class Local(Resource):
    isLeaf = True

    def render(self, request) -> bytes:
        return b"served by the replica"


@attrs.define
class Setup:
    primary: FakePrimary
    primary_url: str
    url: str
    client: HTTPClient
    proxy: WriteProxy
    waits: list[tuple[int, float]]
    #: What wait_for_serial returns next.
    wait_result: Deferred = attrs.field(factory=lambda: succeed(True))
    clock: Clock | None = None


@pytest.fixture
def make_setup(tmp_path):
    """
    C{make_setup(...)}: a fake primary and a replica relaying to it, both
    on loopback; with C{clock}, the proxy's timers run on a L{Clock}.
    """
    ports = []
    RecordingRequest.made = []

    def listen(site) -> int:
        ports.append(reactor.listenTCP(0, site, interface="127.0.0.1"))
        return ports[-1].getHost().port

    def make(*, outside_url: str | None = "https://replica.example/", clock: bool = False, primary_url=None):
        primary = FakePrimary()
        if primary_url is None:
            primary_url = f"http://127.0.0.1:{listen(Site(primary, requestFactory=CountingRequest))}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        if clock:
            agent = Agent(reactor, pool=pool)
            upstream = UpstreamHTTP(HTTPClient(agent), Clock(), pool, relay_agent=agent)
        else:
            upstream = make_http_client(reactor, pool, environ={})
        waits: list[tuple[int, float]] = []
        setup = Setup(primary, primary_url, "", None, None, waits)

        def wait_for_serial(serial: int, timeout: float) -> Deferred[bool]:
            waits.append((serial, timeout))
            return setup.wait_result

        proxy = WriteProxy(
            primary_url, upstream, wait_for_serial, lambda: dict(REPLICA_HEADERS), TIMEOUT, outside_url
        )
        site = DevpiSite(
            ForwardWrites(Local(), proxy),
            stream_receiver=proxy.body_receiver,
            storage=SimpleNamespace(serial=3),
            uuid="replica-uuid",
            config=ServerConfig(serverdir=str(tmp_path)),
            access_log=None,
        )
        site.requestFactory = RecordingRequest
        setup.url = f"http://127.0.0.1:{listen(site)}"
        setup.client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        setup.proxy = proxy
        setup.clock = upstream.reactor if clock else None
        return setup

    yield make
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


class RawClient(Protocol):
    """
    A client that sends what it is given and keeps all it gets back.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.got_data: Deferred[None] = Deferred()
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        if not self.got_data.called:
            self.got_data.callback(None)

    def connectionLost(self, reason) -> None:
        self.closed.callback(b"".join(self.chunks))


async def raw(url: str, payload: bytes) -> RawClient:
    port = int(url.rsplit(":", 1)[1])
    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    client.transport.write(payload)
    return client


def parse(answer: bytes) -> tuple[bytes, dict[bytes, list[bytes]], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


# -- streaming -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_upload_streams_through_unchanged_and_in_pieces(make_setup):
    setup = make_setup()
    payload = os.urandom(3 * 1024 * 1024 + 17)
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name=":action"\r\n\r\nfile_upload\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="content"; filename="a-1.0.tar.gz"\r\n\r\n'
        + payload
        + b"\r\n--xyz--\r\n"
    )
    response = await setup.client.post(
        setup.url + "/alice/dev/",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=xyz", "Authorization": "Basic YTpi"},
    )
    assert response.code == 201, await response.content()
    assert response.phrase == b"Created"
    assert await response.content() == b'{"message": "done"}\n'
    [seen] = setup.primary.seen
    assert (seen.method, seen.uri, seen.body) == (b"POST", b"/alice/dev/", body)
    assert seen.chunks > 10  # it arrived in pieces...
    [request] = RecordingRequest.made
    reads = request.devpi_upload.file.reads
    assert sum(reads) == len(body) and max(reads) <= CHUNK  # ...read from the spool in pieces
    assert setup.waits == [(5, TIMEOUT)]
    headers = response.headers
    assert headers.getRawHeaders("X-Devpi-Proxy") == ["replica"]
    assert headers.getRawHeaders("X-Devpi-Primary-Serial") == ["5"]
    # The replica's own headers stay its own.
    assert headers.getRawHeaders("X-Devpi-Serial") == ["3"]
    assert headers.getRawHeaders("X-Devpi-Uuid") == ["replica-uuid"]
    assert headers.getRawHeaders("X-Devpi-Replica-Lag") is None


@pytest_twisted.ensureDeferred
async def test_the_answer_streams_back_as_it_arrives(make_setup):
    setup = make_setup()
    held: list[Request] = []

    def first_half(request):
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"Content-Length", b"8")
        request.write(b"abcd")
        held.append(request)
        return NOT_DONE_YET

    setup.primary.respond = first_half
    response = await within(setup.client.request("PUSH", setup.url + "/alice/dev", unbuffered=True))
    assert response.code == 200
    got: list[bytes] = []
    first: Deferred[None] = Deferred()
    done = treq.collect(response, lambda data: (got.append(data), first.called or first.callback(None)))
    await within(first)
    assert b"".join(got) == b"abcd" and not done.called
    held[0].write(b"efgh")
    held[0].finish()
    await within(done)
    assert b"".join(got) == b"abcdefgh"
    assert setup.primary.seen[0].method == b"PUSH"


@implementer(IPushProducer)
class Source:
    """
    The primary's side of a large answer: written as fast as its
    connection takes it, paused when it does not.
    """

    def __init__(self, request: Request, total: int) -> None:
        self.request, self.left, self.paused = request, total, False
        self.piece = os.urandom(256 * 1024)
        request.registerProducer(self, True)

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left:
            piece = self.piece[: self.left]
            self.left -= len(piece)
            self.request.write(piece)
        if not self.left and not self.request.finished:
            self.request.unregisterProducer()
            self.request.finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.left = 0


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_pauses_the_primarys_answer(make_setup):
    setup = make_setup()
    total = 16 * 1024 * 1024  # more than the sockets' buffers between the primary and the client
    sources: list[Source] = []

    def large(request):
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"Content-Length", b"%d" % total)
        sources.append(Source(request, total))
        sources[0].resumeProducing()
        return NOT_DONE_YET

    setup.primary.respond = large
    client = await raw(setup.url, b"")
    client.transport.pauseProducing()  # reads nothing
    client.transport.write(b"DELETE /alice/dev HTTP/1.1\r\nHost: replica\r\nConnection: close\r\n\r\n")
    seen = await within(setup.primary.arrived)
    relay_port = seen.request.transport.getPeer().port

    def relay_reads() -> bool:
        return any(
            getattr(reader, "getHost", None) and reader.getHost().port == relay_port
            for reader in reactor.getReaders()
        )

    await turns_until(lambda: not relay_reads())
    # The relay stopped reading from the primary, which had more to send.
    assert not relay_reads() and sources[0].left > 0
    client.transport.resumeProducing()
    status, headers, body = parse(await within(client.closed))
    assert status == b"HTTP/1.1 200 OK"
    assert len(body) == total and body[:262144] == sources[0].piece


# -- headers -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_headers_go_through_but_hop_by_hop_ones(make_setup):
    setup = make_setup()

    def answer(request):
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"X-Devpi-Uuid", b"primary-uuid")
        request.setHeader(b"Keep-Alive", b"timeout=5")
        request.setHeader(b"Proxy-Authenticate", b"Basic")
        request.setHeader(b"X-From-Primary", b"yes")
        request.addCookie(b"a", b"b")
        return b"{}"

    setup.primary.respond = answer
    client = await raw(
        setup.url,
        b"POST /alice/dev/?x=1&y=%20z HTTP/1.1\r\n"
        b"Host: replica.example:8080\r\n"
        b"Authorization: Basic YTpi\r\n"
        b"X-Devpi-Auth: token\r\n"
        b"Accept: application/json\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 2\r\n"
        b"Connection: X-Secret-Hop, close\r\n"
        b"X-Secret-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Proxy-Authorization: Basic eHl6\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\n"
        b"X-Devpi-Replica-Uuid: spoofed\r\n"
        b"\r\n{}",
    )
    status, headers, body = parse(await within(client.closed))
    assert status == b"HTTP/1.1 200 OK" and body == b"{}"
    [seen] = setup.primary.seen
    sent = seen.headers
    assert seen.uri == b"/alice/dev/?x=1&y=%20z" and seen.body == b"{}"
    assert sent[b"authorization"] == [b"Basic YTpi"]  # the client's, never the replica's
    assert sent[b"x-devpi-auth"] == [b"token"]
    assert sent[b"accept"] == [b"application/json"]
    assert sent[b"content-type"] == [b"application/json"]
    assert sent[b"host"] == [setup.primary_url.split("//")[1].encode()]
    for name in (b"keep-alive", b"te", b"proxy-authorization", b"x-secret-hop"):
        assert name not in sent
    assert b"x-secret-hop" not in b",".join(sent.get(b"connection", [])).lower()
    assert sent[b"x-forwarded-for"] == [b"10.0.0.1, 127.0.0.1"]
    assert sent[b"x-forwarded-host"] == [b"replica.example:8080"]
    assert sent[b"x-forwarded-proto"] == [b"http"]
    assert sent[b"x-outside-url"] == [b"https://replica.example"]
    assert sent[b"x-devpi-replica-uuid"] == [b"replica-uuid"]
    assert sent[b"x-devpi-expected-primary-id"] == [b"primary-uuid"]
    assert headers[b"x-from-primary"] == [b"yes"]
    assert headers[b"set-cookie"] == [b"a=b"]
    assert headers[b"x-devpi-proxy"] == [b"replica"]
    assert headers[b"x-devpi-uuid"] == [b"replica-uuid"]
    assert b"keep-alive" not in headers and b"proxy-authenticate" not in headers


@pytest.mark.parametrize("status", [302, 307, 201])
@pytest_twisted.ensureDeferred
async def test_a_location_into_the_primary_points_into_the_replica(make_setup, status):
    setup = make_setup()

    def moved(request):
        request.setResponseCode(status)
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"Location", f"{setup.primary_url}/+login?next=%2Fx".encode())
        return b""

    setup.primary.respond = moved
    response = await setup.client.post(
        setup.url + "/+login", data=b'{"user": "alice"}', allow_redirects=False
    )
    assert response.code == status
    assert response.headers.getRawHeaders("Location") == ["https://replica.example/+login?next=%2Fx"]
    assert len(setup.primary.seen) == 1  # a redirect is relayed, not followed
    assert setup.waits == [(5, TIMEOUT)]


@pytest_twisted.ensureDeferred
async def test_without_an_outside_url_the_location_names_the_requests_host(make_setup):
    setup = make_setup(outside_url=None)

    def moved(request):
        request.setResponseCode(302)
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"Location", f"{setup.primary_url}/alice/dev".encode())
        return b""

    setup.primary.respond = moved
    response = await setup.client.put(setup.url + "/alice/dev", data=b"{}", allow_redirects=False)
    assert response.headers.getRawHeaders("Location") == [setup.url + "/alice/dev"]
    assert setup.primary.seen[0].headers[b"x-outside-url"] == [setup.url.encode()]


def test_rewrite_location():
    primary, replica = "http://primary:3141/devpi", "https://replica.example"
    assert rewrite_location("http://primary:3141/devpi/+login", primary, replica) == replica + "/+login"
    assert rewrite_location("HTTP://Primary:3141/devpi", primary, replica) == replica
    assert rewrite_location("/devpi/a/b?c#d", primary, replica) == replica + "/a/b?c#d"
    for other in (
        "http://primary:3142/devpi/x",
        "http://elsewhere/devpi/x",
        "/devpix/y",
        "x/y",
        "//primary/z",
    ):
        assert rewrite_location(other, primary, replica) == other
    assert rewrite_location("http://primary/x", "http://primary:80", replica) == replica + "/x"


# -- read-your-writes ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_answer_waits_for_the_replica_to_apply_the_serial(make_setup):
    setup = make_setup()
    setup.wait_result = applied = Deferred()
    answered = setup.client.put(setup.url + "/alice", data=b'{"password": "x"}')
    results = watched(answered)
    seen = await within(setup.primary.arrived)
    await within(seen.request.notifyFinish())
    await turns_until(lambda: setup.waits)
    for _ in range(5):  # turns of the reactor: the answer is held all along
        await deferLater(reactor, 0, lambda: None)
    assert not results
    assert not RecordingRequest.made[0].startedWriting
    applied.callback(True)
    response = await within(answered)
    assert response.code == 201
    assert await response.content() == b'{"message": "done"}\n'


@pytest_twisted.ensureDeferred
async def test_a_replica_that_lags_answers_anyway_and_says_so(make_setup):
    setup = make_setup()
    setup.wait_result = succeed(False)
    response = await setup.client.put(setup.url + "/alice", data=b"{}")
    assert response.code == 201
    assert response.headers.getRawHeaders("X-Devpi-Replica-Lag") == ["serial=5; waited=30"]
    assert await response.content() == b'{"message": "done"}\n'


@pytest_twisted.ensureDeferred
async def test_a_wait_that_never_ends_is_given_up(make_setup):
    setup = make_setup(clock=True)
    setup.wait_result = Deferred()  # a sync service that never answers
    answered = setup.client.delete(setup.url + "/alice/dev")
    results = watched(answered)
    await within(setup.primary.arrived)
    await turns_until(lambda: setup.waits)
    setup.clock.advance(2 * TIMEOUT - 1)
    for _ in range(5):
        await deferLater(reactor, 0, lambda: None)
    assert not results
    setup.clock.advance(1)
    response = await within(answered)
    assert response.code == 201
    assert response.headers.getRawHeaders("X-Devpi-Replica-Lag") == ["serial=5; waited=30"]


@pytest_twisted.ensureDeferred
async def test_a_refusal_is_relayed_without_waiting(make_setup):
    setup = make_setup()

    def refuse(request):
        request.setResponseCode(403, b"Forbidden by the ACL")
        request.setHeader(b"X-Devpi-Serial", b"5")
        return b'{"message": "no"}\n'

    setup.primary.respond = refuse
    response = await setup.client.delete(setup.url + "/alice/dev")
    assert (response.code, response.phrase) == (403, b"Forbidden by the ACL")
    assert await response.content() == b'{"message": "no"}\n'
    assert setup.waits == []


@pytest_twisted.ensureDeferred
async def test_reads_are_served_by_the_replica(make_setup):
    setup = make_setup()
    response = await setup.client.get(setup.url + "/alice/dev")
    assert await response.content() == b"served by the replica"
    assert setup.primary.seen == []


@pytest_twisted.ensureDeferred
async def test_login_and_a_write_through_to_a_devpi_tx_primary(make_setup, tmp_path):
    config = ServerConfig(
        serverdir=str(tmp_path / "primary"),
        mirror_url=UPSTREAM,
        root_passwd_hash=fast_hasher().hash("rootpw"),
        access_log="off",
    )
    upstream = make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False), environ={})
    context = build_context(config, passwords=synchronous_passwords(), upstream_http=upstream)
    port = reactor.listenTCP(0, make_site(context), interface="127.0.0.1")
    try:
        setup = make_setup(primary_url=f"http://127.0.0.1:{port.getHost().port}")
        accept = {"Accept": "application/json", "Content-Type": "application/json"}
        login = await setup.client.post(
            setup.url + "/+login", data=b'{"user": "root", "password": "rootpw"}', headers=accept
        )
        assert login.code == 200
        token = json.loads(await login.content())["result"]["password"]
        auth = devpi_auth("root", token)
        created = await setup.client.put(
            setup.url + "/alice", data=b'{"password": "alicepw"}', headers={**accept, **auth}
        )
        assert created.code == 201, await created.content()
        serial = context.storage.serial
        assert created.headers.getRawHeaders("X-Devpi-Primary-Serial") == [str(serial)]
        assert setup.waits[-1] == (serial, TIMEOUT)
        assert "alice" in json.loads(await created.content())["result"]["username"]
    finally:
        await port.stopListening()
        context.close()


# -- failures ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_primary_that_refuses_connections_is_a_502(make_setup):
    port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    unused = port.getHost().port
    await port.stopListening()
    setup = make_setup(primary_url=f"http://127.0.0.1:{unused}")
    response = await setup.client.post(
        setup.url + "/alice/dev/", data=b"{}", headers={"Accept": "application/json"}
    )
    assert response.code == 502
    assert response.headers.getRawHeaders("X-Devpi-Proxy") == ["replica"]
    message = json.loads(await response.content())["message"]
    assert message.startswith(f"primary http://127.0.0.1:{unused} could not be reached: ConnectionRefused")


@pytest_twisted.ensureDeferred
async def test_a_primary_that_does_not_answer_in_time_is_a_504(make_setup):
    setup = make_setup(clock=True)
    setup.primary.respond = lambda request: NOT_DONE_YET
    answered = setup.client.delete(setup.url + "/alice/dev", headers={"Accept": "application/json"})
    results = watched(answered)
    seen = await within(setup.primary.arrived)
    dropped = seen.request.notifyFinish()
    setup.clock.advance(TIMEOUT - 1)
    for _ in range(5):
        await deferLater(reactor, 0, lambda: None)
    assert not results
    setup.clock.advance(1)
    response = await within(answered)
    assert response.code == 504
    assert json.loads(await response.content()) == {
        "message": f"primary {setup.primary_url} did not answer within 30 s"
    }
    with pytest.raises(Exception):  # noqa: B017 - the primary's connection was dropped
        await within(dropped)


@pytest_twisted.ensureDeferred
async def test_an_answer_that_stops_arriving_drops_the_client(make_setup):
    setup = make_setup(clock=True)

    def stall(request):
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"Content-Length", b"100")
        request.write(b"x" * 10)
        return NOT_DONE_YET

    setup.primary.respond = stall
    response = await within(setup.client.delete(setup.url + "/alice/dev", unbuffered=True))
    assert response.code == 200
    dropped = setup.primary.seen[0].request.notifyFinish()
    setup.clock.advance(TIMEOUT)
    with pytest.raises(Exception):  # noqa: B017 - never a clean short body
        await within(treq.content(response))
    with pytest.raises(Exception):  # noqa: B017
        await within(dropped)


@pytest_twisted.ensureDeferred
async def test_an_answer_cut_midway_is_not_passed_off_as_whole(make_setup):
    setup = make_setup()

    def cut(request):
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"Content-Length", b"100000")
        request.write(b"x" * 1000)
        request.channel.transport.loseConnection()
        return NOT_DONE_YET

    setup.primary.respond = cut
    response = await within(setup.client.delete(setup.url + "/alice/dev", unbuffered=True))
    if response.code == 502:  # cut before any of it was relayed: a gateway error
        return
    assert response.code == 200
    with pytest.raises(Exception):  # noqa: B017
        await within(treq.content(response))


@pytest.mark.parametrize("stage", ["head", "serial", "body"])
@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_cancels_the_relay(make_setup, stage):
    setup = make_setup()
    setup.wait_result = Deferred()

    def hold(request):
        if stage == "head":
            return NOT_DONE_YET
        request.setHeader(b"X-Devpi-Serial", b"5")
        request.setHeader(b"Content-Length", b"100")
        request.write(b"x" * 10)
        if stage == "body":
            setup.wait_result.callback(True)
        return NOT_DONE_YET

    setup.primary.respond = hold
    client = await raw(setup.url, b"DELETE /alice/dev HTTP/1.1\r\nHost: replica\r\n\r\n")
    seen = await within(setup.primary.arrived)
    dropped = seen.request.notifyFinish()
    if stage == "serial":
        await turns_until(lambda: setup.waits)
    if stage == "body":
        await within(client.got_data)
    client.transport.abortConnection()
    with pytest.raises(Exception):  # noqa: B017 - the relay dropped its request to the primary
        await within(dropped)
    if stage == "serial":
        setup.wait_result.callback(True)  # too late: nothing happens

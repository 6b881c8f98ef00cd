"""
How a replica is put together (L{devpi_tx.service}) and what it adds to
the site: its status and lag, its client certificate for the primary, its
mirror pages brought up to date through the primary.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.ssl import PrivateCertificate
from twisted.web.resource import Resource

from devpi_tx.mirror.errors import UpstreamError, UpstreamTimeout
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.model.stages import Stage
from devpi_tx.replica.mirrors import via_primary
from devpi_tx.replica.primary import PrimaryCertificatePolicy, PrimaryLink
from devpi_tx.web.api import replica_lag

from .test_tls import make_self_signed

STAGE = Stage("root/pypi", {"type": "mirror"}, is_mirror=True)


class Sync:
    def __init__(self, primary_serial, in_sync_at):
        self.primary_serial, self.in_sync_at = primary_serial, in_sync_at


def test_lag_in_serials_and_seconds():
    assert replica_lag(Sync(None, None), -1, 100.0) == (None, None)
    assert replica_lag(Sync(7, 90.0), 7, 100.0) == (0, 0.0)
    assert replica_lag(Sync(9, 90.0), 7, 100.0) == (2, 10.0)


@pytest_twisted.ensureDeferred
async def test_the_client_certificate_is_presented_to_the_primary(tmp_path):
    """
    A primary that asks for client certificates sees the replica's; a
    replica certificate file without its key is refused at once.
    """
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, CertificateOptions
    from twisted.web.server import Site

    from devpi_tx.mirror.http import make_http_client

    server = make_self_signed(tmp_path, "primary")
    client = make_self_signed(tmp_path, "replica")
    server_cert = PrivateCertificate.loadPEM(server.cert_pem + server.key_path.read_bytes())
    client_pem = client.cert_pem + client.key_path.read_bytes()
    seen: list[object] = []

    class Who(Resource):
        isLeaf = True

        def render(self, request):
            seen.append(request.transport.getPeerCertificate())
            return b"ok"

    options = CertificateOptions(
        privateKey=server_cert.privateKey.original,
        certificate=server_cert.original,
        verify=True,
        caCerts=[Certificate.loadPEM(client.cert_pem).original],
        requireCertificate=True,
    )
    port = reactor.listenSSL(0, Site(Who()), options, interface="127.0.0.1")
    try:
        url = f"https://localhost:{port.getHost().port}"
        policy = PrimaryCertificatePolicy(url, client_pem, trust_root=Certificate.loadPEM(server.cert_pem))
        http = make_http_client(reactor, tls_policy=policy)
        response = await http.request("GET", url + "/", timeout=10)
        assert response.code == 200
        await response.text()
        [peer] = seen
        assert peer.digest("sha256") == Certificate.loadPEM(client.cert_pem).original.digest("sha256")
        await http.close_idle()
    finally:
        await port.stopListening()
    with pytest.raises(ValueError, match="not a PEM certificate with its key"):
        PrimaryCertificatePolicy("https://primary.example.com", client.cert_pem)


class Page(Resource):
    isLeaf = True

    def __init__(self, code: int, serial: str | None) -> None:
        super().__init__()
        self.code, self.serial, self.asked = code, serial, []

    def render(self, request):
        self.asked.append((request.method, request.path, request.getHeader("x-devpi-replica-uuid")))
        request.setResponseCode(self.code)
        if self.serial is not None:
            request.setHeader("X-Devpi-Serial", self.serial)
        return b""


def refresher(page: Page, reached: bool = True):
    from twisted.internet import reactor

    link = PrimaryLink(
        "http://primary.example.com",
        replica_uuid="r1",
        token=lambda: "token",
        load_primary_uuid=lambda: "p1",
        save_primary_uuid=lambda uuid: None,
    )
    waited: list[int] = []

    def wait_for_serial(serial, timeout):
        waited.append(serial)
        return succeed(reached)

    return via_primary(UpstreamHTTP(StubTreq(page), reactor), link, wait_for_serial, 5.0), waited


@pytest_twisted.ensureDeferred
async def test_a_stale_mirror_page_is_asked_of_the_primary_and_its_serial_awaited():
    page = Page(200, "42")
    refresh, waited = refresher(page)
    assert await refresh(STAGE, "hello") is True
    assert page.asked == [(b"HEAD", b"/root/pypi/+simple/hello/", "r1")]
    assert waited == [42]


@pytest_twisted.ensureDeferred
async def test_what_the_primary_lacks_or_fails_at_is_said():
    refresh, _ = refresher(Page(404, "3"))
    assert await refresh(STAGE, "nope") is False
    refresh, _ = refresher(Page(502, None))
    with pytest.raises(UpstreamError, match="answered 502"):
        await refresh(STAGE, "hello")
    refresh, _ = refresher(Page(200, "9"), reached=False)
    with pytest.raises(UpstreamTimeout, match="serial 9"):
        await refresh(STAGE, "hello")

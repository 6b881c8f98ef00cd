"""
TLS: devpi-tx serving over an C{ssl:} endpoint with a self-signed
certificate, checked in-process with treq (trusting exactly that
certificate) and end to end with devpi-client (trusting it through
C{REQUESTS_CA_BUNDLE}).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import pytest_twisted
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from devpi_tx.config import ServerConfig
from devpi_tx.service import build_context, make_site
from tests.serverproc import DevpiClient, ServerProcess, free_port, start_server

UPSTREAM = "http://127.0.0.1:9/simple/"


@attrs.frozen
class SelfSigned:
    """
    A self-signed certificate and its key, as PEM files.
    """

    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()


def make_self_signed(directory: Path, name: str = "server") -> SelfSigned:
    """
    Write C{NAME-cert.pem} and C{NAME-key.pem} into C{directory}: an RSA key
    and a certificate for C{localhost} / C{127.0.0.1}, valid for a day, that
    is its own issuer (and marked as a CA, so that strict verifiers accept
    it as a trust anchor), good for a server or a client.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"devpi-tx tests ({name})"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}-cert.pem"
    key_path = directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return SelfSigned(cert_path, key_path)


def _quote_endpoint(value: str) -> str:
    """
    Escape a value for a Twisted endpoint description.
    """
    return value.replace("\\", "\\\\").replace(":", "\\:")


def ssl_endpoint(port: int, cert: SelfSigned) -> str:
    return (
        f"ssl:{port}:interface=127.0.0.1"
        f":privateKey={_quote_endpoint(str(cert.key_path))}"
        f":certKey={_quote_endpoint(str(cert.cert_path))}"
    )


@implementer(IPolicyForHTTPS)
class TrustOnly:
    """
    An HTTPS policy that trusts one certificate and nothing else (and
    still checks that it names the host).
    """

    def __init__(self, pem: bytes) -> None:
        self._root = Certificate.loadPEM(pem)

    def creatorForNetloc(self, hostname: bytes, port: int):
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._root)


# -- in-process ---------------------------------------------------------------


@pytest.fixture
def certs(tmp_path: Path) -> tuple[SelfSigned, SelfSigned]:
    """
    The server's certificate, and another one it does not use.
    """
    return make_self_signed(tmp_path / "tls", "server"), make_self_signed(tmp_path / "tls", "other")


@pytest_twisted.async_yield_fixture
async def tls_server(tmp_path: Path, certs: tuple[SelfSigned, SelfSigned]):
    """
    An in-process devpi-tx listening on an C{ssl:} endpoint on a free port.
    Yields its base URL.
    """
    config = ServerConfig(serverdir=str(tmp_path / "serverdir"), mirror_url=UPSTREAM)
    context = build_context(config)
    port = None
    try:
        endpoint = serverFromString(reactor, ssl_endpoint(0, certs[0]))
        port = await endpoint.listen(make_site(context))
        yield f"https://127.0.0.1:{port.getHost().port}"
    finally:
        if port is not None:
            await port.stopListening()
        context.close()


def http_client(policy: IPolicyForHTTPS) -> tuple[HTTPClient, HTTPConnectionPool]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool)), pool


@pytest_twisted.ensureDeferred
async def test_tls_in_process(tls_server: str, certs: tuple[SelfSigned, SelfSigned]) -> None:
    server_cert, _ = certs
    client, pool = http_client(TrustOnly(server_cert.cert_pem))
    try:
        response = await client.get(tls_server + "/+api", headers={"Accept": "application/json"})
        assert response.code == 200
        data = json.loads(await response.text("utf-8"))
        assert data["type"] == "apiconfig"
        # The server knows the request came over TLS.
        assert data["result"]["login"] == tls_server + "/+login"
        assert data["result"]["authstatus"] == ["noauth", "", []]

        # Log in (root has an empty password) and use the token over TLS.
        response = await client.post(
            tls_server + "/+login",
            data=json.dumps({"user": "root", "password": ""}).encode(),
            headers={"Accept": "application/json", "Content-Type": "application/json"},
        )
        assert response.code == 200
        token = (await response.json())["result"]["password"]
        auth = base64.b64encode(f"root:{token}".encode()).decode()
        response = await client.get(
            tls_server + "/+api",
            headers={"Accept": "application/json", "X-Devpi-Auth": auth},
        )
        assert (await response.json())["result"]["authstatus"] == ["ok", "root", []]
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_tls_untrusted_client_fails(tls_server: str, certs: tuple[SelfSigned, SelfSigned]) -> None:
    _, other_cert = certs
    client, pool = http_client(TrustOnly(other_cert.cert_pem))
    try:
        with pytest.raises(ResponseNeverReceived) as info:
            await client.get(tls_server + "/+api", headers={"Accept": "application/json"})
        assert "certificate verify failed" in str(info.value.reasons[0].value)
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_tls_plain_http_to_tls_port_fails(tls_server: str) -> None:
    """
    Plain HTTP to the TLS port gets no HTTP answer.
    """
    with pytest.raises((ResponseNeverReceived, ResponseFailed)):
        await treq.get(tls_server.replace("https://", "http://") + "/+api", timeout=10, persistent=False)


# -- end to end ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_subprocess(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, SelfSigned]]:
    workdir = tmp_path_factory.mktemp("tls-e2e")
    cert = make_self_signed(workdir / "tls", "server")
    port = free_port()
    proc = start_server(
        workdir,
        scheme="https",
        listen=ssl_endpoint(port, cert),
        port=port,
        ssl_context=ssl.create_default_context(cafile=str(cert.cert_path)),
    )
    yield proc, cert
    proc.stop()


@pytest.mark.e2e
def test_tls_devpi_client(tmp_path: Path, tls_subprocess: tuple[ServerProcess, SelfSigned]) -> None:
    server, cert = tls_subprocess
    assert server.url.startswith("https://127.0.0.1:")
    devpi = DevpiClient(tmp_path, env={"REQUESTS_CA_BUNDLE": str(cert.cert_path)})

    out = devpi.ok("use", server.url).output
    assert f"using server: {server.url}/" in out
    assert "insecure" not in out
    assert "certificate validation failed" not in out

    api = devpi.ok("getjson", "/+api").json()["result"]
    assert api["login"] == server.url + "/+login"

    out = devpi.ok("login", "root", "--password", "").output
    assert "logged in 'root'" in out
    out = devpi.ok("user", "-c", "alice", "password=alicepw", "email=alice@example.com").output
    assert "user created: alice" in out
    devpi.ok("login", "alice", "--password", "alicepw")
    out = devpi.ok("index", "-c", "dev", "bases=root/pypi").output
    assert f"{server.url}/alice/dev?no_projects=:" in out

    config = devpi.ok("getjson", "/alice/dev").json()
    assert config["type"] == "indexconfig"
    assert config["result"]["bases"] == ["root/pypi"]
    assert config["result"]["acl_upload"] == ["alice"]

    out = devpi.ok("use", "alice/dev").output
    assert f"current devpi index: {server.url}/alice/dev (logged in as alice)" in out
    api = devpi.ok("getjson", "/alice/dev/+api").json()["result"]
    assert api["simpleindex"] == f"{server.url}/alice/dev/+simple/"
    assert api["pypisubmit"] == f"{server.url}/alice/dev/"


@pytest.mark.e2e
def test_tls_devpi_client_without_trust_fails(
    tmp_path: Path, tls_subprocess: tuple[ServerProcess, SelfSigned]
) -> None:
    """
    Without the certificate in its bundle, devpi-client notices that the
    server's certificate does not verify (it then goes on unverified, which
    is its own choice, and says so).
    """
    server, _ = tls_subprocess
    devpi = DevpiClient(tmp_path)
    out = devpi.run("use", server.url).output
    assert "certificate validation failed" in out

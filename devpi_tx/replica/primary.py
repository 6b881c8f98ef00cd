"""
What every request of a replica to its primary carries: who the replica
is, which primary it expects, and a fresh token.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, urlsplit

import attrs
from twisted.internet.ssl import PrivateCertificate, optionsForClientTLS, platformTrust
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer


@attrs.define
class PrimaryLink:
    """
    The primary a replica follows, and the headers that identify the
    replica to it (devpi's names, section 8.2 of the protocol notes).

    @ivar url: the primary's root URL.
    @ivar token: makes a Bearer token for this replica; called for every
        request, because a primary refuses tokens older than a few tens of
        seconds.
    @ivar load_primary_uuid: the primary's uuid as this server directory
        knows it (L{None} or C{""} before the first answer).
    @ivar save_primary_uuid: keeps the uuid learned from the first answer
        (the composition root writes it to C{.nodeinfo}).
    @ivar outside_url: the replica's own outside URL, told to the primary
        for its status page.
    """

    url: str = attrs.field(converter=lambda url: url.rstrip("/"))
    replica_uuid: str
    token: Callable[[], str]
    load_primary_uuid: Callable[[], str | None]
    save_primary_uuid: Callable[[str], None]
    outside_url: str | None = None

    def __attrs_post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"primary URL {self.url!r} is not an http(s) URL")
        if parts.username is not None:
            # The Bearer token takes the Authorization header.
            raise ValueError("the primary URL may not carry credentials")

    @property
    def primary_uuid(self) -> str:
        return self.load_primary_uuid() or ""

    def headers(self, **extra: str) -> dict[str, str]:
        """
        The headers of a request to the primary, plus C{extra}.
        """
        return {"Authorization": f"Bearer {self.token()}", **self.identity_headers(), **extra}

    def identity_headers(self) -> dict[str, str]:
        """
        Who the replica is and which primary it expects, without a token
        (a relayed write carries its client's credentials).
        """
        headers = {
            "X-DEVPI-REPLICA-UUID": self.replica_uuid,
            "X-DEVPI-EXPECTED-PRIMARY-ID": self.primary_uuid,
        }
        if self.outside_url:
            headers["X-DEVPI-REPLICA-OUTSIDE-URL"] = self.outside_url
        return headers

    def url_for(self, path: str) -> str:
        """
        The URL of C{path} (relative to the primary's root) on the primary.
        """
        return f"{self.url}/{quote(path.lstrip('/'), safe='/+@=')}"


@implementer(IPolicyForHTTPS)
class PrimaryCertificatePolicy:
    """
    TLS for the server's one client on a replica with C{--replica-cert}:
    the replica's client certificate is presented to its primary (a PEM
    file with the certificate and its private key), and to no other host;
    every host's certificate is checked against the platform's trust store.
    """

    def __init__(
        self, primary_url: str, pem: bytes, fallback: IPolicyForHTTPS | None = None, trust_root=None
    ) -> None:
        """
        @param trust_root: what the primary's certificate is checked
            against; the platform's trust store by default.
        @raise ValueError: C{pem} holds no certificate with its key.
        """
        self._trust_root = trust_root
        host = urlsplit(primary_url).hostname
        if not host:
            raise ValueError(f"primary URL {primary_url!r} has no host")
        self._host = host.encode("idna")
        try:
            self._certificate = PrivateCertificate.loadPEM(pem)
        except Exception as exc:
            raise ValueError(f"--replica-cert: not a PEM certificate with its key ({exc})") from None
        self._fallback = fallback or BrowserLikePolicyForHTTPS()

    def creatorForNetloc(self, hostname: bytes, port: int):
        if hostname.lower() == self._host.lower():
            return optionsForClientTLS(
                hostname.decode("idna"),
                trustRoot=self._trust_root or platformTrust(),
                clientCertificate=self._certificate,
            )
        return self._fallback.creatorForNetloc(hostname, port)

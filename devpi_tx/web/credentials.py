"""
Who is asking: credentials from C{X-Devpi-Auth} (devpi-client) or HTTP
Basic (pip, twine), each holding a login token or a password.

Every password check of the server goes through
L{Authenticator.check_login}, which asks the L{PasswordThrottle} first:
a throttled attempt raises L{Throttled} (answered 429, see
L{too_many_attempts}) without running argon2.  Tokens never reach it.

Passwords are checked by the L{IAuthenticator} plugins first
(L{devpi_tx.auth.external.ask}), then, when none knows the user, against
the local users.  A user a plugin accepted is authenticated with the
groups it gave (principals C{:group:NAME}) and needs no local record: the
login token says so (C{external}) and carries the groups, so that tokens
are checked without asking the plugin again, for their 10 hours.  Basic
auth with a password asks the plugins on each request (as devpi-server
does).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import attrs
from twisted.web.iweb import IRequest

from ..auth.external import ask
from ..auth.passwords import PasswordChecker
from ..auth.throttle import PasswordThrottle, Throttled
from ..auth.tokens import TokenSigner
from ..interfaces import IAuthenticator
from ..model import users
from ..model.acl import ANONYMOUS_IDENTITY, Identity
from .render import error


@attrs.frozen
class AuthResult:
    """
    The outcome of checking a request's credentials.

    @ivar status: C{"ok"}, C{"noauth"} (none sent), C{"expired"} (a token
        that is no longer valid) or C{"rejected"} (a wrong password or an
        unknown user).
    @ivar sent_user: the user name the credentials named, if any.
    """

    identity: Identity
    status: str
    sent_user: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("expired", "rejected")


NO_AUTH = AuthResult(ANONYMOUS_IDENTITY, "noauth")


@attrs.frozen
class PasswordOk:
    """
    A password found right: by a plugin (C{external}, with the groups it
    gave) or against the local user record.
    """

    groups: tuple[str, ...] = ()
    external: bool = False


def _decode_pair(encoded: bytes) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, secret = decoded.partition(":")
    if not sep or not user:
        return None
    return user, secret


def parse_credentials(request: IRequest) -> tuple[str, str] | None:
    """
    Return (user, secret) from the request's headers, C{X-Devpi-Auth}
    first, or L{None}.
    """
    devpi = request.requestHeaders.getRawHeaders(b"x-devpi-auth")
    if devpi:
        return _decode_pair(devpi[0])
    basic = request.requestHeaders.getRawHeaders(b"authorization")
    if basic:
        scheme, _, value = basic[0].partition(b" ")
        if scheme.lower() == b"basic":
            return _decode_pair(value)
    return None


def client_address(request: IRequest) -> str:
    """
    The address a request came from, as the throttle counts it.
    """
    address = request.getClientAddress()
    return getattr(address, "host", None) or str(address)


def too_many_attempts(request: IRequest, throttled: Throttled, **kwargs) -> bytes:
    """
    The 429 answer to a throttled password attempt (C{kwargs} go to
    L{error}).
    """
    request.setHeader("Retry-After", str(throttled.seconds))
    return error(
        request,
        429,
        f"too many failed password attempts for user {throttled.user!r}: try again in {throttled.seconds} s",
        **kwargs,
    )


class Authenticator:
    """
    Turn a request's credentials into an L{AuthResult}, checking tokens by
    their signature and passwords through the L{PasswordChecker}, after
    asking the L{PasswordThrottle}.
    """

    def __init__(
        self,
        storage,
        signer: TokenSigner,
        passwords: PasswordChecker,
        throttle: PasswordThrottle,
        external: Sequence[IAuthenticator] = (),
    ) -> None:
        self._external = tuple(external)
        self._storage = storage
        self._signer = signer
        self._passwords = passwords
        self._throttle = throttle

    async def authenticate(self, request: IRequest) -> AuthResult:
        """
        @raise Throttled: the request carries a password and password
            attempts of its user or address are being throttled.
        """
        cached = getattr(request, "devpi_auth", None)
        if cached is not None:
            return cached
        result = await self._authenticate(request)
        request.devpi_auth = result  # type: ignore[attr-defined]
        return result

    async def _authenticate(self, request: IRequest) -> AuthResult:
        credentials = parse_credentials(request)
        if credentials is None:
            return NO_AUTH
        user, secret = credentials
        claims = self._signer.check(secret)
        if claims is not None:
            if claims.username == user and (
                (claims.external and self._external) or users.get_user(self._storage, user) is not None
            ):
                return AuthResult(Identity(user, claims.groups), "ok", user)
            return AuthResult(ANONYMOUS_IDENTITY, "rejected", user)
        if self._signer.looks_like_token(secret):
            return AuthResult(ANONYMOUS_IDENTITY, "expired", user)
        ok = await self.check_login(request, user, secret)
        if ok is not None:
            return AuthResult(Identity(user, ok.groups), "ok", user)
        return AuthResult(ANONYMOUS_IDENTITY, "rejected", user)

    async def check_login(self, request: IRequest, user: str, password: str) -> PasswordOk | None:
        """
        Is C{password} the password of C{user}?  The plugins are asked
        first; an unknown user's is never right.  Each outcome is counted
        by the throttle.

        @raise Throttled: password attempts for C{user} from the request's
            address must wait; nothing was checked.  The answer is held
            first (L{PasswordThrottle.hold}).
        """
        address = client_address(request)
        wait = self._throttle.attempt_allowed(user, address)
        if wait is not None:
            held_since = self._throttle.clock.seconds()
            await self._throttle.hold(wait)
            raise Throttled(user, wait - (self._throttle.clock.seconds() - held_since))
        ok: PasswordOk | None = None
        try:
            verdict = await ask(self._external, user, password)
            if verdict.status == "ok":
                ok = PasswordOk(verdict.groups, external=True)
            elif verdict.status == "unknown":
                record = users.get_user(self._storage, user)
                if record is not None and await self._passwords.verify(user, record.get("pwhash"), password):
                    ok = PasswordOk()
        finally:
            if ok:
                self._throttle.succeeded(user, address)
            else:
                self._throttle.failed(user, address)
        return ok

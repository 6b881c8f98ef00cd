"""
Login tokens: C{<json payload>.<timestamp>.<signature>}, the layout
devpi-server's tokens have, signed with HMAC-SHA256 under a key derived
from the server secret.  Tokens are only meaningful to servers sharing the
secret file (a primary and its replicas).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import attrs

from .signing import Signer, stamp, unstamp

#: devpi-server's token lifetime: 10 hours.
TOKEN_MAX_AGE = 36000


@attrs.frozen
class TokenClaims:
    username: str
    groups: tuple[str, ...]
    issued: int
    #: The user was authenticated by an L{IAuthenticator} plugin and may
    #: have no local record (docs/plugins.md).
    external: bool = False


class TokenSigner:
    """
    Issue and check login tokens.
    """

    def __init__(
        self,
        secret: bytes,
        max_age: int = TOKEN_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = Signer(secret, b"devpi-tx login token v1")
        self.max_age = max_age
        self._clock = clock

    def issue(self, username: str, groups: tuple[str, ...] = (), external: bool = False) -> str:
        claims: list = [username, list(groups), True]
        if external:
            claims.append("external")
        payload = json.dumps(claims, separators=(", ", ": "))
        message = f"{payload}.{stamp(self._clock())}"
        return f"{message}.{self._signer.sign(message)}"

    def check(self, token: str) -> TokenClaims | None:
        """
        Return the claims of a valid, unexpired token, else L{None}.
        """
        message, sep, signature = token.rpartition(".")
        if not sep or not self._signer.verify(message, signature):
            return None
        payload, _, issued_at = message.rpartition(".")
        try:
            issued = unstamp(issued_at)
            username, groups, _, *rest = json.loads(payload)
        except (ValueError, TypeError):
            return None
        now = self._clock()
        if not (issued - 60 <= now <= issued + self.max_age):
            return None
        if not isinstance(username, str) or not isinstance(groups, list):
            return None
        return TokenClaims(username, tuple(str(g) for g in groups), issued, rest == ["external"])

    def looks_like_token(self, secret: str) -> bool:
        """
        Whether a credential has the shape of a token (so that an expired
        token can be told from a wrong password).
        """
        return secret.startswith("[") and secret.count(".") >= 2

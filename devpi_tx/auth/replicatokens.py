"""
Replica tokens: what a replica sends as C{Authorization: Bearer <token>}
to a primary's replication routes.

A token is C{<uuid>.<time>.<signature>} (each part URL-safe base64 without
padding): the replica's uuid, when the token was made (whole seconds) and
an HMAC-SHA256 over the first two parts under a key derived from the
server secret with the salt devpi-server uses for its replica tokens
(C{b"devpi-server-replica"}).  devpi-server signs the same facts with
itsdangerous, so the tokens are not interchangeable with its: a primary and
its replicas share a secret file and run devpi-tx alike.

A token is good for L{REPLICA_AUTH_MAX_AGE} seconds either side of its
time (devpi's lifetime; the tolerance for a token made in the future
allows for clocks that differ), so a replica makes one per request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .signing import Signer, b64, stamp, unb64, unstamp

#: devpi-server's lifetime of a replica token, in seconds.
REPLICA_AUTH_MAX_AGE = 37.5

#: The salt devpi-server derives its replica key with.
SALT = b"devpi-server-replica"

EXPIRED = "Authorization expired."
MALFORMED = "Authorization malformed."
WRONG = "Wrong authorization value."


class ReplicaAuthError(Exception):
    """
    A replica token that does not authenticate its bearer; the message is
    devpi's text for the 403 answer.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ReplicaTokens:
    """
    Issue and check replica tokens.
    """

    def __init__(
        self,
        secret: bytes,
        clock: Callable[[], float] = time.time,
        max_age: float = REPLICA_AUTH_MAX_AGE,
    ) -> None:
        self._signer = Signer(secret, SALT)
        self._clock = clock
        self.max_age = max_age

    def issue(self, replica_uuid: str) -> str:
        """
        A token for the replica C{replica_uuid}, good from now for
        C{max_age} seconds.
        """
        message = f"{b64(replica_uuid.encode('utf-8'))}.{stamp(self._clock())}"
        return f"{message}.{self._signer.sign(message)}"

    def check(self, token: str) -> str:
        """
        Return the replica uuid a valid token was issued for.

        @raise ReplicaAuthError: the token is not three base64 parts
            (L{MALFORMED}), its signature is not ours (L{WRONG}), or it was
            made more than C{max_age} seconds ago or ahead (L{EXPIRED}).
        """
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise ReplicaAuthError(MALFORMED)
        try:
            for part in parts:
                unb64(part)
        except ValueError:
            raise ReplicaAuthError(MALFORMED) from None
        encoded_uuid, issued_at, signature = parts
        if not self._signer.verify(f"{encoded_uuid}.{issued_at}", signature):
            raise ReplicaAuthError(WRONG)
        try:
            replica_uuid = unb64(encoded_uuid).decode("utf-8")
        except UnicodeDecodeError:
            raise ReplicaAuthError(MALFORMED) from None
        issued = unstamp(issued_at)
        if abs(self._clock() - issued) > self.max_age:
            raise ReplicaAuthError(EXPIRED)
        return replica_uuid

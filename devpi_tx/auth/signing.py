"""
What login tokens (L{devpi_tx.auth.tokens}) and replica tokens
(L{devpi_tx.auth.replicatokens}) are made of: URL-safe base64 parts
without padding, a time stamp of whole seconds, and an HMAC-SHA256 under a
key derived from the server secret with a salt of each kind's own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    """
    @raise ValueError: C{text} is not URL-safe base64.
    """
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not base64: {text[:20]!r}") from None


def stamp(seconds: float) -> str:
    """
    A time as a token part: its whole seconds, big-endian, base64.
    """
    return b64(int(seconds).to_bytes(8, "big").lstrip(b"\0") or b"\0")


def unstamp(part: str) -> int:
    """
    @raise ValueError: C{part} is not base64.
    """
    return int.from_bytes(unb64(part), "big")


class Signer:
    """
    HMAC-SHA256 signatures under a key derived from C{secret} and C{salt},
    so that a token of one kind is never valid as another.
    """

    def __init__(self, secret: bytes, salt: bytes) -> None:
        self._key = hmac.new(secret, salt, hashlib.sha256).digest()

    def sign(self, message: str) -> str:
        return b64(hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).digest())

    def verify(self, message: str, signature: str) -> bool:
        """
        Whether C{signature} is ours for C{message}, compared in constant
        time.
        """
        return hmac.compare_digest(self.sign(message), signature)

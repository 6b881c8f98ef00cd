"""
How a request to another server failed, and what a client is answered
for it: 504 when upstream did not answer in time, else 502.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from ..model.indexes import redact_url as redact


class UpstreamError(Exception):
    """
    Upstream could not be asked, or answered with an error.
    """


class UpstreamTimeout(UpstreamError):
    """
    Upstream did not answer in time (a gateway timeout, 504, rather than a
    bad gateway, 502).
    """


#: What a request that timed out fails with, before any wrapping.
_TIMEOUTS = (CancelledError, ConnectingCancelledError, ConnectTimeout, TimeoutError)


def is_timeout(exc: BaseException) -> bool:
    """
    Whether a failed request timed out: treq's timeout (which cancels the
    request) or a connect timeout; the agents wrap both in
    L{ResponseNeverReceived}.
    """
    if isinstance(exc, _TIMEOUTS):
        return True
    if isinstance(exc, (ResponseNeverReceived, ResponseFailed)):
        return any(is_timeout(reason.value) for reason in exc.reasons)
    return False


def gateway_status(exc: UpstreamError) -> int:
    """
    What to answer a client for an upstream failure with nothing cached:
    504 when upstream did not answer in time, else 502.
    """
    return 504 if isinstance(exc, UpstreamTimeout) else 502


def upstream_error(url: str, exc: BaseException) -> UpstreamError:
    """
    The L{UpstreamError} (an L{UpstreamTimeout} when it timed out) that
    says what a request to C{url} failed with, credentials redacted.
    """
    kind = UpstreamTimeout if is_timeout(exc) else UpstreamError
    return kind(f"{redact(url)}: {exc.__class__.__name__}: {exc}")

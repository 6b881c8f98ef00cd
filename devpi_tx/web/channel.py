"""
The HTTP connection: Twisted's L{HTTPChannel} with limits on the request
line and the header block that answer before they close.

Twisted drops a connection whose request line is longer than its line
limit without a word, and answers a malformed request or an over-long
header block with a bare 400 and an immediate close, which, while the
client is still sending, resets the connection before the answer is read.
Here every refusal is a complete answer (414, 431, 400, 413 with a one-line
message and C{Connection: close}), after which the connection stops
reading what else arrives, closes its sending side, and is dropped only
when the client has gone or after L{DRAIN_TIMEOUT} seconds.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.web.http import HTTPChannel

#: Longest request line (method, target, version), and longest header
#: field, in bytes, by default.
MAX_REQUEST_LINE = 8 * 1024
#: Largest request head (request line and every header), by default.
MAX_HEADER_BYTES = 64 * 1024
#: Most header fields in a request head, by default.
MAX_HEADER_FIELDS = 500
#: Reason phrases as RFC 9110 names them (Python's are older).
_PHRASES = {414: "URI Too Long", 413: "Content Too Large"}
#: Seconds a refused connection is read from (and the input dropped) so
#: that the client sees its answer rather than a reset.
DRAIN_TIMEOUT = 5.0


def refusal_bytes(
    status: int, message: str, headers: list[tuple[bytes, bytes]], *, reason_is_message: bool = False
) -> bytes:
    """
    A whole answer: status line, headers, a JSON body with the message
    (in the reason phrase too if asked: twine prints that).
    """
    body = (json.dumps({"message": message}, indent=2) + "\n").encode("utf-8")
    all_headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode("ascii")),
        (b"Connection", b"close"),
        *headers,
    ]
    phrase = (message if reason_is_message else _PHRASES.get(status) or HTTPStatus(status).phrase).encode(
        "latin-1", "replace"
    )
    head = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
    head += b"".join(name + b": " + value + b"\r\n" for name, value in all_headers)
    return head + b"\r\n" + body


class DevpiChannel(HTTPChannel):
    """
    An L{HTTPChannel} that bounds the request head and answers every
    refusal before it closes (see the module docstring).

    The limits are the site's (C{max_request_line}, C{max_header_bytes}).
    """

    def connectionMade(self) -> None:
        site = self.site
        self._max_line = getattr(site, "max_request_line", MAX_REQUEST_LINE)
        self._max_head = getattr(site, "max_header_bytes", MAX_HEADER_BYTES)
        # Twisted's own limits above ours, so that ours answer first.
        self.MAX_LENGTH = self._max_head + 2
        self.totalHeadersSize = self._max_head + 2
        self.maxHeaders = MAX_HEADER_FIELDS + 1
        self._head_bytes = 0
        self._header_fields = 0
        self._on_first_line = True
        self._refused = False
        super().connectionMade()

    # -- the head ---------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._on_first_line and not line:
            return super().lineReceived(line)  # a stray empty line before a request
        self._head_bytes += len(line) + 2
        if self._on_first_line:
            self._on_first_line = False
            if len(line) > self._max_line:
                return self.refuse(414, f"request line longer than {self._max_line} bytes")
        elif len(line) > self._max_line:
            return self.refuse(431, f"header field longer than {self._max_line} bytes")
        if self._head_bytes > self._max_head:
            return self.refuse(431, f"request head larger than {self._max_head} bytes")
        if not line:
            # The end of this request's head; the next request starts afresh.
            self._head_bytes = 0
            self._header_fields = 0
            self._on_first_line = True
        return super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        self._header_fields += 1
        if self._header_fields > MAX_HEADER_FIELDS:
            self.refuse(431, f"more than {MAX_HEADER_FIELDS} header fields")
            return False
        return super().headerReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._on_first_line:
            self.refuse(414, f"request line longer than {self._max_line} bytes")
        else:
            self.refuse(431, f"request head larger than {self._max_head} bytes")

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's answer to a malformed request line or header, or bad
        # framing (Content-Length, Transfer-Encoding): now a whole answer.
        self.refuse(400, "malformed HTTP request")

    # -- refusing ---------------------------------------------------------

    def refuse(self, status: int, message: str, *, reason_is_message: bool = False) -> int:
        """
        Answer C{status} with C{message}, then stop taking requests and
        close once the client has read the answer.

        @return: the bytes of the answer's body (for the access log).
        """
        if self._refused:
            return 0
        self._refused = True
        headers = self.site.devpi_headers() if hasattr(self.site, "devpi_headers") else []
        answer = refusal_bytes(status, message, headers, reason_is_message=reason_is_message)
        self.transport.write(answer)
        self.drain()
        return len(answer) - answer.index(b"\r\n\r\n") - 4

    def drain(self) -> None:
        """
        Read and drop whatever else arrives; close the sending side (the
        client sees the end of the answer) and give the client
        L{DRAIN_TIMEOUT} seconds to go before the connection is dropped.
        """
        self._refused = True
        self.setRawMode()
        self.rawDataReceived = lambda data: None
        self.dataReceived = lambda data: None
        self.setTimeout(DRAIN_TIMEOUT)
        if IHalfCloseableDescriptor.providedBy(self.transport):
            self.transport.loseWriteConnection()
        else:
            self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        if self._refused:
            self.transport.abortConnection()
            return
        super().timeoutConnection()

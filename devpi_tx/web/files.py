"""
Serving a stored file: validators and conditional requests, one byte range
at a time, and a body streamed from disk.

Release files are immutable and named by their hash, so the sha256 is a
strong validator and caches may keep them forever. Files can be large (a
1 GB wheel is not unheard of), so the body goes out through a pull producer
that reads one chunk whenever the connection can take more: memory stays
bounded by the transport's buffer, a slow reader holds back only its own
download, and the reactor answers other requests between chunks.
"""

from __future__ import annotations

import re
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ..logs import logger
from .sendfile import SendfileBody

log = logger("devpi_tx.files")

#: How much is read from disk per C{resumeProducing}: the transport's own
#: buffer size, so one chunk about fills it.
CHUNK_SIZE = 64 * 1024

#: Bodies up to this size are read at once and returned as bytes.
SMALL_BODY = CHUNK_SIZE

IMMUTABLE = "max-age=365000000, immutable, public"


class _Unsatisfiable:
    """
    The marker for a Range none of whose bytes exist (answered with 416).
    """


UNSATISFIABLE = _Unsatisfiable()

_RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")
_ENTITY_TAG = re.compile(r'(W/)?"([^"]*)"')
#: Beyond any file's size; stands in for numbers too long for int().
_HUGE = 10**30


def serve_file(
    request: IRequest,
    path: str,
    *,
    size: int,
    sha256: str,
    last_modified: float,
    content_type: str = "application/octet-stream",
    cache_control: str = IMMUTABLE,
    use_sendfile: bool = True,
    reactor=None,
) -> bytes | Deferred[None]:
    """
    Answer a GET or HEAD for a file on disk, honouring conditional and
    range requests.

    The file is opened before anything is set on the request, so a file
    missing from disk raises L{FileNotFoundError} (and any other
    L{OSError} from opening, or a file found shorter than C{size} while
    reading a small body) with the request untouched, for the caller to
    map to an error answer.

    Bodyless answers (HEAD, 304, 416, an empty file) and bodies of up to
    L{SMALL_BODY} bytes are returned as bytes. Larger bodies stream from
    disk: the result is then a L{Deferred} that fires with L{None} once the
    request has been finished, or once the client has gone away (the file
    is closed either way). A Klein route returns either as it is; Klein
    cancels the Deferred when the client disconnects, which stops the
    producer too. (Klein finishes a request whose handler returns
    C{NOT_DONE_YET}, so that cannot be used to say "the body follows".)
    On plain TCP connections, bodies of a MiB or more go out with
    C{sendfile(2)} from a worker thread (L{SendfileBody}) unless
    C{use_sendfile} is false; otherwise a L{FileBody} producer sends them.

    @param size: the length recorded for the file; the answer promises
        this many bytes.
    @param sha256: the hex digest recorded for the file, sent as its
        strong C{ETag}.
    @param last_modified: seconds since the epoch, sent (and compared) at
        whole-second resolution as HTTP dates have.
    @param reactor: what a L{SendfileBody} schedules on; by default the
        reactor of the request's site.
    """
    # Closed below on failure, else by _answer or the producer.
    file = open(path, "rb")
    try:
        return _answer(
            request,
            file,
            path=path,
            size=size,
            etag=f'"{sha256}"',
            mtime=int(last_modified),
            content_type=content_type,
            cache_control=cache_control,
            use_sendfile=use_sendfile,
            reactor=reactor,
        )
    except BaseException:
        file.close()
        raise


def _answer(
    request: IRequest,
    file: IO[bytes],
    *,
    path: str,
    size: int,
    etag: str,
    mtime: int,
    content_type: str,
    cache_control: str,
    use_sendfile: bool,
    reactor,
) -> bytes | Deferred[None]:
    """
    Decide the answer, then set its status and headers and send or start
    its body. Whatever is read from disk is read before the request is
    touched, so that a failing read leaves it untouched too.
    """
    head = request.method == b"HEAD"
    validators = file_validators(etag, mtime)

    if _not_modified(request, etag, mtime):
        file.close()
        request.setResponseCode(304)
        _set_headers(request, validators, {"Cache-Control": cache_control})
        return b""

    wanted = _byte_range(request, size, etag, mtime)
    if wanted is UNSATISFIABLE:
        file.close()
        request.setResponseCode(416)
        _set_headers(request, validators, {"Content-Range": f"bytes */{size}", "Content-Length": "0"})
        return b""

    if wanted is None:
        status, offset, length = 200, 0, size
        extra = {}
    else:
        assert isinstance(wanted, tuple)
        offset, end = wanted
        status, length = 206, end - offset
        extra = {"Content-Range": f"bytes {offset}-{end - 1}/{size}"}

    body = b""
    streamed = not head and length > SMALL_BODY
    if head or length == 0:
        file.close()
    elif not streamed:
        with file:
            file.seek(offset)
            body = file.read(length)
        if len(body) != length:
            raise OSError(f"{path} is shorter on disk than its recorded {size} bytes")
    else:
        file.seek(offset)

    request.setResponseCode(status)
    _set_headers(
        request,
        validators,
        extra,
        {
            "Content-Type": content_type,
            "Content-Length": str(length),
            "Cache-Control": cache_control,
        },
    )
    if streamed:
        workers = getattr(request.channel.site, "sendfile_workers", None)
        if use_sendfile and SendfileBody.usable(request, length, workers):
            if reactor is None:
                reactor = request.channel.site.reactor
            body = SendfileBody(request, file, offset, length, path=path, reactor=reactor, workers=workers)
            return body.start()
        return FileBody(request, file, length, path=path).start()
    return body


def file_validators(etag: str, mtime: int) -> dict[str, str]:
    """
    The headers every answer about a stored file carries, wherever its
    bytes come from (local disk or a remote store).
    """
    return {
        "ETag": etag,
        "Last-Modified": datetimeToString(mtime).decode("ascii"),
        "Accept-Ranges": "bytes",
    }


def _set_headers(request: IRequest, *groups: dict[str, str]) -> None:
    for group in groups:
        for name, value in group.items():
            request.setHeader(name.encode("ascii"), value.encode("latin-1"))


# -- request headers ---------------------------------------------------------


def _header_lines(request: IRequest, name: bytes) -> list[str]:
    return [value.decode("latin-1") for value in request.requestHeaders.getRawHeaders(name, [])]


def _not_modified(request: IRequest, etag: str, mtime: int) -> bool:
    """
    Whether the client's copy is current (RFC 9110 13.2.2): If-None-Match
    when it is sent, otherwise If-Modified-Since.
    """
    if_none_match = _header_lines(request, b"if-none-match")
    if if_none_match:
        value = ",".join(if_none_match)
        if value.strip() == "*":
            return True
        # Weak comparison: W/ on either side does not matter.
        return any(opaque == etag[1:-1] for _, opaque in _ENTITY_TAG.findall(value))
    if_modified_since = _header_lines(request, b"if-modified-since")
    if len(if_modified_since) != 1:
        return False
    since = _http_date(if_modified_since[0])
    return since is not None and mtime <= since


def _if_range_matches(request: IRequest, etag: str, mtime: int) -> bool:
    """
    Whether a range may be sent: there is no If-Range, or it names this
    very file by its strong ETag or its exact Last-Modified date.
    """
    lines = _header_lines(request, b"if-range")
    if not lines:
        return True
    if len(lines) != 1:
        return False
    value = lines[0].strip()
    if value.startswith(('"', "W/")):
        # Strong comparison: a weak tag never matches.
        return value == etag
    return _http_date(value) == mtime


def _byte_range(
    request: IRequest, size: int, etag: str, mtime: int
) -> tuple[int, int] | _Unsatisfiable | None:
    """
    The single byte range asked for, as C{(start, end)} with C{end}
    exclusive; L{UNSATISFIABLE}; or L{None} to send the whole file.

    The whole file is the answer to anything but one well-formed bytes
    range: no Range, a malformed one, several ranges (RFC 9110 allows
    ignoring Range altogether, which spares us multipart/byteranges), an
    If-Range that does not match, or an empty file (whose only
    satisfiable range would be an empty one).
    """
    lines = _header_lines(request, b"range")
    if not lines or size == 0 or not _if_range_matches(request, etag, mtime):
        return None
    unit, equals, ranges = ",".join(lines).partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    specs = [spec.strip() for spec in ranges.split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC.fullmatch(specs[0])
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        count = _number(suffix)
        if count == 0:
            return UNSATISFIABLE
        return max(size - count, 0), size
    start = _number(first)
    end = _number(last) if last else _HUGE
    if end < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    return start, min(end, size - 1) + 1


def _number(digits: str) -> int:
    """
    A decimal number from a header, without tripping over Python's limit on
    converting very long digit strings.
    """
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 30 else _HUGE


def _http_date(value: str) -> int | None:
    """
    Seconds since the epoch for an HTTP date in any of its three formats,
    or L{None} for anything that is not a date (which RFC 9110 says to
    ignore).
    """
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # asctime dates carry no zone; HTTP dates are always GMT.
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


# -- the body ----------------------------------------------------------------


@implementer(IPullProducer)
class FileBody:
    """
    A pull producer for C{length} bytes of an open file, from its current
    position, into a request whose headers are set.

    The request's channel drives it through a cooperator, which asks for
    one chunk at a time only while the transport's buffer has room, so
    nothing but that buffer and one chunk is ever in memory. When the
    last byte is written it unregisters, finishes the request and closes
    the file; if the client goes away first it just closes the file.

    @ivar produced: how many bytes have been read from the file so far.
    @ivar done: fires with L{None} when the request has finished or the
        connection has been lost; cancelling it stops the transfer and
        drops the connection.
    """

    def __init__(
        self, request: IRequest, file: IO[bytes], length: int, *, path: str, chunk_size: int = CHUNK_SIZE
    ) -> None:
        self._request = request
        self._file: IO[bytes] | None = file
        self._path = path
        self._length = length
        self._chunk_size = chunk_size
        self.produced = 0
        self.done: Deferred[None] = Deferred(self._cancel)

    @property
    def closed(self) -> bool:
        return self._file is None

    def start(self) -> Deferred[None]:
        self._request.notifyFinish().addErrback(self._lost)
        self._request.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        if self._file is None:
            return
        want = min(self._chunk_size, self._length - self.produced)
        try:
            data = self._file.read(want)
        except OSError:
            log.failure("reading {path}", path=self._path)
            data = b""
        if not data:
            # The headers promised more than the file holds: all that is
            # left is to cut the connection so the client sees a short
            # body rather than a complete one.
            log.error(
                "{path} ended after {produced} of {length} bytes",
                path=self._path,
                produced=self.produced,
                length=self._length,
            )
            self._abort()
            return
        self.produced += len(data)
        self._request.write(data)
        if self.produced >= self._length:
            self._close()
            self._request.unregisterProducer()
            self._request.finish()
            self._fire()

    def stopProducing(self) -> None:
        """
        Called when the connection is lost: close the file. The request is
        left alone, it is as good as gone.
        """
        self._close()

    def _lost(self, reason: object) -> None:
        """
        The client went away before the last byte (C{notifyFinish} failed).
        """
        self._close()
        self._fire()

    def _cancel(self, done: Deferred[None]) -> None:
        """
        Stop sending, and drop the connection since the headers have
        promised the whole length.
        """
        if self._file is not None:
            self._abort()

    def _abort(self) -> None:
        self._close()
        self._request.unregisterProducer()
        self._request.loseConnection()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _fire(self) -> None:
        if not self.done.called:
            self.done.callback(None)

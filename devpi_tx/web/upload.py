"""
Receiving a multipart upload as it arrives.

The body of C{POST /<user>/<index>/} is parsed while it streams in: the
file part goes straight into an L{IFileWriter} (hashed on the way), the
other fields are kept (each small).  Nothing is stored before the uploader
is known to be allowed: while that is being decided the first chunks are
held (and the connection paused), and once refused the rest of the body is
read and dropped, so that the client still gets its 401 or 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from multipart import MultipartError, PushMultipartParser, parse_options_header
from twisted.internet.defer import Deferred, ensureDeferred

from ..interfaces import IFileStore, IFileWriter
from ..logs import logger

log = logger("devpi_tx.upload")

#: Largest value of a non-file form field, and of all of them together.
MAX_FIELD = 1024 * 1024
MAX_FIELDS_TOTAL = 8 * 1024 * 1024
#: Bytes held while the permission check runs before pausing the client.
MAX_PENDING = 256 * 1024
#: The one form field whose file is stored.
FILE_FIELD = "content"


class Refusal(Exception):
    """
    The upload is not allowed; C{render} writes the answer.
    """

    def __init__(self, render: Callable[[], bytes]) -> None:
        super().__init__("upload refused")
        self.render = render


def multipart_boundary(content_type: str) -> str | None:
    media, options = parse_options_header(content_type)
    if media != "multipart/form-data":
        return None
    return options.get("boundary") or None


#: Uploads up to this size stay in memory until they are committed (in a
#: worker thread); larger ones go to a temporary file as they arrive.
SPOOL = 512 * 1024


class UploadReceiver:
    """
    The state of one upload body.

    @ivar fields: the form fields other than the file, as lists of strings.
    @ivar file: the writer holding the file, if one was sent.
    @ivar filename: the file name the client gave.
    @ivar refusal: set if the uploader may not upload.
    @ivar error: what was wrong with the body, if anything.
    """

    def __init__(
        self,
        files: IFileStore,
        boundary: str,
        authorize: Callable[[], Awaitable[None]],
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
    ) -> None:
        self._files = files
        self._parser = PushMultipartParser(boundary, max_header_count=16)
        self._pause, self._resume = pause, resume
        self._pending: list[bytes] | None = []
        self._pending_size = 0
        self._paused = False
        self._segment = None
        self._value: list[bytes] = []
        self._fields_total = 0
        self._body_complete = False
        self._decided = False
        self._done: Deferred = Deferred()
        self.fields: dict[str, list[str]] = {}
        self.file: IFileWriter | None = None
        self.filename: str | None = None
        self.refusal: Refusal | None = None
        self.error: str | None = None
        ensureDeferred(self._authorize(authorize))

    async def _authorize(self, authorize: Callable[[], Awaitable[None]]) -> None:
        try:
            await authorize()
        except Refusal as refusal:
            self.refusal = refusal
        except Exception as exc:  # an unexpected bug must not hang the request
            log.failure("upload authorisation failed")
            self.error = f"internal error: {exc}"
        pending, self._pending = self._pending or [], None
        self._decided = True
        if self.refusal is None and self.error is None:
            for chunk in pending:
                self._parse(chunk)
        if self._paused:
            self._paused = False
            self._resume()
        self._maybe_done()

    # -- body --------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._pending is not None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > MAX_PENDING and not self._paused:
                self._paused = True
                self._pause()
            return
        if self.refusal is None and self.error is None:
            self._parse(data)

    def body_complete(self) -> None:
        self._body_complete = True
        self._maybe_done()

    def wait(self) -> Deferred:
        """
        Fire when the permission is decided and the whole body is parsed.
        """
        return self._done

    def _maybe_done(self) -> None:
        if not (self._decided and self._body_complete) or self._done.called:
            return
        if self.refusal is None and self.error is None:
            try:
                self._parser.close(check_complete=True)
            except MultipartError as exc:
                self._fail(f"malformed multipart body: {exc}")
        if self.refusal is not None or self.error is not None:
            self.discard()
        self._done.callback(self)

    def discard(self) -> None:
        """
        Drop the file written so far, if any.
        """
        if self.file is not None:
            self.file.abort()
            self.file = None

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        self.discard()

    def _parse(self, data: bytes) -> None:
        try:
            for event in self._parser.parse(data):
                if self.error is not None:
                    return
                self._event(event)
        except MultipartError as exc:
            self._fail(f"malformed multipart body: {exc}")

    def _event(self, event) -> None:
        if event is None:  # end of a segment
            segment, self._segment = self._segment, None
            if segment is not None and not (segment.filename is not None and segment.name == FILE_FIELD):
                value = b"".join(self._value).decode("utf-8", "replace")
                self.fields.setdefault(segment.name or "", []).append(value)
            self._value = []
            return
        if isinstance(event, bytes | bytearray | memoryview):
            if self._segment is None:
                return
            if self._segment.filename is not None and self._segment.name == FILE_FIELD:
                if self.file is not None:
                    self.file.write(bytes(event))
                return
            self._fields_total += len(event)
            if self._segment.bytes_received > MAX_FIELD or self._fields_total > MAX_FIELDS_TOTAL:
                self._fail(f"form field {self._segment.name!r} is too large")
                return
            self._value.append(bytes(event))
            return
        self._segment = event
        if event.filename is not None and event.name == FILE_FIELD:
            if self.file is not None:
                self._fail("more than one file in field 'content'")
                return
            self.filename = event.filename
            self.file = self._files.writer(spool=SPOOL)

"""
The wire form of changelog entries, as a primary sends them to replicas.

An entry is one committed transaction: its serial, its time and the keys it
changed with their new values (C{None} for a deletion).  On the wire each
entry is a frame: an ASCII header line, then the changes as compact JSON,
exactly as many bytes as the header says::

    b"<serial> <timestamp> <length>\\n" + <length bytes of JSON object>

The JSON is the text the state keeps in its changelog, sent as it is (a
primary never decodes an entry to send it).  A frame is whole or it is not
there: a replica applies an entry only once all its bytes have arrived and
parsed, so a stream cut anywhere loses at most the entry in flight, which
the next request asks for again.
"""

from __future__ import annotations

import json
import re

import attrs

#: The media type of a stream of frames.
MEDIA_TYPE = "application/x-devpi-tx-changes"

#: A header longer than this is not a header (a serial, a float and a
#: length take well under 64 bytes).
MAX_HEADER = 128

_HEADER = re.compile(rb"(0|[1-9][0-9]{0,18}) ([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?) (0|[1-9][0-9]{0,11})\n")


class FrameError(Exception):
    """
    The bytes received are not a stream of frames.
    """


@attrs.frozen
class Entry:
    serial: int
    timestamp: float
    #: Key to new value, L{None} for a deletion.
    changes: dict


def encode_frame(serial: int, timestamp: float, changes_json: str | bytes) -> bytes:
    """
    One entry's frame, from the JSON text of its changes.
    """
    if isinstance(changes_json, str):
        changes_json = changes_json.encode("utf-8")
    return b"%d %r %d\n" % (serial, timestamp, len(changes_json)) + changes_json


class FrameParser:
    """
    Frames out of a stream of bytes that arrives in pieces of any size.
    """

    def __init__(self, max_frame: int = 1 << 30) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame
        #: The header of the frame whose body is awaited.
        self._pending: tuple[int, float, int] | None = None

    def feed(self, data: bytes) -> list[Entry]:
        """
        Take the next bytes of the stream; return the entries they complete.

        @raise FrameError: the stream is not made of frames.
        """
        self._buffer += data
        entries = []
        while True:
            if self._pending is None:
                end = self._buffer.find(b"\n", 0, MAX_HEADER)
                if end < 0:
                    if len(self._buffer) >= MAX_HEADER:
                        raise FrameError(f"no frame header in {bytes(self._buffer[:40])!r}")
                    return entries
                match = _HEADER.fullmatch(self._buffer, 0, end + 1)
                if match is None:
                    raise FrameError(f"bad frame header {bytes(self._buffer[:end])!r}")
                size = int(match.group(3))
                if size > self._max_frame:
                    raise FrameError(f"frame of {size} bytes is over the limit of {self._max_frame}")
                self._pending = (int(match.group(1)), float(match.group(2)), size)
                del self._buffer[: end + 1]
            serial, timestamp, size = self._pending
            if len(self._buffer) < size:
                return entries
            body = bytes(self._buffer[:size])
            del self._buffer[:size]
            self._pending = None
            try:
                changes = json.loads(body)
            except ValueError as exc:
                raise FrameError(f"entry {serial} is not JSON: {exc}") from None
            if not isinstance(changes, dict):
                raise FrameError(f"entry {serial} is not a JSON object")
            entries.append(Entry(serial, timestamp, changes))

    @property
    def midframe(self) -> bool:
        """
        Whether bytes of an unfinished frame are held (a stream that ends
        now was cut).
        """
        return self._pending is not None or bool(self._buffer)

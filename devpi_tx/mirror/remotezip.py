"""
The core metadata (PEP 658) of a wheel upstream, read with HTTP range
requests instead of downloading the wheel.

A zip file is read from its end: the End Of Central Directory record (22
bytes and a comment of up to 64 KiB, after the zip64 locator and record when
there are any) says where the central directory is, and the directory names
every member with the offset of its local header.  So the tail of the wheel
says where C{.dist-info/METADATA} is, and one more range gets it: two
requests, usually, however large the wheel (one for a small wheel, whose
tail is all of it; three when the directory is larger than the tail).

Whatever does not add up (no range support upstream, an answer that is not
the range asked for, a malformed archive, a compression method other than
stored or deflate, a CRC mismatch) raises L{RemoteZipError}, and the caller
downloads the whole wheel instead: that download is checked against the
sha256 of the index and read with L{zipfile}, which knows every corner of
the format this module leaves out.  Only what the wheel says about itself
and would say just as well after a download (no single METADATA, one too
large, one encrypted) is refused with L{InvalidInput}, as
L{devpi_tx.model.metadata.wheel_metadata} refuses it.

The pieces read here cannot be checked against the wheel's sha256; the CRC32
of METADATA is checked, the rest rests on upstream as the index's hashes do.
"""

from __future__ import annotations

import re
import struct
import zlib

import attrs
from twisted.internet.protocol import Protocol

from ..logs import logger
from ..model.errors import InvalidInput
from ..model.metadata import MAX_METADATA
from .client import UpstreamError, ask_upstream, read_body, redact

log = logger("devpi_tx.mirror")

#: End Of Central Directory record, zip64 EOCD locator and zip64 EOCD record,
#: central directory header, local file header (APPNOTE.TXT 4.3).
EOCD = struct.Struct("<4s4H2LH")
ZIP64_LOCATOR = struct.Struct("<4sLQL")
ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
CENTRAL = struct.Struct("<4s6H3L5H2L")
LOCAL = struct.Struct("<4s5H3L2H")

EOCD_MAGIC = b"PK\x05\x06"
ZIP64_LOCATOR_MAGIC = b"PK\x06\x07"
ZIP64_EOCD_MAGIC = b"PK\x06\x06"
CENTRAL_MAGIC = b"PK\x01\x02"
LOCAL_MAGIC = b"PK\x03\x04"

#: The first request asks for this many bytes from the end: enough for the
#: EOCD with the longest comment, the zip64 locator and the zip64 record,
#: so that where the central directory lies is known after one answer
#: (and for most wheels the whole directory is in it).
TAIL = EOCD.size + 0xFFFF + ZIP64_LOCATOR.size + ZIP64_EOCD.size
#: Range requests one metadata may take: the tail, the rest of the central
#: directory, METADATA.  Past that, downloading the wheel is as good.
MAX_REQUESTS = 3
#: A central directory larger than this is not fetched piecemeal.
MAX_DIRECTORY = 16 * 1024 * 1024
#: Asked for beyond METADATA's local header name, for its extra field
#: (whose length only the local header itself tells): usually none, or a
#: zip64 or timestamp field of a few dozen bytes.
LOCAL_EXTRA_GUESS = 1024

STORED, DEFLATED = 0, 8
FLAG_ENCRYPTED, FLAG_UTF8 = 0x1, 0x800
ZIP64_EXTRA = 0x0001

CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class RemoteZipError(UpstreamError):
    """
    The metadata could not be read with range requests; the caller should
    download the whole wheel instead.
    """


class RangeNotSupported(RemoteZipError):
    """
    Upstream answered a range request with the whole file (200).
    """


@attrs.frozen
class Member:
    """
    What the central directory says of one member.
    """

    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int


async def fetch_wheel_metadata(
    http, url: str, *, timeout: float, basename: str, size: int | None = None
) -> bytes:
    """
    The C{.dist-info/METADATA} of the wheel at C{url}, read with at most
    L{MAX_REQUESTS} range requests.

    @param http: the upstream client (L{UpstreamHTTP}).
    @param basename: the wheel's file name, for messages.
    @param size: the wheel's length when known (upstream's page or a
        previous download); an answer about a file of another length is
        refused.

    @raise RemoteZipError: ranges did not work; download the wheel instead.
    @raise UpstreamError: upstream could not be asked at all.
    @raise InvalidInput: the wheel has no single METADATA, or one too large.
    """
    remote = RemoteFile(http, url, timeout=timeout, basename=basename, size=size)
    await remote.fetch_tail(TAIL)
    directory_offset, directory_size, count = find_directory(remote)
    if directory_size > MAX_DIRECTORY:
        raise RemoteZipError(f"{basename}: central directory of {directory_size} bytes is too large")
    directory = await remote.read(directory_offset, directory_size)
    member = find_metadata(parse_directory(directory, count, basename), basename)
    data = await read_member(remote, member)
    log.debug(
        "read the metadata of {basename} with {requests} range requests, {fetched} of {size} bytes",
        basename=basename,
        requests=remote.requests,
        fetched=remote.fetched,
        size=remote.size,
    )
    return data


class RemoteFile:
    """
    A file upstream, as far as it has been fetched: the pieces held, by
    offset, and the range requests made for them.

    @ivar size: the file's length, known after the first answer.
    @ivar requests: range requests made so far.
    @ivar fetched: body bytes received so far.
    """

    def __init__(self, http, url: str, *, timeout: float, basename: str, size: int | None) -> None:
        self._http = http
        self._url = url
        self._timeout = timeout
        self.basename = basename
        self.size = size
        self.requests = 0
        self.fetched = 0
        self._pieces: list[tuple[int, bytes]] = []

    async def fetch_tail(self, length: int) -> None:
        """
        Fetch the last C{length} bytes (all of a shorter file).
        """
        start, data = await self._ask(f"-{length}")
        assert self.size is not None
        if start != max(0, self.size - length) or start + len(data) != self.size:
            raise RemoteZipError(f"{self.basename}: upstream answered another range than the tail")
        self._add(start, data)

    def held(self, start: int, length: int) -> bytes | None:
        """
        Bytes C{[start, start + length)}, if they have been fetched.
        """
        for offset, data in self._pieces:
            if offset <= start and start + length <= offset + len(data):
                return data[start - offset : start - offset + length]
        return None

    async def read(self, start: int, length: int, *, ahead: int = 0) -> bytes:
        """
        Bytes C{[start, start + length)}, fetched unless held; a fetch also
        asks for up to C{ahead} bytes more, which may save a request later.
        """
        assert self.size is not None
        if start < 0 or length < 0 or start + length > self.size:
            raise RemoteZipError(f"{self.basename}: the archive points beyond its end")
        data = self.held(start, length)
        if data is not None:
            return data
        first, stop = self._missing(start, min(self.size, start + length + ahead))
        got, data = await self._ask(f"{first}-{stop - 1}")
        if got != first or len(data) != stop - first:
            raise RemoteZipError(f"{self.basename}: upstream answered another range than asked")
        self._add(first, data)
        data = self.held(start, length)
        if data is None:  # pragma: no cover - _missing leaves no gap
            raise RemoteZipError(f"{self.basename}: range not held after fetching it")
        return data

    def _missing(self, start: int, stop: int) -> tuple[int, int]:
        """
        The part of C{[start, stop)} to ask for: all of it but a beginning
        or an end already held (the directory's end is in the tail).
        """
        for offset, data in self._pieces:
            end = offset + len(data)
            if offset <= start < end:
                start = end
            if offset < stop <= end:
                stop = offset
        return start, stop

    def _add(self, start: int, data: bytes) -> None:
        """
        Hold C{data} at C{start}, joined with the pieces it touches.
        """
        pieces = sorted([*self._pieces, (start, data)])
        merged = [pieces[0]]
        for offset, piece in pieces[1:]:
            last_offset, last = merged[-1]
            if offset <= last_offset + len(last):
                tail = piece[last_offset + len(last) - offset :]
                merged[-1] = (last_offset, last + tail)
            else:
                merged.append((offset, piece))
        self._pieces = merged

    async def _ask(self, spec: str) -> tuple[int, bytes]:
        """
        One range request (C{spec} as in C{Range: bytes=spec}); returns
        where the answer starts and its bytes.
        """
        if self.requests >= MAX_REQUESTS:
            raise RemoteZipError(f"{self.basename}: more than {MAX_REQUESTS} range requests needed")
        self.requests += 1
        url, response = await ask_upstream(
            self._http,
            "GET",
            self._url,
            timeout=self._timeout,
            headers={"Range": f"bytes={spec}"},
        )
        if response.code == 200:
            # The whole wheel is coming: stop it, the caller downloads it
            # properly (into the store, hash-checked) instead.
            abandon(response)
            raise RangeNotSupported(f"{redact(url)}: upstream does not support range requests")
        if response.code != 206:
            abandon(response)
            raise RemoteZipError(f"{redact(url)}: upstream answered {response.code} to a range request")
        values = response.headers.getRawHeaders("content-range") or [""]
        match = CONTENT_RANGE.fullmatch(values[0].strip())
        if match is None:
            abandon(response)
            raise RemoteZipError(f"{redact(url)}: unusable Content-Range {values[0]!r}")
        first, last, total = (int(value) for value in match.groups())
        if last < first or last >= total:
            abandon(response)
            raise RemoteZipError(f"{redact(url)}: inconsistent Content-Range {values[0]!r}")
        if self.size is not None and total != self.size:
            abandon(response)
            raise RemoteZipError(f"{redact(url)}: the file has {total} bytes upstream, not {self.size}")
        # No more than the range announced, whatever the body's length says.
        data = await read_body(self._http, url, response, limit=last - first + 1, idle=self._timeout)
        if len(data) != last - first + 1:
            # A body in another Content-Encoding, or cut short.
            raise RemoteZipError(f"{redact(url)}: {len(data)} bytes for a range of {last - first + 1}")
        self.size = total
        self.fetched += len(data)
        return first, data


class _Drop(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()

    def connectionLost(self, reason) -> None:
        pass


def abandon(response) -> None:
    """
    Close the connection of an unwanted body rather than receive it: it may
    be a whole wheel of hundreds of megabytes.
    """
    try:
        response.deliverBody(_Drop())
    except Exception:
        pass  # best effort: a body already gone or going is fine


def find_directory(remote: RemoteFile) -> tuple[int, int, int]:
    """
    Where the central directory of the file is (offset, size) and how many
    entries it has, from its EOCD record (and zip64 record), both in the
    tail already fetched.
    """
    assert remote.size is not None
    tail_length = min(remote.size, TAIL)
    tail_start = remote.size - tail_length
    tail = remote.held(tail_start, tail_length)
    assert tail is not None
    position = _find_end(tail)
    if position is None:
        raise RemoteZipError(f"{remote.basename}: no end of central directory record, not a zip file")
    _, disk, directory_disk, on_disk, count, size, offset, _ = EOCD.unpack_from(tail, position)
    end = tail_start + position
    locator = position - ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == ZIP64_LOCATOR_MAGIC:
        _, _, record_offset, disks = ZIP64_LOCATOR.unpack_from(tail, locator)
        record = remote.held(record_offset, ZIP64_EOCD.size)
        if record is None or record[:4] != ZIP64_EOCD_MAGIC or disks > 1:
            raise RemoteZipError(f"{remote.basename}: unusable zip64 end of central directory")
        _, _, _, _, disk, directory_disk, on_disk, count, size, offset = ZIP64_EOCD.unpack(record)
        end = record_offset
    elif 0xFFFF in (count, on_disk) or 0xFFFFFFFF in (size, offset):
        raise RemoteZipError(f"{remote.basename}: zip64 values without a zip64 record")
    if disk or directory_disk or on_disk != count:
        raise RemoteZipError(f"{remote.basename}: a multi-disk archive")
    if offset + size != end:
        # Data before the archive (as zipfile tolerates): leave it to zipfile.
        raise RemoteZipError(f"{remote.basename}: the central directory is not where its end says")
    return offset, size, count


def _find_end(tail: bytes) -> int | None:
    """
    Where the EOCD record is in C{tail}: at the last signature whose record
    and comment end exactly at the end of the file (a comment may contain
    the signature).
    """
    latest = len(tail) - EOCD.size
    while latest >= 0:
        # rfind's end bounds where the signature ends, not where it starts.
        position = tail.rfind(EOCD_MAGIC, 0, latest + len(EOCD_MAGIC))
        if position < 0:
            return None
        if position + EOCD.size + EOCD.unpack_from(tail, position)[7] == len(tail):
            return position
        latest = position - 1
    return None


def parse_directory(directory: bytes, count: int, basename: str) -> list[Member]:
    """
    The members the central directory lists, names decoded as
    L{zipfile} decodes them.
    """
    members = []
    position = 0
    while position < len(directory):
        if directory[position : position + 4] != CENTRAL_MAGIC or position + CENTRAL.size > len(directory):
            raise RemoteZipError(f"{basename}: bad central directory entry")
        fields = CENTRAL.unpack_from(directory, position)
        flags, method, crc, compressed, size = fields[3], fields[4], fields[7], fields[8], fields[9]
        name_length, extra_length, comment_length, offset = fields[10], fields[11], fields[12], fields[16]
        start = position + CENTRAL.size
        position = start + name_length + extra_length + comment_length
        if position > len(directory):
            raise RemoteZipError(f"{basename}: truncated central directory entry")
        raw_name = directory[start : start + name_length]
        extra = directory[start + name_length : start + name_length + extra_length]
        size, compressed, offset = _zip64_values(extra, size, compressed, offset, basename)
        try:
            name = raw_name.decode("utf-8" if flags & FLAG_UTF8 else "cp437").split("\x00", 1)[0]
        except UnicodeDecodeError:
            raise RemoteZipError(f"{basename}: a member name is not UTF-8") from None
        members.append(Member(name, raw_name, flags, method, crc, compressed, size, offset))
    if len(members) != count:
        raise RemoteZipError(f"{basename}: {len(members)} central directory entries, {count} announced")
    return members


def _zip64_values(
    extra: bytes, size: int, compressed: int, offset: int, basename: str
) -> tuple[int, int, int]:
    """
    The sizes and offset of an entry, the 64-bit ones of its zip64 extra
    field standing in for those saturated at 0xFFFFFFFF, in that order.
    """
    position = 0
    while position + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, position)
        body = extra[position + 4 : position + 4 + length]
        position += 4 + length
        if kind != ZIP64_EXTRA:
            continue
        values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
        try:
            if size == 0xFFFFFFFF:
                size = values.pop(0)
            if compressed == 0xFFFFFFFF:
                compressed = values.pop(0)
            if offset == 0xFFFFFFFF:
                offset = values.pop(0)
        except IndexError:
            raise RemoteZipError(f"{basename}: short zip64 extra field") from None
        return size, compressed, offset
    if 0xFFFFFFFF in (size, compressed, offset):
        raise RemoteZipError(f"{basename}: zip64 values without a zip64 extra field")
    return size, compressed, offset


def find_metadata(members: list[Member], basename: str) -> Member:
    """
    The one C{<name>.dist-info/METADATA} at the top of the wheel (the rule
    of L{devpi_tx.model.metadata.wheel_metadata}).

    @raise InvalidInput: none or several, or it cannot be served.
    """
    candidates = [
        member
        for member in members
        if member.name.count("/") == 1
        and member.name.split("/")[0].endswith(".dist-info")
        and member.name.endswith("/METADATA")
    ]
    if len(candidates) != 1:
        raise InvalidInput(f"{basename!r} is not a valid wheel: no single .dist-info/METADATA")
    (member,) = candidates
    if member.size > MAX_METADATA:
        raise InvalidInput(f"{basename!r}: METADATA is too large")
    if member.flags & FLAG_ENCRYPTED:
        raise InvalidInput(f"{basename!r} is not a valid wheel: METADATA is encrypted")
    if member.method not in (STORED, DEFLATED):
        raise RemoteZipError(f"{basename}: METADATA compressed with method {member.method}")
    # Deflate may grow incompressible data, by a few bytes per 16 KiB block.
    if member.compressed_size > member.size + member.size // 1000 + 1024:
        raise RemoteZipError(f"{basename}: METADATA compressed size does not fit its size")
    return member


async def read_member(remote: RemoteFile, member: Member) -> bytes:
    """
    The contents of C{member}: its local header read (fetched together with
    the data, guessing the length of the header's extra field), then its
    data decompressed and checked against the directory's size and CRC32.
    """
    basename = remote.basename
    header = await remote.read(
        member.header_offset,
        LOCAL.size + len(member.raw_name),
        ahead=LOCAL_EXTRA_GUESS + member.compressed_size,
    )
    magic, *_, name_length, extra_length = LOCAL.unpack_from(header)
    if magic != LOCAL_MAGIC or header[LOCAL.size :] != member.raw_name or name_length != len(member.raw_name):
        raise RemoteZipError(f"{basename}: local header of METADATA does not match the directory")
    data_start = member.header_offset + LOCAL.size + name_length + extra_length
    raw = await remote.read(data_start, member.compressed_size)
    if member.method == STORED:
        data = raw
    else:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(raw, member.size + 1)
        except zlib.error as exc:
            raise RemoteZipError(f"{basename}: METADATA does not inflate: {exc}") from None
        if not inflater.eof:
            raise RemoteZipError(f"{basename}: METADATA's deflate stream is incomplete or too long")
    if len(data) != member.size:
        raise RemoteZipError(f"{basename}: METADATA has {len(data)} bytes, the directory says {member.size}")
    if zlib.crc32(data) != member.crc:
        raise RemoteZipError(f"{basename}: METADATA fails its CRC32 check")
    return data

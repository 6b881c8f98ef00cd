"""
A mirrored wheel's core metadata read with range requests: the zip parser
against real wheels (small, multi-megabyte, zip64, stored and deflated
METADATA, broken ones), and the mirror taking it that way, from the stored
wheel, or from a download when upstream has no range support.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tempfile
import zipfile

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from devpi_tx.mirror import remotezip
from devpi_tx.mirror.client import UpstreamError, make_http_client
from devpi_tx.mirror.http import UpstreamHTTP
from devpi_tx.mirror.remotezip import RangeNotSupported, RemoteZipError, fetch_wheel_metadata
from devpi_tx.model import releases
from devpi_tx.model.errors import InvalidInput
from devpi_tx.model.metadata import wheel_metadata

from .conftest import on_loopback, result_of
from .distfiles import make_wheel, metadata_text
from .fakeupstream import CannedAnswer, FakeUpstream, Release

FILES = "http://127.0.0.1:9/files/"
JSON = "application/vnd.pypi.simple.v1+json"
METADATA = metadata_text("hello", "1.0").encode()
BIG = 4 * 1024 * 1024


def rebuild(
    data: bytes,
    *,
    method: int = zipfile.ZIP_DEFLATED,
    force_zip64: bool = False,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> bytes:
    """
    The wheel C{data} written again: METADATA compressed with C{method}
    (its local header with a zip64 extra field if C{force_zip64}), then the
    C{extra} members, stored.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as original:
        members = [(info.filename, original.read(info)) for info in original.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members:
            if name.endswith("/METADATA"):
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = method
                with zf.open(info, "w", force_zip64=force_zip64) as member:
                    member.write(content)
            else:
                zf.writestr(name, content)
        for name, content in extra:
            zf.writestr(name, content, compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def hello_wheel(**kw) -> tuple[str, bytes]:
    filename, data = make_wheel("hello", "1.0")
    return filename, rebuild(data, **kw) if kw else data


def big_wheel() -> tuple[str, bytes]:
    """
    A wheel of several megabytes: METADATA near its start, an
    incompressible member after it, the central directory at the end.
    """
    return hello_wheel(extra=(("hello/blob.bin", os.urandom(BIG)),))


def fetch(upstream: FakeUpstream, filename: str, **kw) -> bytes:
    stub = StubTreq(upstream)
    http = UpstreamHTTP(stub, Clock())
    d = Deferred.fromCoroutine(
        fetch_wheel_metadata(http, FILES + filename, timeout=5, basename=filename, **kw)
    )
    for _ in range(20):
        stub.flush()
        if d.called:
            break
    return result_of(d)


def served(upstream: FakeUpstream, filename: str, data: bytes, **kw) -> tuple[bytes, int, int]:
    """
    Serve the wheel, read its METADATA; return it with the number of
    requests and of bytes it took.
    """
    upstream.add("hello", Release(filename, data))
    metadata = fetch(upstream, filename, **kw)
    asked = [spec for name, spec in upstream.ranges_asked if name == filename]
    return metadata, len(asked), upstream.served.get(filename, 0)


# -- the parser ------------------------------------------------------------------


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_small_wheel_takes_one_request(method):
    filename, data = hello_wheel(method=method)
    assert len(data) < remotezip.TAIL
    metadata, requests, fetched = served(FakeUpstream(), filename, data)
    assert metadata == METADATA == wheel_metadata_of(filename, data)
    assert requests == 1
    assert fetched == len(data)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_big_wheel_takes_two_small_requests(method):
    filename, data = hello_wheel(method=method, extra=(("hello/blob.bin", os.urandom(BIG)),))
    assert len(data) > BIG
    metadata, requests, fetched = served(FakeUpstream(), filename, data, size=len(data))
    assert metadata == METADATA
    # The tail, then METADATA's local header and data (and a little more).
    assert requests == 2
    assert fetched < remotezip.TAIL + remotezip.LOCAL_EXTRA_GUESS + 1024


def test_central_directory_larger_than_the_tail_takes_three_requests():
    members = tuple((f"hello/module_with_a_rather_long_name_{i:05d}.py", b"x = 1\n") for i in range(1500))
    filename, data = hello_wheel(extra=(*members, ("hello/blob.bin", os.urandom(BIG))))
    metadata, requests, fetched = served(FakeUpstream(), filename, data)
    assert metadata == METADATA
    assert requests == 3
    assert fetched < len(data) // 10


def test_zip64_local_header_whose_extra_field_the_directory_lacks():
    filename, data = hello_wheel(method=zipfile.ZIP_STORED, force_zip64=True)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("hello-1.0.dist-info/METADATA")
    local_extra = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    assert local_extra == 20 and info.extra == b""
    assert served(FakeUpstream(), filename, data)[0] == METADATA


def test_zip64_archive(monkeypatch):
    # Lowered limits make zipfile write what it writes past 4 GiB: the zip64
    # end record and locator, and zip64 extra fields in the directory.
    with monkeypatch.context() as patch:
        patch.setattr(zipfile, "ZIP64_LIMIT", 32)
        patch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
        filename, data = hello_wheel(force_zip64=True, extra=(("hello/blob.bin", os.urandom(BIG)),))
    assert remotezip.ZIP64_EOCD_MAGIC in data[-200:] and remotezip.ZIP64_LOCATOR_MAGIC in data[-200:]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert all(info.extra.startswith(b"\x01\x00") for info in zf.infolist()[1:])
    # Saturate the plain end record's fields, as they are in a real zip64
    # archive, so that only the zip64 record tells.
    end = data.rindex(remotezip.EOCD_MAGIC)
    saturated = remotezip.EOCD.pack(remotezip.EOCD_MAGIC, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    data = data[:end] + saturated
    metadata, requests, fetched = served(FakeUpstream(), filename, data)
    assert metadata == METADATA == wheel_metadata_of(filename, data)
    assert requests == 2 and fetched < 100_000


def test_corrupted_metadata_fails_its_crc():
    filename, data = hello_wheel(method=zipfile.ZIP_STORED)
    at = data.index(b"Summary: test package")
    data = data[:at] + b"s" + data[at + 1 :]
    with pytest.raises(RemoteZipError, match="CRC32"):
        served(FakeUpstream(), filename, data)


def test_two_metadata_files_refused():
    filename, data = hello_wheel(extra=(("other-1.0.dist-info/METADATA", METADATA),))
    with pytest.raises(InvalidInput, match="no single .dist-info/METADATA"):
        served(FakeUpstream(), filename, data)
    with pytest.raises(InvalidInput):
        wheel_metadata_of(filename, data)


def test_metadata_deeper_down_does_not_count():
    filename, data = hello_wheel(extra=(("hello/x.dist-info/METADATA", b"Name: not this\n"),))
    assert served(FakeUpstream(), filename, data)[0] == METADATA


def test_too_large_metadata_refused(monkeypatch):
    monkeypatch.setattr(remotezip, "MAX_METADATA", 10)
    filename, data = hello_wheel()
    with pytest.raises(InvalidInput, match="too large"):
        served(FakeUpstream(), filename, data)


def test_no_range_support():
    upstream = FakeUpstream()
    upstream.ranges = False
    filename, data = hello_wheel()
    with pytest.raises(RangeNotSupported):
        served(upstream, filename, data)


def test_size_mismatch_refused():
    filename, data = hello_wheel()
    with pytest.raises(RemoteZipError, match=f"has {len(data)} bytes upstream, not {len(data) + 1}"):
        served(FakeUpstream(), filename, data, size=len(data) + 1)


@pytest.mark.parametrize("data", [b"", b"not a zip file at all" * 100, b"PK\x05\x06" + b"\0" * 30])
def test_not_a_zip_file(data):
    with pytest.raises(RemoteZipError):
        served(FakeUpstream(), "hello-1.0-py3-none-any.whl", data)


def test_other_compression_left_to_zipfile():
    filename, data = hello_wheel(method=zipfile.ZIP_BZIP2)
    with pytest.raises(RemoteZipError, match="method 12"):
        served(FakeUpstream(), filename, data)


def test_range_requests_are_capped(monkeypatch):
    monkeypatch.setattr(remotezip, "MAX_REQUESTS", 1)
    filename, data = big_wheel()
    upstream = FakeUpstream()
    with pytest.raises(RemoteZipError, match="more than 1 range requests"):
        served(upstream, filename, data)
    assert len(upstream.ranges_asked) == 1


def wheel_metadata_of(filename: str, data: bytes) -> bytes:
    """
    What L{wheel_metadata} reads from the same wheel on disk.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, filename)
        with open(path, "wb") as f:
            f.write(data)
        return wheel_metadata(path, filename)


# -- the fake upstream's ranges ----------------------------------------------------


@pytest.mark.parametrize(
    "spec, code, content_range, body",
    [
        ("bytes=2-5", 206, "bytes 2-5/10", b"2345"),
        ("bytes=7-", 206, "bytes 7-9/10", b"789"),
        ("bytes=-3", 206, "bytes 7-9/10", b"789"),
        ("bytes=-30", 206, "bytes 0-9/10", b"0123456789"),
        ("bytes=8-30", 206, "bytes 8-9/10", b"89"),
        ("bytes=10-", 416, "bytes */10", b""),
        ("bytes=-0", 416, "bytes */10", b""),
        ("bytes=5-2", 200, None, b"0123456789"),
        ("bytes=0-1,4-5", 200, None, b"0123456789"),
    ],
)
def test_fake_upstream_ranges(spec, code, content_range, body):
    upstream = FakeUpstream()
    upstream.add("x", Release("x-1.0.tar.gz", b"0123456789"))
    stub = StubTreq(upstream)
    response = result_of(stub.get(FILES + "x-1.0.tar.gz", headers={"Range": spec}))
    assert response.code == code
    assert (response.headers.getRawHeaders("content-range") or [None])[0] == content_range
    assert result_of(response.content()) == body
    assert upstream.served.get("x-1.0.tar.gz", 0) == len(body)


# -- through the mirror ------------------------------------------------------------


def metadata_url(client, project: str = "hello") -> str:
    page = f"/root/pypi/+simple/{project}/"
    (entry,) = client.get(page, accept=JSON).json["files"]
    return posixpath.normpath(posixpath.join(page, entry["url"])) + ".metadata"


def wheel_entry(client, url: str) -> dict:
    return releases.get_file(client.context.storage, url[1 : -len(".metadata")])


@pytest.fixture
def sources():
    """
    Where the mirror took each core metadata from, as it logs it.
    """
    found: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "devpi_tx.mirror":
            if "Unable to format" in formatEvent(event):
                found.append(f"unformattable: {event['log_format']}")
            elif "source" in event:
                found.append(event["source"])

    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)


def store(client, url: str) -> dict:
    """
    Download the wheel whose metadata is at C{url} into the store.
    """
    d = Deferred.fromCoroutine(client.context.mirror_files.ensure(url[1 : -len(".metadata")]))
    client._flush(d)
    return result_of(d)


def test_uncached_wheel_metadata_read_with_ranges(client, upstream, sources):
    filename, data = big_wheel()
    upstream.add("hello", Release(filename, data))
    url = metadata_url(client)
    answer = client.get(url, accept=None)
    assert answer.code == 200
    assert answer.body == METADATA
    assert upstream.served[filename] < 100_000 < len(data)
    assert not wheel_entry(client, url).get("stored")
    # Stored now: no more requests.
    asked = len(upstream.requests)
    assert client.get(url, accept=None).body == METADATA
    assert len(upstream.requests) == asked
    # The stored answer is not logged: it is every request after the first.
    assert sources == ["range"]
    # The wheel itself is still downloaded whole when asked for.
    assert store(client, url)["sha256"] == hashlib.sha256(data).hexdigest()


def test_concurrent_requests_share_one_reading(client, upstream, sources, monkeypatch):
    filename, data = big_wheel()
    upstream.add("hello", Release(filename, data))
    path = metadata_url(client)[1 : -len(".metadata")]
    gate: Deferred = Deferred()
    calls = []
    real = remotezip.fetch_wheel_metadata

    async def held(*args, **kw):
        calls.append(args)
        await gate  # upstream is slow: the second request comes meanwhile
        return await real(*args, **kw)

    monkeypatch.setattr("devpi_tx.mirror.files.fetch_wheel_metadata", held)
    files = client.context.mirror_files
    first = Deferred.fromCoroutine(files.metadata(path))
    second = Deferred.fromCoroutine(files.metadata(path))
    gate.callback(None)
    client._flush(first)
    client._flush(second)
    assert result_of(first) == result_of(second) == hashlib.sha256(METADATA).hexdigest()
    assert len(calls) == 1
    assert sources == ["range"]


def test_upstream_size_is_checked(client, upstream, monkeypatch):
    filename, data = hello_wheel()
    # upstream's page announces a wrong size (PEP 700)
    upstream.add("hello", Release(filename, data, size=len(data) + 1))
    upstream.sizes = True
    url = metadata_url(client)
    sizes = []
    real = remotezip.fetch_wheel_metadata

    async def spy(*args, **kw):
        sizes.append(kw["size"])
        return await real(*args, **kw)

    monkeypatch.setattr("devpi_tx.mirror.files.fetch_wheel_metadata", spy)
    monkeypatch.setattr(client.context.mirror_files, "_range_threshold", 0)
    answer = client.get(url, accept=None)
    # The wrong size made the range answer suspicious: the wheel was downloaded.
    assert sizes == [len(data) + 1]
    assert answer.body == METADATA
    assert wheel_entry(client, url)["stored"]


def test_small_wheel_of_known_size_is_downloaded_whole(client, upstream, sources):
    """
    The installer asks for the wheel next: below the threshold, the wheel
    is downloaded (and kept) rather than read with ranges.
    """
    filename, data = hello_wheel()
    upstream.add("hello", Release(filename, data))
    upstream.sizes = True
    url = metadata_url(client)
    assert client.get(url, accept=None).body == METADATA
    assert [asked for _, asked in upstream.ranges_asked if asked] == []
    assert wheel_entry(client, url)["stored"]
    assert sources == ["download"]


def test_host_without_range_support_is_not_asked_with_ranges_again(client, upstream, sources):
    upstream.ranges = False
    upstream.add("hello", Release(*hello_wheel()))
    upstream.add("other", Release(*make_wheel("other", "1.0")))
    ranges = lambda: [asked for _, asked in upstream.ranges_asked if asked]  # noqa: E731
    assert client.get(metadata_url(client), accept=None).code == 200
    assert len(ranges()) == 1
    assert client.get(metadata_url(client, "other"), accept=None).code == 200
    assert len(ranges()) == 1
    # The first answer to a range is abandoned for a download; the second
    # wheel is downloaded at once.
    assert sources == ["download", "download"]


def test_no_range_support_falls_back_to_downloading_the_wheel(client, upstream, sources):
    upstream.ranges = False
    filename, data = hello_wheel()
    upstream.add("hello", Release(filename, data))
    url = metadata_url(client)
    answer = client.get(url, accept=None)
    assert answer.code == 200
    assert answer.body == METADATA
    entry = wheel_entry(client, url)
    assert entry["stored"] and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert upstream.served[filename] >= len(data)
    assert sources == ["download"]


def test_cached_wheel_metadata_read_from_disk(client, upstream, sources):
    filename, data = big_wheel()
    upstream.add("hello", Release(filename, data))
    url = metadata_url(client)
    store(client, url)
    asked = len(upstream.requests)
    assert client.get(url, accept=None).body == METADATA
    assert len(upstream.requests) == asked
    assert sources == ["cache"]


def test_corrupted_wheel_is_502_after_the_fallback(client, upstream):
    filename, data = hello_wheel(method=zipfile.ZIP_STORED)
    at = data.index(b"Summary: test package")
    upstream.add("hello", Release(filename, data[:at] + b"s" + data[at + 1 :]))
    answer = client.get(metadata_url(client), accept=None)
    assert answer.code == 502


def test_wheel_with_two_metadata_is_502_without_download(client, upstream):
    filename, data = hello_wheel(extra=(("other-1.0.dist-info/METADATA", METADATA),))
    upstream.add("hello", Release(filename, data))
    url = metadata_url(client)
    answer = client.get(url, accept=None)
    assert answer.code == 502
    assert b"no single .dist-info/METADATA" in answer.body
    assert not wheel_entry(client, url).get("stored")


# -- over a real connection ----------------------------------------------------------


@pytest.fixture
def loopback():
    upstream = FakeUpstream()
    http = make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))
    with on_loopback(Site(upstream)) as port:
        yield upstream, http, f"http://127.0.0.1:{port}/files/"


@pytest_twisted.ensureDeferred
async def test_ranges_over_a_real_connection(loopback):
    upstream, http, files = loopback
    filename, data = big_wheel()
    upstream.add("hello", Release(filename, data))
    metadata = await fetch_wheel_metadata(http, files + filename, timeout=10, basename=filename)
    assert metadata == METADATA
    assert upstream.served[filename] < 100_000


@pytest_twisted.ensureDeferred
async def test_whole_wheel_answer_is_abandoned(loopback):
    upstream, http, files = loopback
    upstream.ranges = False
    upstream.file_delay = 0.01  # 64 KiB at a time: the whole wheel takes 0.6 s or more
    filename, data = big_wheel()
    upstream.add("hello", Release(filename, data))
    with pytest.raises(RangeNotSupported):
        await fetch_wheel_metadata(http, files + filename, timeout=10, basename=filename)
    # The connection is dropped rather than the wheel received: upstream
    # sees its answer cut off, well before its end.
    (dropped,) = upstream.dropped[filename]
    await dropped.addTimeout(10, reactor)
    assert upstream.served[filename] < len(data) // 2


WHEEL = "x-1.0-py3-none-any.whl"
#: A range answer's head for the first four bytes of a large file.
FOUR_BYTES = {b"Content-Range": b"bytes 0-3/1000000"}


@pytest_twisted.ensureDeferred
async def test_a_range_answer_longer_than_its_range_is_not_read_past_it(canned):
    url = canned(CannedAnswer(b"x" * 100_000, code=206, headers=FOUR_BYTES)) + "/" + WHEEL
    http = make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))
    with pytest.raises(UpstreamError, match="over the limit of 4 bytes"):
        await fetch_wheel_metadata(http, url, timeout=10, basename=WHEEL)


@pytest_twisted.ensureDeferred
async def test_a_range_answer_that_stalls_is_given_up(canned):
    # Two of its four bytes, then nothing.
    answer = CannedAnswer(b"PK", code=206, headers={**FOUR_BYTES, b"Content-Length": b"4"}, stall=True)
    url = canned(answer) + "/" + WHEEL
    http = make_http_client(reactor, HTTPConnectionPool(reactor, persistent=False))
    with pytest.raises(UpstreamError, match="no data for 0.2 s"):
        await fetch_wheel_metadata(http, url, timeout=0.2, basename=WHEEL)

"""
The file store's contract over both providers (local disk and S3 on moto),
and what only S3 does: multipart uploads, their abort, objects visible
only when complete.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile

import attrs
import pytest
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from devpi_tx.cli import maintenance
from devpi_tx.config import ConfigError, build_config
from devpi_tx.interfaces import IFileStore, IFileWriter, ILocalFileStore, IRemoteFileStore
from devpi_tx.remote import pypi_upload
from devpi_tx.service import build_context
from devpi_tx.startup import CommandError
from devpi_tx.storage.files import LocalFileStore
from devpi_tx.storage.filestore import REMOTE_SPOOL, check_local_files
from devpi_tx.storage.s3 import S3FileStore, make_client, parse_files_url

from .conftest import result_of, synchronous, synchronous_passwords

pytestmark = pytest.mark.scaleout


def _s3_store(tmp_path, bucket: str, **kwargs) -> S3FileStore:
    return S3FileStore(make_client(), bucket, "files/prefix", str(tmp_path / "tmp"), **kwargs)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalFileStore(str(tmp_path / "+files"))
    _, bucket = request.getfixturevalue("s3_bucket")
    return _s3_store(tmp_path, bucket)


def _put(store, data: bytes, spool: int = 0) -> str:
    writer = store.writer(spool=spool)
    for i in range(0, len(data), 1000):
        writer.write(data[i : i + 1000])
    return writer.commit()


def test_providers(store):
    assert verifyObject(IFileStore, store)
    assert verifyObject(IFileWriter, store.writer())
    if isinstance(store, LocalFileStore):
        assert verifyObject(ILocalFileStore, store)
        assert not IRemoteFileStore.providedBy(store)
    else:
        assert verifyObject(IRemoteFileStore, store)
        assert not ILocalFileStore.providedBy(store)


@pytest.mark.parametrize("spool", [0, 1 << 16])
def test_write_commit_exists_open_seek_read_size_remove(store, spool):
    data = os.urandom(5000)
    digest = _put(store, data, spool)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.exists(digest)
    assert store.size(digest) == 5000
    with store.open(digest) as f:
        assert f.read() == data
        f.seek(1234)
        assert f.read(10) == data[1234:1244]
        f.seek(-7, io.SEEK_END)
        assert f.read() == data[-7:]
        f.seek(0)
        assert f.read(3) == data[:3]
    store.remove(digest)
    store.remove(digest)
    assert not store.exists(digest)
    with pytest.raises(FileNotFoundError):
        store.open(digest)
    with pytest.raises(FileNotFoundError):
        store.size(digest)
    assert os.listdir(store.tmpdir) == []


def test_abort_leaves_nothing(store):
    writer = store.writer()
    writer.write(b"partial")
    writer.abort()
    assert not store.exists(hashlib.sha256(b"partial").hexdigest())
    assert os.listdir(store.tmpdir) == []


def test_same_content_twice_kept_once(store):
    assert _put(store, b"same") == _put(store, b"same")
    if isinstance(store, S3FileStore):
        listed = store._client.list_objects_v2(Bucket=store.bucket)
        assert [o["Key"] for o in listed["Contents"]] == [store.key(hashlib.sha256(b"same").hexdigest())]


@pytest.mark.parametrize("bad", ["../etc/passwd", "a" * 63, "G" * 64, "/" + "a" * 63])
def test_digest_not_hex_refused(store, bad):
    for method in (store.exists, store.open, store.size, store.remove):
        with pytest.raises(ValueError):
            method(bad)


def test_zipfile_reads_through_the_store(store):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg\n")
        z.writestr("pkg/big.bin", os.urandom(300_000))
    digest = _put(store, buffer.getvalue())
    with store.open(digest) as f, zipfile.ZipFile(f) as z:
        assert z.read("pkg-1.0.dist-info/METADATA") == b"Name: pkg\n"


def test_s3_objects_are_content_addressed(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket)
    digest = _put(store, b"hello")
    body = server.client().get_object(Bucket=bucket, Key=f"files/prefix/{digest[:3]}/{digest[3:]}")["Body"]
    assert body.read() == b"hello"


MiB = 1024 * 1024


def test_multipart_upload(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket, multipart_threshold=5 * MiB, part_size=5 * MiB)
    calls = []
    upload_part = store._client.upload_part

    def counting(**kwargs):
        calls.append(kwargs["PartNumber"])
        # Not visible while its parts go up.
        assert not store.exists(hashlib.sha256(data).hexdigest())
        return upload_part(**kwargs)

    store._client.upload_part = counting
    data = os.urandom(11 * MiB)
    digest = _put(store, data)
    assert calls == [1, 2, 3]
    assert store.size(digest) == len(data)
    with store.open(digest) as f:
        f.seek(6 * MiB)
        assert f.read(100) == data[6 * MiB : 6 * MiB + 100]
    assert server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_failed_part_aborts_the_upload(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket, multipart_threshold=5 * MiB, part_size=5 * MiB)
    upload_part = store._client.upload_part

    def failing(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise ConnectionError("the network went away")
        return upload_part(**kwargs)

    store._client.upload_part = failing
    writer = store.writer()
    writer.write(os.urandom(11 * MiB))
    with pytest.raises(ConnectionError):
        writer.commit()
    client = server.client()
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert os.listdir(store.tmpdir) == []


def test_a_multipart_upload_whose_bytes_change_is_not_completed(s3_bucket, tmp_path):
    server, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket, multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = os.urandom(11 * MiB)
    digest = hashlib.sha256(data).hexdigest()
    # The spooled file changed under the writer (a disk fault, say).
    body = io.BytesIO(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(OSError, match="read back has digest"):
        store.upload(digest, len(data), body)
    client = server.client()
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_upload_asks_the_store_not_its_memory(s3_bucket, tmp_path):
    # Node B stored the file, node A removed it; B must store it again.
    _, bucket = s3_bucket
    a, b = _s3_store(tmp_path / "a", bucket), _s3_store(tmp_path / "b", bucket)
    digest = _put(b, b"shared content")
    assert b.exists(digest)
    a.remove(digest)
    assert _put(b, b"shared content") == digest
    assert a.exists(digest)
    with a.open(digest) as f:
        assert f.read() == b"shared content"


def test_file_not_visible_before_commit(s3_bucket, tmp_path):
    _, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket)
    writer = store.writer()
    writer.write(b"not yet")
    assert not store.exists(writer.hexdigest())
    writer.commit()
    assert store.exists(writer.hexdigest())


def test_upload_carries_its_checksum(s3_bucket, tmp_path):
    """
    Each upload sends the SHA-256 the writer computed (ChecksumSHA256), for
    the store to check what it received against (S3 refuses a mismatch
    with BadDigest; moto neither checks nor keeps it, so what is checked
    here is what goes out).
    """
    _, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket)
    sent = []
    store._client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **kw: sent.append(request.headers["x-amz-checksum-sha256"]),
    )
    digest = _put(store, b"checked on arrival")
    assert [base64.b64decode(value).hex() for value in sent] == [digest]


def test_presigned_url_is_for_the_object(s3_bucket, tmp_path):
    _, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket)
    digest = _put(store, b"signed")
    url = store.download_url(digest, 60)
    assert url.startswith(os.environ["AWS_ENDPOINT_URL"]) and "Signature" in url
    assert store.key(digest) in url


@pytest.mark.parametrize(
    "url, parsed",
    [("s3://bucket", ("bucket", "")), ("s3://my.bucket/a/b/", ("my.bucket", "a/b"))],
)
def test_parse_files_url(url, parsed):
    assert parse_files_url(url) == parsed


@pytest.mark.parametrize("url", ["/srv/files", "s3://", "s3://UPPER/x", "http://example.com/b"])
def test_parse_files_url_refuses(url):
    with pytest.raises(ValueError):
        parse_files_url(url)


@pytest.mark.parametrize(
    "given, option",
    [
        ({"files": "/srv/files"}, "option files:"),
        ({"files": "s3://b_/x"}, "option files:"),
        ({"files-endpoint": "http://127.0.0.1:9"}, "option files-endpoint:"),
        ({"files-redirect": True}, "option files-redirect:"),
        ({"files": "s3://bucket/x", "hard-links": True}, "option hard-links:"),
        ({"files": "s3://bucket/x", "mirror-cache-size": "1G"}, "option mirror-cache-size:"),
        ({"files": "s3://bucket/x", "files-endpoint": "ftp://example.com"}, "option files-endpoint:"),
    ],
)
def test_files_options_refused(tmp_path, given, option):
    with pytest.raises(ConfigError) as caught:
        build_config({"serverdir": str(tmp_path), **given}, None, environ={})
    assert str(caught.value).startswith(option) and "\n" not in str(caught.value)


def test_files_options_taken(tmp_path):
    config = build_config(
        {"serverdir": str(tmp_path), "files": "s3://bucket/x", "files-region": "eu-west-1"}, None, environ={}
    )
    assert (config.files, config.files_region, config.files_redirect) == ("s3://bucket/x", "eu-west-1", False)


def test_fsck_and_export_refuse_a_server_with_files_in_s3(tmp_path, s3_bucket, config):
    _, bucket = s3_bucket
    config = attrs.evolve(config, files=f"s3://{bucket}/x")
    build_context(config, passwords=synchronous_passwords(), run_in_thread=synchronous).close()
    assert os.path.isdir(os.path.join(config.serverdir, REMOTE_SPOOL))
    with pytest.raises(CommandError, match="^fsck works on files.*object storage"):
        maintenance.fsck(config.serverdir)
    with pytest.raises(ValueError, match="^export works on files"):
        check_local_files(str(tmp_path), "s3://bucket/x", "export")


def test_exists_remembers_what_is_stored(s3_bucket, tmp_path):
    _, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket)
    digest = _put(store, b"remembered")
    heads = []
    store._client.meta.events.register("before-send.s3.HeadObject", lambda **kw: heads.append(1))
    assert store.exists(digest) and store.exists(digest)
    assert heads == []
    store.remove(digest)
    assert not store.exists(digest)
    assert heads == [1]


def test_push_reads_a_remote_file_from_a_local_copy(s3_bucket, tmp_path):
    """
    A push reads its bodies on the reactor thread: from a remote store, out
    of a local copy made in a worker thread.
    """
    _, bucket = s3_bucket
    store = _s3_store(tmp_path, bucket)
    digest = _put(store, b"pushed elsewhere")
    body = result_of(Deferred.fromCoroutine(pypi_upload._open_local(store, digest, synchronous)))
    with body:
        assert body.read() == b"pushed elsewhere" and not isinstance(body, io.BufferedReader)
    with pytest.raises(TypeError, match="needs run_in_thread"):
        result_of(Deferred.fromCoroutine(pypi_upload._open_local(store, digest, None)))


def test_a_bucket_that_cannot_be_reached_stops_the_start(s3_bucket, config):
    config = attrs.evolve(config, files="s3://no-such-bucket/x")
    with pytest.raises(ConfigError, match="^option files: bucket no-such-bucket at http://127.0.0.1:.*404"):
        build_context(config, passwords=synchronous_passwords(), run_in_thread=synchronous)


def test_no_credentials_stop_the_start(s3_bucket, config, monkeypatch, tmp_path):
    _, bucket = s3_bucket
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = attrs.evolve(config, files=f"s3://{bucket}/x")
    with pytest.raises(ConfigError, match="^option files: no S3 credentials"):
        build_context(config, passwords=synchronous_passwords(), run_in_thread=synchronous)

"""
Release files in S3-compatible object storage (C{--files s3://bucket/prefix}).

Objects are content-addressed like the local store's files:
C{<prefix>/<sha[:3]>/<sha[3:]>}.  A writer hashes what it is given into a
temporary file on local disk (the same spooling as the local store's
writer, so a mirror download can still be served while it grows), and
its C{commit} (which callers run in a worker thread) uploads the file
unless an object with that digest exists: one C{PutObject} carrying the
SHA-256 checksum, which the store verifies before it accepts the object,
or above a threshold a multipart upload with a SHA-256 checksum per part,
aborted on any failure.  Either way S3 makes an object visible only once
it is complete, so a reader never sees part of a file.

Requests go through botocore (signing, retries, the credential chain of
the AWS environment variables and files); botocore's HTTP is blocking, so
everything here runs in worker threads, except L{S3FileStore.download_url},
which only computes a signature.  Serving to clients happens on the reactor
(L{devpi_tx.web.remotefiles}) from such a URL.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import io
import os
import re
import threading
from typing import IO

from zope.interface import implementer

from ..interfaces import IRemoteFileStore
from ..logs import logger
from .errors import FileStoreUnavailable, first_line
from .files import _TMP_PREFIX, LocalFileWriter, _check_digest

log = logger("devpi_tx.files.s3")

#: Files larger than this go up as a multipart upload.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
#: The size of a multipart upload's parts (S3 wants at least 5 MiB but
#: for the last); one part at a time is held in memory.
PART_SIZE = 16 * 1024 * 1024
#: How a stored file is read: one streamed GET from the current position
#: until the reader seeks elsewhere.
READ_BUFFER = 1024 * 1024
#: How many digests L{S3FileStore.exists} remembers as stored.
KNOWN_PRESENT = 100_000

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_files_url(url: str) -> tuple[str, str]:
    """
    The bucket and key prefix of a C{--files} value.

    @raise ValueError: it is not C{s3://bucket[/prefix]}.
    """
    if not url.startswith("s3://"):
        raise ValueError(
            f"{url!r} is not s3://BUCKET/PREFIX (leave it out for +files in the server directory)"
        )
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{bucket!r} in {url!r} is not an S3 bucket name")
    return bucket, prefix.strip("/")


def make_client(endpoint: str | None = None, region: str | None = None):
    """
    A botocore S3 client.  Whatever is not given comes from botocore's own
    chain: C{AWS_ENDPOINT_URL}, C{AWS_DEFAULT_REGION}, the credentials'
    variables, C{~/.aws/config} and C{~/.aws/credentials}, and so on.
    Response checksums are checked only when asked for: a ranged GET has
    none, and a signed URL must not demand a header our client never sends.

    @raise ValueError: no credentials were found.
    """
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    # Resolved once and kept by the session, which the client then uses.
    if session.get_credentials() is None:
        raise ValueError(
            "no S3 credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "~/.aws/credentials)"
        )
    config = Config(
        signature_version="s3v4",
        # Short enough that a store gone silent fails a request within
        # seconds (botocore's defaults are 60 s each, three attempts).
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 2},
        max_pool_connections=32,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.create_client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _is_missing(exc: Exception) -> bool:
    # The object missing (a HEAD's bare 404, a GET's NoSuchKey), not the
    # bucket: NoSuchBucket is the store unusable.
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class _StoreErrors:
    """
    Turns what botocore raises when the store cannot be reached (or
    refuses the request: 403, 5xx) into L{FileStoreUnavailable} with one
    line naming the bucket, which the web layer answers with a 503; a
    missing object (404) is left to the caller.
    """

    def __init__(self, store: S3FileStore, what: str) -> None:
        self._store = store
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, FileStoreUnavailable) or _is_missing(exc):
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, (BotoCoreError, ClientError)):
            raise FileStoreUnavailable(
                f"s3://{self._store.bucket} ({self._what}): {type(exc).__name__}: {first_line(exc)}"
            ) from None
        return False


class S3FileWriter(LocalFileWriter):
    """
    A file being written for an L{S3FileStore}: spooled and hashed locally
    as a L{LocalFileWriter} does (C{flush} and C{partial_path} serve a
    growing mirror download), uploaded at the commit.
    """

    def commit(self, durable: bool = True) -> str:
        """
        Upload the file under its digest, unless it is stored already.
        Blocks (a worker thread's job).  C{durable} changes nothing: S3
        acknowledges an object once it is stored durably.
        """
        if self._done:
            raise RuntimeError("file already committed or aborted")
        self._done = True
        digest = self._hash.hexdigest()
        try:
            if self._buffer is not None:
                body: IO[bytes] = io.BytesIO(bytes(self._buffer))
            else:
                self._file.close()
                body = open(self._tmp_path, "rb")
            with body:
                self._store.upload(digest, self.size, body)
        finally:
            self._discard()
        return digest


class S3Reader(io.RawIOBase):
    """
    A stored object read lazily: one GET from the current position on,
    read as far as the caller reads; a seek elsewhere drops it and the
    next read starts another.  So zipfile, which seeks to the end and then
    to one member, costs a few small requests, and a sequential read one
    request, without the whole file ever being copied (a spooled local
    copy would fetch a 1 GB wheel to read its METADATA).
    """

    def __init__(self, client, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._client = client
        self._bucket = bucket
        self._key = key
        self.size = size
        self._pos = 0
        self._stream = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        position = base + offset
        if position < 0:
            raise OSError(f"negative seek position {position}")
        if position != self._pos:
            self._drop()
            self._pos = position
        return self._pos

    def readinto(self, buffer) -> int:
        if self._pos >= self.size or len(buffer) == 0:
            return 0
        if self._stream is None:
            answer = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-")
            self._stream = answer["Body"]
        data = self._stream.read(min(len(buffer), self.size - self._pos))
        if not data:
            raise OSError(f"s3 object {self._key} ended at {self._pos} of {self.size} bytes")
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        self._drop()
        super().close()


@implementer(IRemoteFileStore)
class S3FileStore:
    """
    Files as objects C{<prefix>/<sha[:3]>/<sha[3:]>} of one bucket.

    @param client: a botocore S3 client (L{make_client}).
    @param tmpdir: where writers spool (on local disk, in the server
        directory); leftovers of a crash are removed here.
    @param multipart_threshold: larger files go up in parts of
        C{part_size} bytes.
    """

    def __init__(
        self,
        client,
        bucket: str,
        prefix: str,
        tmpdir: str,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.tmpdir = tmpdir
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        #: Digests known to be stored (uploaded or found by this process),
        #: most recent last: content-addressed objects do not change, so
        #: C{exists} answers for them without a request; some callers ask
        #: on the reactor thread (see docs/scale-out.md).
        self._present: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        os.makedirs(tmpdir, exist_ok=True)
        for name in os.listdir(tmpdir):
            if name.startswith(_TMP_PREFIX):
                os.unlink(os.path.join(tmpdir, name))

    def key(self, sha256: str) -> str:
        """
        The object key of a digest (the local store's fan-out).
        """
        _check_digest(sha256)
        name = f"{sha256[:3]}/{sha256[3:]}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def writer(self, spool: int = 0) -> S3FileWriter:
        return S3FileWriter(self, spool)

    def _head(self, sha256: str) -> dict:
        try:
            with _StoreErrors(self, "head"):
                return self._client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"s3://{self.bucket}/{self.key(sha256)}") from None
            raise

    def _known(self, sha256: str) -> None:
        with self._lock:
            self._present[sha256] = None
            self._present.move_to_end(sha256)
            if len(self._present) > KNOWN_PRESENT:
                self._present.popitem(last=False)

    def exists(self, sha256: str) -> bool:
        if sha256 in self._present:
            return True
        try:
            self._head(sha256)
        except FileNotFoundError:
            return False
        self._known(sha256)
        return True

    def size(self, sha256: str) -> int:
        return int(self._head(sha256)["ContentLength"])

    def open(self, sha256: str) -> IO[bytes]:
        reader = S3Reader(self._client, self.bucket, self.key(sha256), self.size(sha256))
        return io.BufferedReader(reader, buffer_size=READ_BUFFER)

    def remove(self, sha256: str) -> None:
        with self._lock:
            self._present.pop(sha256, None)
        with _StoreErrors(self, "delete"):
            self._client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    def download_url(
        self, sha256: str, expires: int, method: str = "GET", content_type: str | None = None
    ) -> str:
        """
        A presigned URL for a GET (or C{method} C{HEAD}) of the object.
        """
        operation = {"GET": "get_object", "HEAD": "head_object"}[method]
        params = {"Bucket": self.bucket, "Key": self.key(sha256)}
        if content_type is not None:
            params["ResponseContentType"] = content_type
        return self._client.generate_presigned_url(operation, Params=params, ExpiresIn=expires)

    def upload(self, sha256: str, size: int, body: IO[bytes]) -> None:
        """
        Store C{body} (C{size} bytes with digest C{sha256}) unless it is
        stored already.  Blocks.

        Whether it is stored is asked of the store itself, never of this
        process's memory of digests: another node may have removed the
        object since, and a link committed to a missing object would be
        a download that fails for good.
        """
        try:
            self._head(sha256)
        except FileNotFoundError:
            pass
        else:
            self._known(sha256)
            return
        key = self.key(sha256)
        with _StoreErrors(self, "upload"):
            self._put(key, sha256, size, body)
        self._known(sha256)
        log.debug("stored {key} ({size} bytes)", key=key, size=size)

    def _put(self, key: str, sha256: str, size: int, body: IO[bytes]) -> None:
        if size <= self.multipart_threshold:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentLength=size,
                ChecksumSHA256=_b64(bytes.fromhex(sha256)),
            )
        else:
            self._multipart(key, body, sha256)

    def _multipart(self, key: str, body: IO[bytes], sha256: str) -> None:
        """
        Upload in parts, each with its checksum; the whole is hashed as it
        is read and must be C{sha256} before the upload is completed (an
        upload that is not completed leaves no object), so what gets the
        key is what was verified.
        """
        upload_id = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
        )["UploadId"]
        completed = False
        try:
            parts, digests = [], []
            whole = hashlib.sha256()
            while chunk := body.read(self.part_size):
                whole.update(chunk)
                digest = hashlib.sha256(chunk).digest()
                digests.append(digest)
                number = len(parts) + 1
                answer = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ChecksumSHA256=_b64(digest),
                )
                parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": _b64(digest)})
            if whole.hexdigest() != sha256:
                raise OSError(f"s3 object {key}: the file read back has digest {whole.hexdigest()}")
            answer = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            completed = True
            # S3's checksum of a multipart object: the SHA-256 of the
            # parts' digests, "-<parts>" (stores that keep none send none).
            expected = _b64(hashlib.sha256(b"".join(digests)).digest())
            got = answer.get("ChecksumSHA256")
            if got and got.split("-")[0] != expected:
                # Not deleted: the parts were verified above, and another
                # node may have stored the same content under this key.
                log.error(
                    "s3 object {key}: checksum {got} of the parts, expected {expected}",
                    key=key, got=got, expected=expected,
                )  # fmt: skip
        except BaseException:
            if completed:
                raise
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                log.failure("aborting the multipart upload of {key}", key=key)
            raise

"""
Pushing a release to an external index the way twine does: one multipart
POST per file (and one for the docs), with HTTP Basic auth, each file
streamed from disk by treq's multipart producer.

A failed step is reported with the repository (credentials redacted) and
why: what it answered, or that it could not be reached and how.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import IO

import attrs
from treq.multipart import MultiPartProducer
from twisted.internet import error as neterror
from twisted.internet.defer import Deferred
from twisted.web.client import (
    FileBodyProducer,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from ..interfaces import IFileStore, ILocalFileStore
from ..logs import logger
from ..mirror.errors import is_timeout
from ..model.redact import redact_url
from ..model.releases import LIST_FIELDS, METADATA_KEYS

log = logger("devpi_tx.push")


@attrs.frozen
class PushTarget:
    posturl: str
    username: str
    password: str
    register_project: bool = False


@attrs.frozen
class PushResult:
    """
    What an external push did.

    @ivar status: 200 when the last step succeeded, else 502.
    @ivar actions: devpi's action log, one entry per step.
    @ivar message: why it failed (the repository, and what went wrong),
        or L{None}.
    """

    status: int
    actions: list
    message: str | None = None


#: Modules whose exceptions mean the TLS handshake or the certificate
#: check failed (pyOpenSSL, service_identity, the standard library's ssl).
_TLS_MODULES = ("OpenSSL", "service_identity", "ssl")


_WRAPPERS = (ResponseNeverReceived, ResponseFailed, RequestGenerationFailed, RequestTransmissionFailed)


def _causes(exc: BaseException) -> list[BaseException]:
    """
    The exceptions under the agents' wrappers, each of which holds
    failures.
    """
    if isinstance(exc, _WRAPPERS):
        return [cause for reason in exc.reasons for cause in _causes(reason.value)]
    return [exc]


def describe_failure(exc: BaseException, timeout: float) -> str:
    """
    Why a request got no answer, in a few words: connection refused, timed
    out, a TLS error...
    """
    causes = _causes(exc) or [exc]
    if any(is_timeout(cause) for cause in causes):
        # Cancelled by treq's timeout, while sending or waiting.
        return f"timed out (no answer within {timeout:g} s)"
    for cause in causes:
        if type(cause).__module__.split(".", 1)[0] in _TLS_MODULES:
            return f"TLS error: {type(cause).__name__}: {cause}".splitlines()[0]
    cause = causes[0]
    if isinstance(cause, neterror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, neterror.DNSLookupError):
        return "host not found"
    if isinstance(cause, (neterror.ConnectionLost, neterror.ConnectionDone)):
        return "connection closed before an answer"
    if isinstance(cause, neterror.ConnectError):
        return f"could not connect: {cause}".splitlines()[0]
    return f"{type(cause).__name__}: {cause}".splitlines()[0]


def _metadata_fields(metadata: dict) -> list[tuple[str, str]]:
    fields: list[tuple[str, str]] = []
    for key in METADATA_KEYS:
        value = metadata.get(key)
        if value in (None, "", []):
            continue
        if key in LIST_FIELDS:
            fields.extend((key, str(item)) for item in value)
        else:
            fields.append((key, str(value)))
    return fields


def _file_fields(link: dict) -> list[tuple[str, str]]:
    basename = link["basename"]
    if basename.endswith(".whl"):
        filetype, pyversion = "bdist_wheel", basename.split("-")[-3]
    else:
        filetype, pyversion = "sdist", "source"
    return [
        ("filetype", filetype),
        ("pyversion", pyversion),
        ("sha256_digest", link["sha256"]),
        ("protocol_version", "1"),
    ]


async def _post(http, target: PushTarget, fields: list, timeout: float) -> tuple[int, str]:
    """
    One POST; a request that got no answer gives status -1 and the
    message saying why.
    """
    boundary = uuid.uuid4().hex.encode("ascii")
    try:
        response = await http.post(
            target.posturl,
            data=MultiPartProducer(fields, boundary=boundary),
            headers={"Content-Type": b"multipart/form-data; boundary=" + boundary},
            auth=(target.username, target.password),
            timeout=timeout,
        )
        text = await response.text()
    except Exception as exc:
        message = f"push to {redact_url(target.posturl)} failed: {describe_failure(exc, timeout)}"
        log.warn("{message}", message=message)
        return -1, message
    return response.code, text


def _failed(target: PushTarget, what: str, status: int, text: str) -> str:
    """
    The message for a step that failed with C{status} (and C{text}).
    """
    if status == -1:
        return text
    return f"push to {redact_url(target.posturl)} failed: {what} answered {status}"


async def push_release(
    http,
    files: IFileStore,
    target: PushTarget,
    metadata: dict,
    links: list[dict],
    *,
    no_docs: bool = False,
    only_docs: bool = False,
    timeout: float = 30.0,
    run_in_thread: Callable[..., Deferred] | None = None,
) -> PushResult:
    """
    Upload a version's files (and doc zip) to C{target.posturl}.

    @param run_in_thread: copies a file of a remote store to a local
        temporary file first (the body is read on the reactor thread, which
        must not wait on the network for it); needed for a remote store.

    @return: the overall status (200 when the last step succeeded, else
        502), devpi's action log (an entry that got no answer has status
        -1 and says why) and what failed.
    """
    name, version = metadata["name"], metadata["version"]
    results: list = []
    meta_fields = _metadata_fields(metadata)
    last, message = 200, None
    if target.register_project:
        status, text = await _post(http, target, [(":action", "submit"), *meta_fields], timeout)
        results.append([status, "register", name, version] + ([text] if status == -1 else []))
        if status not in (200, 201, 410):
            return PushResult(
                502, results, _failed(target, f"the registration of {name} {version}", status, text)
            )
    for link in links:
        rel = link["rel"]
        if rel == "toxresult" or (rel == "doczip" and no_docs) or (rel == "releasefile" and only_docs):
            continue
        with await _open_local(files, link["sha256"], run_in_thread) as body:
            if rel == "releasefile":
                fields = [(":action", "file_upload"), *meta_fields, *_file_fields(link)]
                content = (link["basename"], "application/octet-stream", FileBodyProducer(body))
                fields.append(("content", content))
                status, text = await _post(http, target, fields, timeout)
                results.append([status, "upload", link["relpath"], text])
                what = f"the upload of {link['basename']}"
            else:
                fields = [(":action", "doc_upload"), *meta_fields]
                fields.append(("content", (f"{name}.zip", "application/zip", FileBodyProducer(body))))
                status, text = await _post(http, target, fields, timeout)
                results.append([status, "docfile", name] + ([text] if status == -1 else []))
                what = f"the documentation upload of {name}"
        last = status
        if status not in (200, 201):
            message = _failed(target, what, status, text)
    if last in (200, 201):
        return PushResult(200, results)
    return PushResult(502, results, message)


async def _open_local(
    files: IFileStore, sha256: str, run_in_thread: Callable[..., Deferred] | None
) -> IO[bytes]:
    """
    A stored file open for reading on the reactor thread: the file itself
    in a local store, else a local temporary copy made in a worker thread.
    """
    if ILocalFileStore.providedBy(files):
        return files.open(sha256)
    if run_in_thread is None:
        raise TypeError("pushing from a remote file store needs run_in_thread")
    return await run_in_thread(_spooled_copy, files, sha256)


def _spooled_copy(files: IFileStore, sha256: str) -> IO[bytes]:
    copy = tempfile.TemporaryFile(dir=getattr(files, "tmpdir", None))
    try:
        with files.open(sha256) as source:
            shutil.copyfileobj(source, copy, 1 << 20)
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return copy

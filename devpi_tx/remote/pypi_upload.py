"""
Pushing a release to an external index the way twine does: one multipart
POST per file (and one for the docs), with HTTP Basic auth, each file
streamed from disk by treq's multipart producer.
"""

from __future__ import annotations

import uuid

import attrs
from treq.multipart import MultiPartProducer
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer

from ..interfaces import IFileStore
from ..model.releases import LIST_FIELDS, METADATA_KEYS

log = Logger(namespace="devpi_tx.push")


@attrs.frozen
class PushTarget:
    posturl: str
    username: str
    password: str
    register_project: bool = False


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
        log.warn("push to {url} failed: {error}", url=target.posturl, error=str(exc))
        return -1, str(exc)
    return response.code, text


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
) -> tuple[int, list]:
    """
    Upload a version's files (and doc zip) to C{target.posturl}.

    @return: the overall status (200 when the last step succeeded, else
        502) and devpi's action log.
    """
    name, version = metadata["name"], metadata["version"]
    results: list = []
    meta_fields = _metadata_fields(metadata)
    last = 200
    if target.register_project:
        status, _ = await _post(http, target, [(":action", "submit"), *meta_fields], timeout)
        results.append([status, "register", name, version])
        if status not in (200, 201, 410):
            return 502, results
    for link in links:
        rel = link["rel"]
        if rel == "toxresult" or (rel == "doczip" and no_docs) or (rel == "releasefile" and only_docs):
            continue
        with open(files.path(link["sha256"]), "rb") as body:
            if rel == "releasefile":
                fields = [(":action", "file_upload"), *meta_fields, *_file_fields(link)]
                content = (link["basename"], "application/octet-stream", FileBodyProducer(body))
                fields.append(("content", content))
                status, text = await _post(http, target, fields, timeout)
                results.append([status, "upload", link["relpath"], text])
            else:
                fields = [(":action", "doc_upload"), *meta_fields]
                fields.append(("content", (f"{name}.zip", "application/zip", FileBodyProducer(body))))
                status, text = await _post(http, target, fields, timeout)
                results.append([status, "docfile", name])
        last = status
    return (200 if last in (200, 201) else 502), results

"""
Throwaway distributions and twine-style upload forms, made in memory.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
import zipfile


def metadata_text(name: str, version: str, requires_python: str | None = None) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: test package {name}",
    ]
    if requires_python:
        lines.append(f"Requires-Python: {requires_python}")
    return "\n".join(lines) + "\n\n"


def make_wheel(
    name: str, version: str, requires_python: str | None = None, payload: bytes = b""
) -> tuple[str, bytes]:
    """
    A pure-Python wheel with one module, installable by pip and uv.
    """
    dist = name.replace("-", "_")
    distinfo = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}.py": f"VERSION = {version!r}\nPAYLOAD = {payload!r}\n".encode(),
        f"{distinfo}/METADATA": metadata_text(name, version, requires_python).encode(),
        f"{distinfo}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(
        f"{path},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n" for path, data in files.items()
    )
    files[f"{distinfo}/RECORD"] = (record + f"{distinfo}/RECORD,,\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


def make_sdist(name: str, version: str) -> tuple[str, bytes]:
    """
    An sdist with C{PKG-INFO} and the module in its top directory.  (A
    second member matters: twine takes the common path of all members as
    the top directory, which for a single member is the member itself.)
    """
    dist = name.replace("-", "_")
    base = f"{dist}-{version}"
    members = {
        f"{base}/PKG-INFO": metadata_text(name, version).encode(),
        f"{base}/{dist}.py": f"VERSION = {version!r}\n".encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return f"{base}.tar.gz", buf.getvalue()


def make_doczip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.html", "<html>docs</html>")
    return buf.getvalue()


def multipart(
    fields: list[tuple[str, str]], file: tuple[str, bytes] | None = None, *, boundary: str | None = None
) -> tuple[str, bytes]:
    """
    A multipart/form-data body as twine sends it; returns (content type,
    body).  Text that is not Unicode (lone surrogates, as hostile tests
    send) goes out as the bytes it stands for.

    @param boundary: a fixed boundary (the same bytes on every call), else
        a random one.
    """
    boundary = boundary or uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode(
            "utf-8", "surrogateescape"
        )
        for name, value in fields
    ]
    if file is not None:
        filename, data = file
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode("utf-8", "surrogateescape") + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def upload_form(
    name: str,
    version: str,
    filename: str,
    data: bytes,
    action: str = "file_upload",
    extra: list[tuple[str, str]] | None = None,
    *,
    boundary: str | None = None,
) -> tuple[str, bytes]:
    fields = [
        (":action", action),
        ("protocol_version", "1"),
        ("name", name),
        ("version", version),
        ("metadata_version", "2.1"),
        ("summary", f"test package {name}"),
        ("sha256_digest", hashlib.sha256(data).hexdigest()),
        ("filetype", "bdist_wheel" if filename.endswith(".whl") else "sdist"),
        ("pyversion", "py3" if filename.endswith(".whl") else "source"),
    ] + list(extra or [])
    return multipart(fields, (filename, data), boundary=boundary)

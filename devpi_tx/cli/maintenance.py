"""
Offline maintenance of a stopped server's directory: C{devpi-tx passwd},
C{devpi-tx gen-secret} and C{devpi-tx fsck}.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import sys
from collections.abc import Callable, Iterator

import attrs

from ..auth.passwords import default_hasher
from ..config import ServerConfig
from ..model import releases, users
from ..serverdir import is_initialized, write_secret
from ..startup import CommandError
from ..storage.backends import open_storage_for
from ..storage.files import LocalFileStore
from ..storage.filestore import check_local_files
from ..storage.sqlite import open_storage

#: A progress line every this many files checked.
PROGRESS_EVERY = 1000


def set_password(serverdir: str, user: str, password: str, storage_url: str | None = None) -> None:
    """
    Set C{user}'s password in the state of a stopped server: its SQLite
    file, or with C{storage_url} the PostgreSQL database its nodes share
    (which running nodes learn of as of any other node's commit).

    @raise CommandError: no server there, or no such user.
    """
    if not is_initialized(serverdir):
        raise CommandError(f"{serverdir} holds no server (run devpi-tx init, or give --serverdir)")
    storage = open_storage_for(ServerConfig(serverdir=serverdir, storage=storage_url))
    try:
        if users.get_user(storage, user) is None:
            raise CommandError(f"no user {user!r} in {serverdir}")
        pwhash = default_hasher().hash(password)
        with storage.transaction() as tx:
            users.modify_user(tx, user, {}, pwhash)
    finally:
        storage.close()


def read_new_password(prompt: Callable[[str], str] = getpass.getpass) -> str:
    """
    A new password: typed twice on a terminal, else one line of stdin.
    """
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = prompt("new password: ")
        if prompt("again: ") != password:
            raise CommandError("the passwords differ")
    if not password:
        raise CommandError("an empty password; give one")
    return password


def gen_secret(path: str, force: bool = False) -> str:
    """
    Write a new secret (32 random bytes, base64) to C{path}, mode 0600.

    @raise CommandError: C{path} exists and C{force} is not given (a new
        secret logs every user out and stops replicas until they share it).
    """
    if os.path.exists(path) and not force:
        raise CommandError(f"{path} exists; a new secret logs everyone out (use --force to replace it)")
    write_secret(path)
    return path


@attrs.define
class FsckReport:
    checked: int = 0
    bytes: int = 0
    #: Linked blobs missing from the store, or whose content is not theirs.
    missing: list[str] = attrs.field(factory=list)
    damaged: list[str] = attrs.field(factory=list)
    #: Blobs in the store that nothing links.
    unlinked: list[str] = attrs.field(factory=list)
    #: What --repair did, one line each.
    repaired: list[str] = attrs.field(factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.damaged or self.unlinked)


def _stored_blobs(store: LocalFileStore) -> Iterator[str]:
    for top in sorted(os.listdir(store.root)):
        directory = os.path.join(store.root, top)
        if len(top) != 3 or not os.path.isdir(directory):
            continue
        for rest in sorted(os.listdir(directory)):
            yield top + rest


def _sha256_of(path: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsck(serverdir: str, repair: bool = False, progress: Callable[[str], object] = print) -> FsckReport:
    """
    Check that every blob the state links is in the store with its content,
    and that every blob in the store is linked.  With C{repair}: a
    mirrored file that is missing or damaged is marked not stored (fetched
    again when next asked for); an uploaded one is unlinked from its index
    (its bytes are gone; upload it again); unlinked blobs are deleted.
    """
    if not is_initialized(serverdir):
        raise CommandError(f"{serverdir} holds no server (give --serverdir)")
    try:
        check_local_files(serverdir, None, "fsck")
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    storage = open_storage(serverdir)
    store = LocalFileStore(os.path.join(serverdir, "+files"))
    report = FsckReport()
    try:
        linked = {key[len("blob/") :] for key in storage.keys("blob/")}
        total = len(linked)
        for sha256 in sorted(linked):
            path = store.local_path(sha256)
            if not os.path.exists(path):
                report.missing.append(sha256)
            else:
                digest, size = _sha256_of(path)
                report.bytes += size
                if digest != sha256:
                    report.damaged.append(sha256)
            report.checked += 1
            if report.checked % PROGRESS_EVERY == 0:
                progress(f"checked {report.checked} of {total} files, {report.bytes} bytes")
        report.unlinked = [sha for sha in _stored_blobs(store) if sha not in linked]
        if repair:
            _repair(storage, store, report)
    finally:
        storage.close()
    return report


def _repair(storage, store: LocalFileStore, report: FsckReport) -> None:
    bad = set(report.missing) | set(report.damaged)
    #: Blobs the unlinking left without a link (a wheel's METADATA).
    unused: set[str] = set()
    for sha256 in report.damaged:
        store.remove(sha256)
    if bad:
        for key in storage.keys("file/"):
            entry = storage.get(key)
            if entry is None:
                continue
            path = key[len("file/") :]
            if entry.get("core_metadata_sha256") in bad:
                report.repaired.append(f"{path}.metadata: made again from its wheel when asked for")
            if entry.get("sha256") not in bad:
                continue
            with storage.transaction() as tx:
                if entry.get("mirror"):
                    tx.set(key, {k: v for k, v in entry.items() if k != "stored"})
                    releases.release_blob(tx, entry["sha256"], unused)
                    report.repaired.append(f"{path}: marked not stored, fetched again when asked for")
                else:
                    stage = "/".join(path.split("/", 2)[:2])
                    unused.update(releases.delete_file(tx, stage, path, volatile=True, force=True))
                    report.repaired.append(f"{path}: unlinked (its bytes are gone; upload it again)")
    for sha256 in report.unlinked:
        store.remove(sha256)
        report.repaired.append(f"blob {sha256}: deleted (nothing links it)")
    for sha256 in unused - bad:
        if store.exists(sha256):
            store.remove(sha256)

"""
C{devpi-tx import}: a dump (L{reader}) into an empty server directory.

Order of work, so that a bad dump changes nothing:

 1. the dump is read and checked whole (L{reader.read_dump}), and the
    state it makes is planned: users, index configurations through their
    index types' parsers, bases (missing ones dropped with a warning,
    loops refused, as the model refuses them);
 2. the server directory is initialised if it is not, and must hold
    nothing but user root (and its root/pypi);
 3. every file is copied (or hard-linked) into the file store, hashed on
    the way and checked against the digests the dump gives (a few at
    once, see L{Importer.store_files}), and a wheel's METADATA stored as
    a blob of its own;
 4. one filesystem sync makes them durable;
 5. the state is written.

The state is written as keys, not through L{releases.add_file}: the keys,
their record shapes and paths come from L{releases} (its key and path
functions, and L{link_records} builds what C{add_file} writes, which
C{tests/test_dump.py} checks against C{add_file} itself), but the values
are the dump's: C{add_file} stamps a link with the time of the call and
logs an upload, where an import must keep each file's upload time (on
the simple pages, as PEP 700's C{upload-time}) and its history; and it
reads the state for overwrites and doc zips of the version first, which
an import into an empty state never needs.  Projects are written in
transactions of up to L{BATCH_KEYS} keys: a changelog entry stays a
bounded size for replicas, and a transaction's memory a bounded size.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TextIO

import attrs
from packaging.utils import canonicalize_name

from ..config import ServerConfig
from ..customizers import CustomizerRegistry, default_registry
from ..model import indexes, releases, users
from ..model.errors import InvalidInput
from ..model.metadata import wheel_metadata
from ..serverdir import initialize, is_initialized, read_nodeinfo
from ..storage.files import LocalFileStore
from ..storage.sqlite import SQLiteStorage, open_storage
from . import DumpError
from .fileio import store_derived, store_file, sync_filesystem
from .progress import Progress, human
from .reader import Dump, DumpFile, StageDump

#: Keys written per transaction (about 4 per file and 2 per version).
BATCH_KEYS = 20_000
#: Files stored at once, and how many may wait to be checked.
THREADS = 4
WINDOW = 64


@dataclass
class Stored:
    """
    A dump file once in the store.
    """

    sha256: str
    size: int
    core_metadata_sha256: str | None


class _Records:
    """
    A reader over planned user records, for L{indexes.check_bases}.
    """

    def __init__(self, records: dict[str, dict]) -> None:
        self._records = records

    def get(self, key: str) -> dict | None:
        return self._records.get(key[len("user/") :]) if key.startswith("user/") else None


def link_records(stage: str, project: str, version: str, link: dict) -> tuple[str, dict, str, dict]:
    """
    The keys and values a file link is stored as (what L{releases.add_file}
    writes for it): C{(link key, link, file key, file entry)}.
    """
    entry = {key: link[key] for key in ("rel", "sha256", "size", "last_modified")}
    entry.update(project=canonicalize_name(project), version=version)
    for key in ("core_metadata_sha256", "for_relpath"):
        if key in link:
            entry[key] = link[key]
    return (
        releases.link_key(stage, project, version, link["basename"]),
        link,
        releases.file_key(link["relpath"]),
        entry,
    )


def check_empty(storage: SQLiteStorage, serverdir: str) -> dict | None:
    """
    Refuse a state that holds more than an initialised one (user root,
    with root/pypi at most); return root's record.
    """
    for key in storage.keys(""):
        if key == "user/root":
            extra = sorted(set(storage.get(key).get("indexes", {})) - {"pypi"})
            if extra:
                raise DumpError(
                    f"{serverdir} is not empty (it has index root/{extra[0]}): import into a new one"
                )
            continue
        raise DumpError(f"{serverdir} is not empty (it holds {key}): import into a new server directory")
    return storage.get("user/root")


class Importer:
    def __init__(
        self,
        config: ServerConfig,
        dump: Dump,
        *,
        hard_links: bool = False,
        no_root_pypi: bool = False,
        out: TextIO | None = None,
    ) -> None:
        self.config = config
        self.serverdir = config.serverdir
        self.dump = dump
        self.hard_links = hard_links
        self.no_root_pypi = no_root_pypi
        self.out = out or sys.stdout
        self.stored: dict[int, Stored] = {}
        self.warnings: list[str] = []
        self._quiet = False
        #: Whether files are still hard-linked, and the line saying why
        #: not any more (set by a worker thread).
        self._hard_link = hard_links
        self._fallback = ""

    def warn(self, text: str) -> None:
        if self._quiet:
            return
        self.warnings.append(text)
        print(f"warning: {text}", file=self.out)

    # -- 1. the plan ----------------------------------------------------------------

    def _stages(self) -> dict[str, StageDump]:
        stages = dict(self.dump.stages)
        if self.no_root_pypi:
            stages.pop("root/pypi", None)
        return stages

    def plan_users(self, existing_root: dict | None, *, warn: bool = True) -> dict[str, dict]:
        """
        The user records to write, each with its indexes' configurations.

        @param existing_root: root's record in the server directory.
        @param warn: tell what is changed or left out (the second time).
        """
        self._quiet = not warn
        registry = default_registry()
        records: dict[str, dict] = {}
        for name, record in self.dump.users.items():
            record = dict(record, username=name, indexes={})
            if name != "root":
                record.setdefault("created", "1970-01-01T00:00:00Z")
            if record.get("pwsalt"):
                self.warn(
                    f"user {name}: a password hash of devpi before 4.0 (with pwsalt); set a new password"
                )
            records[name] = record
        if existing_root is not None:
            kept = {
                k: v
                for k, v in existing_root.get("indexes", {}).items()
                if not (self.no_root_pypi and k == "pypi")
            }
            root = records.setdefault("root", dict(existing_root))
            root["indexes"] = kept
        for stage, dumped in sorted(self._stages().items()):
            user, index = stage.split("/", 1)
            if user not in records:
                raise DumpError(
                    f"{self.dump.directory}: index {stage} belongs to user {user}, who is not in the dump"
                )
            records[user]["indexes"][index] = self._config(registry, stage, dumped.config)
        self._check_bases(records)
        return records

    def _config(self, registry: CustomizerRegistry, stage: str, dumped: dict) -> dict:
        try:
            customizer = registry.get(dumped.get("type", "stage"))
            config = {"type": customizer.type_name}
            for key, value in dumped.items():
                if key not in ("type", "projects") and key not in customizer.ignored_keys():
                    config[key] = customizer.normalize(key, value)
        except InvalidInput as exc:
            raise DumpError(f"{self.dump.directory}: index {stage}: {exc.message}") from None
        return config

    def _check_bases(self, records: dict[str, dict]) -> None:
        known = {f"{user}/{index}" for user, record in records.items() for index in record["indexes"]}
        for user, record in records.items():
            for index, config in record["indexes"].items():
                if "bases" not in config:
                    continue
                missing = [base for base in config["bases"] if base not in known]
                if missing:
                    self.warn(f"index {user}/{index}: bases {', '.join(missing)} not in the dump; left out")
                    config["bases"] = [base for base in config["bases"] if base in known]
        reader = _Records(records)
        for user, record in records.items():
            for index, config in record["indexes"].items():
                try:
                    indexes.check_bases(reader, f"{user}/{index}", config.get("bases", []))
                except InvalidInput as exc:
                    raise DumpError(f"{self.dump.directory}: index {user}/{index}: {exc.message}") from None

    def _check_files(self) -> None:
        """
        Every file's version is known (devpi dumps may lack the record: an
        empty one is made) and every tox result has its release file.
        """
        for stage, dumped in self._stages().items():
            releases_by_version = collections.defaultdict(set)
            for f in dumped.files:
                versions = dumped.projects.setdefault(f.project, {})
                versions.setdefault(f.version, releases.empty_record(f.project, f.version))
                if f.rel == "releasefile":
                    releases_by_version[f.project, f.version].add(f.basename)
            for f in dumped.files:
                if f.rel == "toxresult" and f.for_basename not in releases_by_version[f.project, f.version]:
                    where = f"{stage} {f.project} {f.version}"
                    raise DumpError(f"{f.path}: a tox result for {f.for_basename}, which is not in {where}")

    # -- 3. files -------------------------------------------------------------------

    def store_files(self, store: LocalFileStore) -> None:
        """
        Store every file, L{THREADS} at a time (reading, hashing and
        writing release the GIL: for a thousand files of 100 KB, 4 threads
        took half the time of one when the machine was quiet, about the
        same when its two cores were busy), each checked in this thread as
        it comes back.
        """
        files = [f for stage in self._stages().values() for f in stage.files]
        progress = Progress("import", len(files), sum(f.size for f in files), self.out)
        self._hard_link = self.hard_links
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            pending: collections.deque = collections.deque()
            try:
                for f in [*files, None]:
                    if f is not None:
                        pending.append((f, pool.submit(self._store_one, store, f)))
                    while pending and (f is None or len(pending) >= WINDOW):
                        done, future = pending.popleft()
                        digests, size, meta = future.result()
                        if self._fallback:
                            progress.line(self._fallback)
                            self._fallback = ""
                        self._verify(store, done, digests, size)
                        self.stored[id(done)] = Stored(digests["sha256"], size, meta)
                        progress.advance(size)
            except BaseException:
                for _, future in pending:
                    future.cancel()
                raise
        progress.finish()

    def _store_one(self, store: LocalFileStore, f: DumpFile) -> tuple[dict[str, str], int, str | None]:
        """
        Store one file (in a worker thread): its digests, size and, for a
        wheel, the digest of its METADATA.
        """
        wheel = f.rel == "releasefile" and f.basename.endswith(".whl")
        chunks: list[bytes] | None = [] if wheel else None
        try:
            try:
                digests, size = store_file(store, f.path, f.hashes, hard_link=self._hard_link, keep=chunks)
            except OSError as exc:
                if not self._hard_link or not os.path.exists(f.path):
                    raise
                self._fallback = f"{f.path}: no hard link possible ({exc.strerror}); copying the files"
                self._hard_link = False
                chunks = [] if wheel else None
                digests, size = store_file(store, f.path, f.hashes, keep=chunks)
        except OSError as exc:
            raise DumpError(f"{f.path}: {exc.strerror}") from None
        meta = None
        if wheel:
            source = io.BytesIO(b"".join(chunks)) if chunks else store.local_path(digests["sha256"])
            meta = self._wheel_metadata(store, f, source)
        return digests, size, meta

    def _verify(self, store: LocalFileStore, f: DumpFile, digests: dict[str, str], size: int) -> None:
        checked = [name for name in f.hashes if name in digests]
        problem = None
        if f.hashes and not checked:
            problem = f"no digest the dump gives can be checked ({', '.join(sorted(f.hashes))})"
        for name in checked:
            if digests[name] != f.hashes[name]:
                problem = f"its {name} is {digests[name]}, the dump says {f.hashes[name]}"
        if f.link is not None and f.link.get("size") not in (None, size):
            problem = f"its size is {size}, the dump says {f.link['size']}"
        if problem:
            store.remove(digests["sha256"])
            raise DumpError(f"{f.path}: {problem}")

    def _wheel_metadata(self, store: LocalFileStore, f: DumpFile, wheel: str | IO[bytes]) -> str | None:
        """
        Store a wheel's METADATA (PEP 658) as a blob of its own, as an
        upload does, and return its digest.  It is read from the wheel,
        also for a devpi-tx dump whose link names it: the blob is not in
        the dump, and a blob the state counts must be in the store (what
        C{devpi-tx fsck} checks).
        """
        try:
            data = wheel_metadata(wheel, f.basename)
        except InvalidInput:
            return None  # a wheel devpi took without METADATA: served without
        return store_derived(store, data)

    # -- 5. state -----------------------------------------------------------------

    def _link(self, stage: str, f: DumpFile, stored: Stored, release_paths: dict) -> dict:
        if f.rel == "toxresult":
            release = release_paths[f.project, f.version, f.for_basename]
            path = f"{release.rsplit('/', 1)[0]}/{f.basename}"
        else:
            path = releases.relpath(stage, stored.sha256, f.basename)
        if f.link is not None:
            link = dict(f.link)
        else:
            when = f.last_modified if f.last_modified is not None else time.time()
            link = {
                "last_modified": when,
                "upload_time": releases.iso_time(when),
                "log": f.log if f.log is not None else [releases.log_entry("upload", "<import>", dst=stage)],
            }
        link.update(rel=f.rel, basename=f.basename, relpath=path, sha256=stored.sha256, size=stored.size)
        link.pop("core_metadata_sha256", None)
        if stored.core_metadata_sha256:
            link["core_metadata_sha256"] = stored.core_metadata_sha256
        if f.rel == "toxresult":
            link["for_relpath"] = release
        else:
            link.pop("for_relpath", None)
        return link

    def _stage_writes(self, stage: str, dumped: StageDump) -> Iterator[list[tuple[str, object]]]:
        """
        The keys of one stage, a project at a time: lists of (key, value).
        """
        by_version = collections.defaultdict(list)
        for f in dumped.files:
            by_version[f.project, f.version].append(f)
        release_paths: dict = {}
        for project, versions in sorted(dumped.projects.items()):
            if not versions and project not in dumped.project_records:
                continue  # devpi-import makes no project without versions
            first = next(iter(versions.values()), {})
            record = dumped.project_records.get(project) or {"name": first.get("name", project)}
            writes = [(releases.project_key(stage, project), record)]
            for version, metadata in versions.items():
                writes.append((releases.version_key(stage, project, version), metadata))
                # Tox results after the files they belong to.
                for f in sorted(by_version[project, version], key=lambda f: f.rel == "toxresult"):
                    link = self._link(stage, f, self.stored[id(f)], release_paths)
                    if f.rel == "releasefile":
                        release_paths[project, version, f.basename] = link["relpath"]
                    link_key, link, file_key, entry = link_records(stage, project, version, link)
                    writes += [(link_key, link), (file_key, entry)]
            yield writes
        for path, record in dumped.gone.items():
            yield [(releases.gone_key(path), record)]

    def write_state(self, storage: SQLiteStorage, records: dict[str, dict]) -> tuple[int, int]:
        with storage.transaction() as tx:
            for name, record in records.items():
                tx.set(users.user_key(name), record)
        pending: list[tuple[str, object]] = []
        blobs: collections.Counter[str] = collections.Counter()
        projects = versions = 0

        def commit() -> None:
            with storage.transaction() as tx:
                for key, value in pending:
                    tx.set(key, value)
                for digest, count in blobs.items():
                    key = releases.blob_key(digest)
                    tx.set(key, (tx.get(key) or 0) + count)
            pending.clear()
            blobs.clear()

        for stage, dumped in self._stages().items():
            for writes in self._stage_writes(stage, dumped):
                for key, value in writes:
                    if key.startswith("link/"):
                        blobs.update(d for d in (value["sha256"], value.get("core_metadata_sha256")) if d)
                    projects += key.startswith("project/")
                    versions += key.startswith("version/")
                pending.extend(writes)
                if len(pending) >= BATCH_KEYS:
                    commit()
        if pending or blobs:
            commit()
        return projects, versions

    # -- the whole ------------------------------------------------------------------

    def check(self) -> None:
        """
        Everything that can be refused before the server directory is
        touched (or locked, or created).
        """
        serverdir = self.serverdir
        if is_initialized(serverdir) and read_nodeinfo(serverdir).get("role") == "replica":
            raise DumpError(f"{serverdir} is a replica's server directory: import into a primary's")
        self._check_files()
        self.plan_users({"username": "root", "indexes": {}}, warn=False)

    def run(self) -> None:
        """
        L{check}, then L{apply}: for callers that hold the server
        directory otherwise (tests).
        """
        self.check()
        self.apply()

    def apply(self) -> None:
        """
        Initialise the server directory if need be and import into it
        (the caller holds its lock).
        """
        serverdir = self.serverdir
        if not is_initialized(serverdir):
            root = self.dump.users.get("root", {})
            init = attrs.evolve(
                self.config,
                no_root_pypi=True,
                root_passwd_hash=root.get("pwhash") or self.config.root_passwd_hash,
            )
            for line in initialize(init):
                if line.startswith("WARNING"):
                    print(line, file=self.out)
        storage = open_storage(serverdir)
        try:
            records = self.plan_users(check_empty(storage, serverdir))
            dump = self.dump
            files = dump.files
            print(
                f"importing the {dump.origin} dump {dump.directory} into {serverdir}: "
                f"{len(dump.users)} users, {len(dump.stages)} indexes, {len(files)} files "
                f"({human(sum(f.size for f in files))})",
                file=self.out,
            )
            store = LocalFileStore(os.path.join(serverdir, "+files"))
            self.store_files(store)
            sync_filesystem(store.root)
            projects, versions = self.write_state(storage, records)
            indexes_count = sum(len(r["indexes"]) for r in records.values())
            print(
                f"imported {len(records)} users, {indexes_count} indexes, {projects} projects, "
                f"{versions} versions, {len(self.stored)} files; serial {storage.serial}",
                file=self.out,
            )
        finally:
            storage.close()

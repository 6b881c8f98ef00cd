"""
C{devpi-tx export}: the state of a stopped server into a dump directory
(the format is described in L{devpi_tx.dump}).

The state is read straight from the server directory's database, a
project at a time (two range scans each), and the files are copied (or
hard-linked) from the file store; C{dataindex.json} is written last, under
a temporary name renamed into place, so a dump that has one is complete.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from typing import TextIO

from .. import __version__
from ..customizers import BUILTIN
from ..model import releases
from ..model.stages import IsMirror
from ..serverdir import is_initialized
from ..storage.files import LocalFileStore
from ..storage.kvtext import prefix_upper
from . import DumpError
from .fileio import export_file
from .progress import Progress, human

DUMPVERSION = "2"
#: Files copied at once, and how many may wait to be counted.
THREADS = 4
WINDOW = 64


def safe_part(name: str) -> str:
    """
    A name (a version, a basename) as one path segment of the dump: the
    few that are no file name (C{.}, C{..}, with a NUL) are escaped.
    devpi-import never reads a release file's directories, only its name.
    """
    if name in (".", "..") or "\0" in name or not name:
        return "%" + name.encode("utf-8", "surrogateescape").hex()
    return name


class Snapshot:
    """
    The state as it was at one moment, for the model's readers (C{get},
    C{keys}): a read transaction on a read-only connection of its own to
    the server directory's database (see L{devpi_tx.storage.sqlite}).  In
    WAL mode a reader sees the last commit before its first read, whatever
    is committed after, so the dump is one state even if something writes
    meanwhile (the command holds the server directory's lock, so no server
    does), and the export takes no write lock on the database, as opening
    an L{SQLiteStorage} would.
    """

    def __init__(self, path: str) -> None:
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            self._db.execute("BEGIN")
            self.serial = self._db.execute("SELECT MAX(serial) FROM changelog").fetchone()[0]
        except sqlite3.Error as exc:
            raise DumpError(f"{path}: cannot read the state ({exc})") from None

    def get(self, key: str) -> object:
        row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def keys(self, prefix: str) -> list[str]:
        rows = self._db.execute(
            "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, prefix_upper(prefix))
        )
        return [row[0] for row in rows]

    def close(self) -> None:
        self._db.execute("ROLLBACK")
        self._db.close()


@dataclass
class ExportPlan:
    """
    What an export writes: C{dataindex.json}'s content, and the files to
    put next to it (stored path, path below the dump, size).
    """

    data: dict
    files: list[tuple[str, str, int]] = field(default_factory=list)
    projects: int = 0
    versions: int = 0

    @property
    def size(self) -> int:
        return sum(size for _, _, size in self.files)


def _filedesc(stage: str, project: str, version: str, link: dict, dump_path: str) -> dict:
    sha256 = link["sha256"]
    desc = {
        "type": link["rel"],
        "projectname": project,
        "version": version,
        "relpath": dump_path,
        "entrymapping": {
            "last_modified": releases.http_date(link.get("last_modified", 0)),
            "hash_spec": f"sha256={sha256}",
            "hashes": {"sha256": sha256},
            "project": project,
            "version": version,
        },
        "log": link.get("log", []),
        "devpi_tx_link": link,
    }
    if link.get("for_relpath"):
        desc["for_entrypath"] = link["for_relpath"]
    return desc


def _dump_path(stage: str, project: str, version: str, link: dict, by_relpath: dict[str, dict]) -> str:
    """
    Where a file goes in the dump: devpi-export's layout.
    """
    basename = safe_part(link["basename"])
    if link["rel"] == "doczip":
        return f"{stage}/{project}-{safe_part(version)}.doc.zip"
    if link["rel"] == "toxresult":
        target = by_relpath.get(link.get("for_relpath", ""))
        spec = f"sha256={target['sha256']}" if target else "sha256=unknown"
        return f"{stage}/{project}/{spec}/{basename}"
    return f"{stage}/{project}/{safe_part(version)}/{basename}"


def _plan_stage(storage: Snapshot, store: LocalFileStore, stage: str, dumped: dict, plan: ExportPlan) -> None:
    projects: dict[str, dict] = {}
    project_records: dict[str, dict] = {}
    files: list[dict] = []
    for project in releases.project_names(storage, stage):
        project_records[project] = storage.get(releases.project_key(stage, project)) or {}
        records = releases.version_records(storage, stage, project)
        versions: dict[str, dict] = {}
        for version, record in records.items():
            links = record.get("+links", [])
            versions[version] = {k: v for k, v in record.items() if k != "+links"}
            by_relpath = {link["relpath"]: link for link in links}
            docs = [link for link in links if link["rel"] == "doczip"]
            for link in links:
                if link["rel"] == "doczip" and link is not docs[-1]:
                    continue  # one per version (devpi's rule); the newest
                path = _dump_path(stage, project, version, link, by_relpath)
                files.append(_filedesc(stage, project, version, link, path))
                plan.files.append((store.local_path(link["sha256"]), path, link.get("size") or 0))
        projects[project] = versions
        plan.projects += 1
        plan.versions += len(versions)
    dumped["projects"] = projects
    dumped["files"] = files
    gone = {key[len("gone/") :]: storage.get(key) for key in storage.keys(f"gone/{stage}/")}
    dumped["devpi_tx"] = {"projects": project_records, "gone": gone}


def plan_export(
    storage: Snapshot, store: LocalFileStore, is_mirror: IsMirror = BUILTIN.is_mirror
) -> ExportPlan:
    """
    What an export writes: every user and index, and the projects and
    files of each index that is not a mirror (by C{is_mirror}: its index
    type's word; the built-in types' by default, as the command runs
    without the server's plugins).
    """
    data: dict = {
        "dumpversion": DUMPVERSION,
        "pythonversion": list(sys.version_info),
        "devpi_tx": __version__,
        "users": {},
        "indexes": {},
    }
    plan = ExportPlan(data)
    for key in storage.keys("user/"):
        record = dict(storage.get(key))
        name = record.get("username") or key[len("user/") :]
        indexes = record.pop("indexes", {}) or {}
        data["users"][name] = record
        for index, config in sorted(indexes.items()):
            stage = f"{name}/{index}"
            dumped: dict = {"indexconfig": config}
            data["indexes"][stage] = dumped
            if not is_mirror(config):
                _plan_stage(storage, store, stage, dumped, plan)
    return plan


def json_lines(value: object, depth: int = 0, expand: int = 3) -> list[str]:
    """
    C{value} as JSON text: objects and lists down to depth C{expand} one
    member a line, indented, deeper values on the line of their member
    (a user, an index's configuration, a project's versions, a file).
    Readable and editable, as devpi-import's documentation suggests, and
    written by the C encoder: C{json.dump(..., indent=2)} takes Python's,
    half a second for a thousand versions.
    """
    if depth > expand or not isinstance(value, (dict, list)) or not value:
        return [json.dumps(value)]
    pad = " " * (depth + 1)
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    items = value.items() if isinstance(value, dict) else ((None, item) for item in value)
    lines = [opening + "\n"]
    for number, (key, item) in enumerate(items):
        lines.append(pad if key is None else f"{pad}{json.dumps(key)}: ")
        lines += json_lines(item, depth + 1, expand)
        lines.append(",\n" if number < len(value) - 1 else "\n")
    lines.append(" " * depth + closing + ("\n" if depth == 0 else ""))
    return lines


def _check_target(target: str) -> None:
    if os.path.exists(target) and not os.path.isdir(target):
        raise DumpError(f"export directory {target} is a file; give a new or empty directory")
    if os.path.isdir(target) and os.listdir(target):
        raise DumpError(f"export directory {target} must not exist or be empty")


def export_server(
    serverdir: str, target: str, *, hard_links: bool = False, out: TextIO | None = None
) -> ExportPlan:
    """
    Export the server in C{serverdir} (stopped) to the directory C{target}.

    @raise DumpError: C{serverdir} is no server directory, C{target} is
        not empty, or a linked file is missing from the store.
    """
    out = out or sys.stdout
    if not is_initialized(serverdir):
        raise DumpError(
            f"{serverdir} is no devpi-tx server directory (no .nodeinfo); give one with --serverdir"
        )
    target = os.path.abspath(target)
    _check_target(target)
    storage = Snapshot(os.path.join(serverdir, ".sqlite"))
    try:
        store = LocalFileStore(os.path.join(serverdir, "+files"))
        plan = plan_export(storage, store)
    finally:
        storage.close()
    os.makedirs(target, exist_ok=True)
    progress = Progress("export", len(plan.files), plan.size, out)
    progress.line(f"exporting {serverdir} to {target}")
    made: set[str] = set()

    def copy(source: str, path: str) -> bool:
        dest = os.path.join(target, path)
        try:
            return export_file(source, dest, hard_link=hard_links)
        except FileNotFoundError:
            if os.path.exists(source):
                raise
            raise DumpError(
                f"{source} is missing: the file {path} is linked in the state but not stored"
            ) from None

    linked = 0
    # A few files at once (the copies are syscalls that release the GIL:
    # 4 threads took four fifths of the time of one for a thousand files
    # of 100 KB), the directories made here first, in order.
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in [*plan.files, None]:
                if item is not None:
                    source, path, size = item
                    directory = os.path.dirname(os.path.join(target, path))
                    if directory not in made:
                        os.makedirs(directory, exist_ok=True)
                        made.add(directory)
                    pending.append((size, pool.submit(copy, source, path)))
                while pending and (item is None or len(pending) >= WINDOW):
                    size, future = pending.popleft()
                    linked += future.result()
                    progress.advance(size)
        except BaseException:
            for _, future in pending:
                future.cancel()
            raise
    progress.finish()
    if hard_links and linked < len(plan.files):
        progress.line(f"{len(plan.files) - linked} files copied: no hard link possible across filesystems")
    tmp = os.path.join(target, ".dataindex.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json_lines(plan.data))
    os.replace(tmp, os.path.join(target, "dataindex.json"))
    progress.line(
        f"exported {len(plan.data['users'])} users, {len(plan.data['indexes'])} indexes, "
        f"{plan.projects} projects, {plan.versions} versions, {len(plan.files)} files "
        f"({human(plan.size)}) to {target}"
    )
    return plan

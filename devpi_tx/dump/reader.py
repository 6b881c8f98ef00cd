"""
Reading a dump (devpi-tx's, or devpi-export's of devpi-server 6.x and
earlier dump versions) into what the importer writes, checking all of it
before anything is written: names, index types, versions, that every file
is there, inside the dump, and belongs to a version.  Every problem is
one line naming the dump's path and the user, index or file.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from packaging.utils import canonicalize_name

from ..model import archives, releases
from ..model.errors import InvalidInput
from ..model.names import check_indexname, check_username
from . import DumpError

#: Version record keys that are devpi's bookkeeping, never metadata.
_NOT_METADATA = ("+elinks", "+links", "+doczip", ":action")


@dataclass
class DumpFile:
    """
    One file of the dump and what is known of it.

    @ivar hashes: the digests the dump gives, by algorithm (checked).
    @ivar link: the link record of a devpi-tx dump (kept as exported).
    @ivar for_basename: a tox result's release file, by name.
    """

    rel: str
    project: str
    version: str
    path: str
    basename: str
    size: int
    hashes: dict[str, str]
    last_modified: float | None
    log: list | None
    link: dict | None = None
    for_basename: str | None = None


@dataclass
class StageDump:
    config: dict
    #: Normalised project name -> version -> metadata.
    projects: dict[str, dict[str, dict]] = field(default_factory=dict)
    #: Normalised project name -> project record (devpi-tx dumps).
    project_records: dict[str, dict] = field(default_factory=dict)
    files: list[DumpFile] = field(default_factory=list)
    gone: dict[str, dict] = field(default_factory=dict)


@dataclass
class Dump:
    directory: str
    #: C{devpi-server <version>} or C{devpi-tx <version>}.
    origin: str
    users: dict[str, dict]
    stages: dict[str, StageDump]

    @property
    def files(self) -> list[DumpFile]:
        return [f for stage in self.stages.values() for f in stage.files]


def _fail(where: str, message: str) -> DumpError:
    return DumpError(f"{where}: {message}")


def _load(directory: str) -> dict:
    path = os.path.join(directory, "dataindex.json")
    if not os.path.isdir(directory):
        raise DumpError(f"import directory {directory} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DumpError(
            f"{path} is missing: {directory} is no dump of devpi-export or devpi-tx export"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DumpError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise DumpError(f"{path}: {exc.strerror}") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("users"), dict)
        or not isinstance(data.get("indexes"), dict)
    ):
        raise DumpError(f"{path}: expected an object with 'users' and 'indexes'")
    if str(data.get("dumpversion")) not in ("1", "2"):
        raise DumpError(f"{path}: dump version {data.get('dumpversion')!r} is not one of 1, 2")
    return data


def _http_time(value: object) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(str(value)).timestamp()
    except (TypeError, ValueError):
        return None


def _dump_file_path(directory: str, where: str, relpath: object) -> tuple[str, int]:
    """
    The file at C{relpath} below the dump (never outside it), and its size.
    """
    if not isinstance(relpath, str) or not relpath:
        raise _fail(where, f"file entry without a relpath: {relpath!r}")
    normal = os.path.normpath(relpath)
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep) or "\0" in normal:
        raise _fail(where, f"file path {relpath!r} leads outside the dump")
    path = os.path.join(directory, normal)
    try:
        info = os.stat(path)
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        raise _fail(where, f"the file {path} is missing")
    return path, info.st_size


def _hashes(desc: dict) -> dict[str, str]:
    """
    The digests a file entry gives: C{hashes}, C{hash_spec}, devpi 2's
    C{md5}.
    """
    mapping = desc.get("entrymapping") or {}
    hashes = {str(k): str(v).lower() for k, v in (mapping.get("hashes") or {}).items()}
    spec = mapping.get("hash_spec")
    if isinstance(spec, str) and "=" in spec:
        name, _, value = spec.partition("=")
        hashes.setdefault(name, value.lower())
    if mapping.get("md5"):
        hashes.setdefault("md5", str(mapping["md5"]).lower())
    return hashes


def _read_file(directory: str, stage: str, desc: object, dumpversion: str, own: bool) -> DumpFile:
    where = f"index {stage}"
    if not isinstance(desc, dict):
        raise _fail(where, f"file entry is not an object: {desc!r:.60}")
    where = f"index {stage}, file {desc.get('relpath')!r}"
    rel = desc.get("type")
    if rel not in ("releasefile", "doczip", "toxresult"):
        raise _fail(where, f"unknown file type {rel!r}")
    path, size = _dump_file_path(directory, where, desc.get("relpath"))
    basename = os.path.basename(path)
    version = desc.get("version")
    if version is None and dumpversion == "1":
        version = archives.version_of(basename)  # dump version 1 has none
    project = desc.get("projectname")
    if not isinstance(project, str) or not isinstance(version, str):
        raise _fail(where, "file entry without projectname or version")
    hashes = _hashes(desc)
    mapping = desc.get("entrymapping") or {}
    link = desc.get("devpi_tx_link") if own else None
    if link is not None:
        if not isinstance(link, dict) or not isinstance(link.get("basename"), str) or "/" in link["basename"]:
            raise _fail(where, "devpi_tx_link is not a link record")
        basename = link["basename"]
        hashes.setdefault("sha256", str(link.get("sha256", "")).lower())
    for_basename = None
    if rel == "toxresult":
        for_path = desc.get("for_entrypath")
        if not isinstance(for_path, str):
            raise _fail(where, "tox result without for_entrypath")
        for_basename = for_path.rsplit("/", 1)[-1]
        release_hash = os.path.basename(os.path.dirname(desc["relpath"]))
        if hashes and f"sha256={hashes.get('sha256')}" == release_hash:
            # devpi 6.5 to 6.8 gave a tox result the hash of its release
            # file; the content is checked against nothing then.
            hashes = {}
    return DumpFile(
        rel=rel,
        project=canonicalize_name(project),
        version=version,
        path=path,
        basename=basename,
        size=size,
        hashes=hashes,
        last_modified=_http_time(mapping.get("last_modified")),
        log=desc.get("log") if isinstance(desc.get("log"), list) else None,
        link=link,
        for_basename=for_basename,
    )


def _read_versions(where: str, projects: object) -> dict[str, dict[str, dict]]:
    """
    The version metadata by normalised project name (devpi merges the
    versions of names that normalise alike).
    """
    if not isinstance(projects, dict):
        raise _fail(where, "'projects' is not an object")
    merged: dict[str, dict[str, dict]] = {}
    for name, versions in projects.items():
        if not isinstance(versions, dict):
            raise _fail(where, f"project {name!r}: versions are not an object")
        target = merged.setdefault(canonicalize_name(name), {})
        for version, record in versions.items():
            if not isinstance(record, dict):
                raise _fail(where, f"project {name!r} version {version!r}: metadata is not an object")
            record = {k: v for k, v in record.items() if k not in _NOT_METADATA}
            record.setdefault("name", name)
            record["version"] = record.get("version") or version
            try:
                releases.check_project_name(record["name"])
                releases.check_version(version)
            except InvalidInput as exc:
                raise _fail(where, exc.message) from None
            target[version] = record
    return merged


def _migrate_config(config: dict) -> dict:
    """
    devpi's older index keys (as devpi-import migrates them).
    """
    config = dict(config)
    if "uploadtrigger_jenkins" in config and not config["uploadtrigger_jenkins"]:
        del config["uploadtrigger_jenkins"]
    if "pypi_whitelist" in config:
        whitelist = config.pop("pypi_whitelist")
        config.setdefault("mirror_whitelist", whitelist)
    return config


def read_dump(directory: str, *, from_devpi: bool = False) -> Dump:
    """
    Read and check the dump in C{directory}.

    @param from_devpi: read it as devpi-export's; without, the dump must
        be devpi-tx's (so that a devpi-server dump is imported knowingly).
    @raise DumpError: what is wrong, on one line.
    """
    directory = os.path.abspath(directory)
    data = _load(directory)
    json_path = os.path.join(directory, "dataindex.json")
    own = "devpi_tx" in data and not from_devpi
    if "devpi_tx" not in data and not from_devpi:
        made_by = f"devpi-server {data['devpi_server']}" if data.get("devpi_server") else "devpi-export"
        raise DumpError(f"{directory} was made by {made_by}: import it with --from-devpi")
    origin = (
        f"devpi-tx {data['devpi_tx']}" if own else f"devpi-server {data.get('devpi_server', '(unknown)')}"
    )
    dumpversion = str(data["dumpversion"])
    users: dict[str, dict] = {}
    for name, record in data["users"].items():
        try:
            check_username(name)
        except InvalidInput as exc:
            raise _fail(json_path, exc.message) from None
        if not isinstance(record, dict):
            raise _fail(json_path, f"user {name!r} is not an object")
        pwhash = record.get("pwhash")
        if pwhash is not None and not isinstance(pwhash, str):
            raise _fail(json_path, f"user {name!r}: pwhash is not a string")
        users[name] = {k: v for k, v in record.items() if k != "indexes"}
    stages: dict[str, StageDump] = {}
    for stage, dumped in data["indexes"].items():
        where = f"{json_path}: index {stage}"
        user, _, index = str(stage).partition("/")
        try:
            check_username(user)
            check_indexname(index)
        except InvalidInput as exc:
            raise DumpError(f"{where}: {exc.message}") from None
        if not isinstance(dumped, dict) or not isinstance(dumped.get("indexconfig"), dict):
            raise DumpError(f"{where}: no indexconfig")
        result = StageDump(_migrate_config(dumped["indexconfig"]))
        result.projects = _read_versions(where, dumped.get("projects", {}))
        if own:
            extra = dumped.get("devpi_tx") or {}
            result.project_records = dict(extra.get("projects") or {})
            result.gone = {
                path: record
                for path, record in (extra.get("gone") or {}).items()
                if isinstance(path, str) and path.startswith(f"{stage}/+f/") and isinstance(record, dict)
            }
        files = dumped.get("files", [])
        if not isinstance(files, list):
            raise DumpError(f"{where}: 'files' is not a list")
        result.files = [_read_file(directory, stage, desc, dumpversion, own) for desc in files]
        stages[stage] = result
    return Dump(directory, origin, users, stages)

"""
Projects, versions and the files linked to them on private (stage) indexes.

Keys in the state::

    project/<stage>/<project>            {"name": <display name>}
    version/<stage>/<project>/<version>  the version record: core metadata
    link/<stage>/<project>/<version>/<basename>
                                         one file of the version (a release
                                         file, a doc zip, a tox result): an
                                         upload writes its own key, not the
                                         whole version again
    file/<stage>/<hash dir>/<basename>   what a +f URL points to
    gone/<stage>/<hash dir>/<basename>   a deleted file (answers 410)
    blob/<sha256>                        how many links use a stored blob

<stage> is C{user/index}, <project> the normalised name, <hash dir> the
C{+f/<sha[:3]>/<sha[3:16]>} part of the URL.  A version per key keeps an
upload's write small however many versions a project has, and a link per
key however many files a version has.  Readers get a version's links as
its record's C{"+links"} (L{get_version}, L{version_records}), oldest
first.
"""

from __future__ import annotations

import re
import time

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from . import archives
from .errors import Conflict, Forbidden, InvalidInput, NotFound

#: Core metadata fields kept in a version record (devpi's list plus the
#: newer ones).
METADATA_KEYS = (
    "name version metadata_version summary home_page author author_email "
    "maintainer maintainer_email license description keywords platform "
    "classifiers download_url supported_platform comment provides requires "
    "obsoletes project_urls provides_dist obsoletes_dist requires_dist "
    "requires_external requires_python description_content_type "
    "provides_extras dynamic license_expression license_file"
).split()

#: Fields that repeat in the upload form and are kept as lists.
LIST_FIELDS = frozenset(
    "platform classifiers supported_platform provides requires obsoletes "
    "project_urls provides_dist obsoletes_dist requires_dist requires_external "
    "provides_extras dynamic license_file".split()
)

_PROJECT_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.I)


def check_project_name(name: str) -> str:
    if not isinstance(name, str) or not _PROJECT_NAME.match(name):
        raise InvalidInput(f"invalid project name {name!r}")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not version or "/" in version or version != version.strip():
        raise InvalidInput(f"invalid version {version!r}")
    return version


def project_key(stage: str, project: str) -> str:
    return f"project/{stage}/{canonicalize_name(project)}"


def version_key(stage: str, project: str, version: str) -> str:
    return f"version/{stage}/{canonicalize_name(project)}/{version}"


def link_key(stage: str, project: str, version: str, basename: str) -> str:
    return f"link/{stage}/{canonicalize_name(project)}/{version}/{basename}"


def hash_dir(sha256: str) -> str:
    return f"+f/{sha256[:3]}/{sha256[3:16]}"


def relpath(stage: str, sha256: str, basename: str) -> str:
    """
    The path of a file below the server root, as in its C{+f} URL.
    """
    return f"{stage}/{hash_dir(sha256)}/{basename}"


def file_key(path: str) -> str:
    return "file/" + path


def gone_key(path: str) -> str:
    return "gone/" + path


def blob_key(sha256: str) -> str:
    return "blob/" + sha256


def log_entry(what: str, who: str | None, **extra) -> dict:
    return {"what": what, "who": who, "when": list(time.gmtime()[:6]), **extra}


def http_date(when: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))


def iso_time(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


# -- file names -----------------------------------------------------------------


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def check_filename_matches(basename: str, name: str, version: str) -> str:
    """
    The file name must name the project and version given in the form
    (after normalisation); return the kind of distribution (see
    L{archives.ArchiveName}).
    """
    parsed = archives.split_archive_name(basename)
    if canonicalize_name(parsed.name) != canonicalize_name(name):
        raise InvalidInput(f"filename {basename!r} does not match project name {name!r}")
    if parsed.version is None or not _same_version(parsed.version, version):
        raise InvalidInput(f"filename {basename!r} does not contain version {version!r}")
    return parsed.kind


# -- metadata -------------------------------------------------------------------


def metadata_from_form(fields: dict[str, list[str]]) -> dict:
    """
    The version metadata given in an upload form; C{UNKNOWN} counts as
    empty, as devpi has it.
    """
    metadata: dict = {}
    for key in METADATA_KEYS:
        values = fields.get(key)
        if values is None:
            continue
        if key in LIST_FIELDS:
            metadata[key] = [v for v in values if v and v != "UNKNOWN"]
        else:
            value = values[-1]
            metadata[key] = "" if value == "UNKNOWN" else value
    return metadata


def empty_record(name: str, version: str) -> dict:
    record: dict = {key: [] if key in LIST_FIELDS else "" for key in METADATA_KEYS}
    record.update(name=name, version=version)
    return record


# -- reading ----------------------------------------------------------------------


def project_names(reader, stage: str) -> list[str]:
    """
    The normalised names of the projects on one stage, sorted.
    """
    prefix = f"project/{stage}/"
    return [key[len(prefix) :] for key in reader.keys(prefix)]


def get_project(reader, stage: str, project: str) -> dict | None:
    return reader.get(project_key(stage, project))


def _ordered(links: list[dict]) -> list[dict]:
    return sorted(links, key=lambda link: (link.get("last_modified", 0), link["basename"]))


def _with_links(record: dict, links: list[dict]) -> dict:
    """
    A version record as readers see it: its links under C{"+links"} (a
    record from before links had keys of their own has them inline).
    """
    if "+links" in record:
        return record
    return dict(record, **{"+links": _ordered(links)})


def version_records(reader, stage: str, project: str) -> dict[str, dict]:
    """
    Every version record of a project on a stage, with its links: two
    range scans however many versions and files there are.
    """
    name = canonicalize_name(project)
    prefix = f"version/{stage}/{name}/"
    records = {key[len(prefix) :]: reader.get(key) for key in reader.keys(prefix)}
    links: dict[str, list[dict]] = {}
    link_prefix = f"link/{stage}/{name}/"
    for key in reader.keys(link_prefix):
        version = key[len(link_prefix) :].split("/", 1)[0]
        links.setdefault(version, []).append(reader.get(key))
    return {version: _with_links(record, links.get(version, [])) for version, record in records.items()}


def version_links(reader, stage: str, project: str, version: str) -> list[dict]:
    prefix = link_key(stage, project, version, "")
    return _ordered([reader.get(key) for key in reader.keys(prefix)])


def get_version(reader, stage: str, project: str, version: str) -> dict | None:
    record = reader.get(version_key(stage, project, version))
    if record is None:
        return None
    return _with_links(record, [] if "+links" in record else version_links(reader, stage, project, version))


def get_file(reader, path: str) -> dict | None:
    return reader.get(file_key(path))


# -- writing ----------------------------------------------------------------------


def _incref(tx, sha256: str) -> None:
    tx.set(blob_key(sha256), (tx.get(blob_key(sha256)) or 0) + 1)


def release_blob(tx, sha256: str, unused: set[str]) -> None:
    """
    Drop one link's count of a blob; a blob no longer linked goes into
    C{unused} (to delete from disk after the commit).
    """
    count = (tx.get(blob_key(sha256)) or 0) - 1
    if count <= 0:
        tx.delete(blob_key(sha256))
        unused.add(sha256)
    else:
        tx.set(blob_key(sha256), count)


def blob_in_use(reader, sha256: str) -> bool:
    return reader.get(blob_key(sha256)) is not None


def ensure_project(tx, stage: str, name: str) -> None:
    check_project_name(name)
    if tx.get(project_key(stage, name)) is None:
        tx.set(project_key(stage, name), {"name": name})


def register(tx, stage: str, metadata: dict, *, replace: bool) -> dict:
    """
    Create or update a version record from form metadata, writing it only
    if it changed (a file added to a known version mostly leaves it as it
    was).  With C{replace} (C{:action=submit}) missing keys are reset to
    empty; otherwise only the keys given change.
    """
    name = check_project_name(metadata.get("name", ""))
    version = check_version(metadata.get("version", ""))
    ensure_project(tx, stage, name)
    key = version_key(stage, name, version)
    stored = tx.get(key)
    if stored is not None and "+links" in stored:
        _split(tx, stage, stored)  # keep the links of an old record
        stored = tx.get(key)
    record = empty_record(name, version) if stored is None or replace else dict(stored)
    record.pop("+links", None)  # links have keys of their own
    record.update({k: v for k, v in metadata.items() if k not in ("name", "version", "+links")})
    if record != stored:
        tx.set(key, record)
    return record


def _remove_link(tx, stage: str, record: dict, link: dict, unused: set[str]) -> None:
    """
    Drop C{link} from C{record["+links"]} and the state, with the tox
    results that belong to it.
    """
    record["+links"].remove(link)
    tx.delete(link_key(stage, record["name"], record["version"], link["basename"]))
    tx.delete(file_key(link["relpath"]))
    tx.set(gone_key(link["relpath"]), {"deleted": iso_time(time.time())})
    release_blob(tx, link["sha256"], unused)
    for extra in ("core_metadata_sha256",):
        if link.get(extra):
            release_blob(tx, link[extra], unused)
    # Tox results belong to the file they were run against.
    for other in [x for x in record["+links"] if x.get("for_relpath") == link["relpath"]]:
        _remove_link(tx, stage, record, other, unused)


def add_file(
    tx,
    stage: str,
    volatile: bool,
    metadata: dict,
    *,
    rel: str,
    basename: str,
    sha256: str,
    size: int,
    who: str | None,
    extra: dict | None = None,
    log: list | None = None,
    event: dict | None = None,
    path: str | None = None,
) -> tuple[str, dict, set[str]]:
    """
    Link a stored blob to a version.

    @param log: earlier log entries of the file (a push carries them over).
    @param event: the log entry for this change; an upload by default.

    @return: C{"stored"} or C{"identical"} (same file already there on a
        non-volatile index; nothing changed), the link, and the digests of
        blobs no longer referenced (to delete from disk after the commit).
    """
    unused: set[str] = set()
    name, version = metadata["name"], metadata["version"]
    stored = tx.get(version_key(stage, name, version))
    if stored is not None and "+links" in stored:
        _split(tx, stage, stored)  # a record of the old layout
    existing = None
    if stored is not None and rel == "doczip":
        # One doc zip per version, whatever it was named.
        existing = next((x for x in version_links(tx, stage, name, version) if x["rel"] == "doczip"), None)
    elif stored is not None:
        # The file's own key: no need to read the version's other files.
        existing = tx.get(link_key(stage, name, version, basename))
    if existing is not None and not volatile:
        if existing["sha256"] == sha256:
            return "identical", existing, unused
        raise Conflict(f"{basename} already exists in non-volatile index")
    record = register(tx, stage, metadata, replace=False)  # written only if it changed
    overwrites = 0
    if existing is not None:
        # devpi's count: the earlier overwrites' counts plus this one.
        overwrites = sum(e.get("count", 0) for e in existing.get("log", []) if e["what"] == "overwrite") + 1
        # Its tox results go with it: the version's links are read now.
        record = dict(record, **{"+links": version_links(tx, stage, name, version)})
        current = next(x for x in record["+links"] if x["relpath"] == existing["relpath"])
        _remove_link(tx, stage, record, current, unused)
    path = path or relpath(stage, sha256, basename)
    now = time.time()
    link = {
        "rel": rel,
        "basename": basename,
        "relpath": path,
        "sha256": sha256,
        "size": size,
        "last_modified": now,
        "upload_time": iso_time(now),
        # As devpi logs it: the overwrite first, by nobody in particular,
        # then the new file's history.
        "log": ([log_entry("overwrite", None, count=overwrites)] if overwrites else [])
        + list(log or [])
        + [event or log_entry("upload", who, dst=stage)],
    }
    link.update(extra or {})
    tx.set(link_key(stage, name, version, basename), link)
    entry = {
        "rel": rel,
        "project": canonicalize_name(name),
        "version": version,
        "sha256": sha256,
        "size": size,
        "last_modified": now,
    }
    for key in ("core_metadata_sha256", "for_relpath"):
        if key in link:
            entry[key] = link[key]
    tx.set(file_key(path), entry)
    tx.delete(gone_key(path))
    _incref(tx, sha256)
    if link.get("core_metadata_sha256"):
        _incref(tx, link["core_metadata_sha256"])
    unused.discard(sha256)
    unused.discard(link.get("core_metadata_sha256", ""))
    return "stored", link, unused


def delete_file(tx, stage: str, path: str, *, volatile: bool, force: bool) -> set[str]:
    entry = get_file(tx, path)
    if entry is None:
        raise NotFound(f"no file at {path}")
    if not volatile and not force:
        raise Forbidden("cannot delete file on non-volatile index")
    record = _migrated(tx, stage, entry["project"], entry["version"])
    unused: set[str] = set()
    link = next(x for x in record["+links"] if x["relpath"] == path)
    _remove_link(tx, stage, record, link, unused)
    return unused


def delete_version(tx, stage: str, project: str, version: str, *, volatile: bool, force: bool) -> set[str]:
    record = _migrated(tx, stage, project, version)
    if record is None:
        raise NotFound(f"The version {version} of project {project} does not exist.")
    if not volatile and not force:
        raise Forbidden("cannot delete version on non-volatile index")
    unused: set[str] = set()
    for link in list(record["+links"]):
        if link in record["+links"]:
            _remove_link(tx, stage, record, link, unused)
    tx.delete(version_key(stage, project, version))
    return unused


def delete_project(tx, stage: str, project: str, *, volatile: bool, force: bool) -> set[str]:
    if get_project(tx, stage, project) is None:
        raise NotFound(f"no project {project!r} on stage {stage}")
    if not volatile and not force:
        raise Forbidden(f"cannot delete project {project} on non-volatile index {stage}")
    unused: set[str] = set()
    for version in version_records(tx, stage, project):
        unused |= delete_version(tx, stage, project, version, volatile=True, force=True)
    tx.delete(project_key(stage, project))
    return unused


def delete_stage_data(tx, stage: str) -> set[str]:
    """
    Remove every project of a stage (when the index or its user goes).
    """
    unused: set[str] = set()
    for project in project_names(tx, stage):
        unused |= delete_project(tx, stage, project, volatile=True, force=True)
    for key in tx.keys(f"gone/{stage}/"):
        tx.delete(key)
    return unused


def set_yanked(tx, stage: str, path: str, reason: str | bool | None) -> dict:
    """
    Mark a file yanked (PEP 592) with a reason (C{True} for none), or
    unyank it with L{None}.
    """
    entry = get_file(tx, path)
    if entry is None:
        raise NotFound(f"no file at {path}")
    record = _migrated(tx, stage, entry["project"], entry["version"])
    link = next(x for x in record["+links"] if x["relpath"] == path)
    if reason is None or reason is False:
        link.pop("yanked", None)
    else:
        link["yanked"] = reason
    tx.set(link_key(stage, record["name"], record["version"], link["basename"]), link)
    return link


def latest_version(reader, stage: str, project: str) -> str | None:
    """
    The highest registered version of a project on a stage.
    """

    def key(version: str):
        try:
            return (1, Version(version))
        except InvalidVersion:
            return (0, version)

    versions = list(version_records(reader, stage, project))
    return max(versions, key=key) if versions else None


# -- the layout of links ------------------------------------------------------------


def _migrated(tx, stage: str, project: str, version: str) -> dict | None:
    """
    L{get_version}, for a writer: a record from before links had keys of
    their own is moved to that layout first.
    """
    record = tx.get(version_key(stage, project, version))
    if record is not None and "+links" in record:
        _split(tx, stage, record)
    return get_version(tx, stage, project, version)


def _split(tx, stage: str, record: dict) -> None:
    for link in record["+links"]:
        tx.set(link_key(stage, record["name"], record["version"], link["basename"]), link)
    tx.set(
        version_key(stage, record["name"], record["version"]),
        {k: v for k, v in record.items() if k != "+links"},
    )


def migrate_links(tx) -> int:
    """
    Give every file link of a state from before links had keys of their
    own its key (run at start, in one transaction); return how many
    version records were moved.
    """
    moved = 0
    for key in tx.keys("version/"):
        record = tx.get(key)
        if record is not None and "+links" in record:
            stage = "/".join(key.split("/")[1:3])
            _split(tx, stage, record)
            moved += 1
    return moved

"""
Pushing a release from one index of this server to another.

The files are not copied: the target's links point at the same blobs
(stored by content), whose reference counts go up.  Each file keeps its
history, with a C{push} entry added (an C{overwrite} entry is not carried
over, as devpi does); tox results follow the files they were run against.
"""

from __future__ import annotations

import attrs

from . import releases
from .errors import InvalidInput, NotFound
from .indexes import get_index, split_stagename

#: Link fields a pushed file keeps besides its blob.
_CARRIED = ("core_metadata_sha256", "attestations", "yanked")


@attrs.frozen
class PushOutcome:
    """
    What a push did.

    @ivar actions: devpi's action log: C{[200, "register", name, version,
        "->", target]}, then one entry per file.
    @ivar unused: digests of blobs no link uses any more (files of the
        target that the push replaced), to remove after the commit.
    """

    actions: list[list]
    unused: frozenset[str]


def push_target(reader, target: str) -> dict:
    """
    The configuration of the index a release is to be pushed to.

    @raise NotFound: there is no such index.
    @raise InvalidInput: it is a mirror, or C{target} is no index name.
    """
    config = get_index(reader, *split_stagename(target))
    if config is None:
        raise NotFound(f"target index {target!r} does not exist")
    if config["type"] == "mirror":
        raise InvalidInput(f"cannot push to mirror index {target}")
    return config


def release_to_push(reader, stage: str, name: str, version: str) -> dict:
    """
    The version record to push, which must have files.

    @raise InvalidInput: there is no such version, or it has no files.
    """
    record = releases.get_version(reader, stage, name, version)
    if record is None or not record["+links"]:
        raise InvalidInput(f"there are no files for {name} {version} on stage {stage}")
    return record


def push_release(
    tx,
    source: str,
    target: str,
    name: str,
    version: str,
    who: str | None,
    *,
    no_docs: bool = False,
    only_docs: bool = False,
) -> PushOutcome:
    """
    Register C{name} C{version} of index C{source} on index C{target} and
    link its files there, in transaction C{tx}.  The caller has checked
    that C{who} may upload to C{target}.

    @param no_docs: leave the documentation zip behind.
    @param only_docs: push nothing but the documentation zip.
    @raise InvalidInput: see L{push_target} and L{release_to_push}.
    @raise NotFound: see L{push_target}.
    @raise Conflict: a file differs from the one the (non-volatile)
        target already has.
    """
    record = release_to_push(tx, source, name, version)
    volatile = push_target(tx, target).get("volatile", True)
    actions: list[list] = [[200, "register", name, version, "->", target]]
    metadata = {k: v for k, v in record.items() if k != "+links"}
    unused: set[str] = set()
    remap: dict[str, str] = {}  # source relpath -> target relpath
    releases.register(tx, target, metadata, replace=False)
    # Tox results after the files they belong to.
    links = sorted(record["+links"], key=lambda link: link["rel"] == "toxresult")
    for link in links:
        if link["rel"] == "doczip" and no_docs:
            continue
        if link["rel"] != "doczip" and only_docs:
            continue
        path = None
        extra = {k: link[k] for k in _CARRIED if k in link}
        if link["rel"] == "toxresult":
            for_path = remap.get(link["for_relpath"])
            if for_path is None:
                continue
            extra["for_relpath"] = for_path
            path = f"{for_path.rsplit('/', 1)[0]}/{link['basename']}"
        _, new, dropped = releases.add_file(
            tx,
            target,
            volatile,
            metadata,
            rel=link["rel"],
            basename=link["basename"],
            sha256=link["sha256"],
            size=link["size"],
            who=who,
            extra=extra,
            log=[e for e in link.get("log", []) if e["what"] != "overwrite"],
            event=releases.log_entry("push", who, src=source, dst=target),
            path=path,
        )
        unused |= dropped
        remap[link["relpath"]] = new["relpath"]
        if link["rel"] == "doczip":
            actions.append([200, "store_doczip", name, version, "->", target])
        else:
            actions.append([200, f"store_{link['rel']}", new["relpath"]])
    # A blob one file dropped may be what a later file linked again.
    return PushOutcome(actions, frozenset(d for d in unused if not releases.blob_in_use(tx, d)))

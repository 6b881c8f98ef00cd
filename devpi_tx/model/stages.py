"""
Inheritance: the order in which an index and its bases are consulted, and
the rule that keeps a mirror from answering for a project that a private
index of the chain already has (dependency confusion), unless the project
is whitelisted: by the index's and its bases' C{mirror_whitelist}
(C{mirror_whitelist_inheritance} C{intersection} or C{union}), or, with
C{explicit}, only by name in the index's own list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs
from packaging.utils import canonicalize_name

from . import releases
from .indexes import get_index, split_stagename
from .versions_memo import VersionEntry, shown_links


@attrs.frozen
class Stage:
    """
    An index of a chain.  Whether it is a mirror is its index type's word
    (L{IStageCustomizer.is_mirror}), not something this layer reads off
    the configuration: the model knows no index type by name.
    """

    name: str
    config: dict
    is_mirror: bool = False


#: Whether an index, by its configuration, is served by the mirror
#: machinery: the server's index types answer (L{IndexTypes.is_mirror}).
IsMirror = Callable[[dict], bool]


def _chain(reader, stagename: str) -> Iterator[tuple[str, dict]]:
    """
    The index itself, then its bases breadth-first in declaration order,
    each once, with their configurations.  Bases that no longer exist are
    skipped.
    """
    seen: set[str] = set()
    queue = [stagename]
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            config = get_index(reader, *split_stagename(name))
        except Exception:
            config = None
        if config is None:
            continue
        yield name, config
        queue.extend(config.get("bases", []))


def chain_names(reader, stagename: str) -> frozenset[str]:
    """
    The names of an index and of all its bases, transitively.
    """
    return frozenset(name for name, _ in _chain(reader, stagename))


def resolution_order(reader, stagename: str, is_mirror: IsMirror) -> list[Stage]:
    """
    The index itself, then its bases breadth-first in declaration order,
    each once; mirrors (by C{is_mirror}) last, in the order met.  Bases
    that no longer exist are skipped.
    """
    private: list[Stage] = []
    mirrors: list[Stage] = []
    for name, config in _chain(reader, stagename):
        stage = Stage(name, config, is_mirror(config))
        (mirrors if stage.is_mirror else private).append(stage)
    return private + mirrors


@attrs.frozen
class Contribution:
    """
    What one stage of the chain gives for a project, and why.
    """

    stage: str
    links: list[dict]
    versions: list[str]
    reason: str
    #: A private stage's links by version, when read from a
    #: L{VersionsMemo} (renderers keep what they make from each).
    groups: list[VersionEntry] | None = None


#: How a mirror stage contributes links; filled in by the mirror package.
MirrorLinks = Callable[[Stage, str], tuple[list[dict], list[str]]]
#: A private stage's versions, committed and kept (L{VersionsMemo.entries}).
OwnVersions = Callable[[str, str], dict[str, VersionEntry]]


def _no_mirror_links(stage: Stage, project: str) -> tuple[list[dict], list[str]]:
    return [], []


def private_links(reader, stage: str, project: str) -> tuple[list[dict], list[str]]:
    """
    The release files of a project on a private stage, with the version's
    C{requires_python}, newest upload last.
    """
    links: list[dict] = []
    versions: list[str] = []
    for version, record in releases.version_records(reader, stage, project).items():
        versions.append(version)
        links.extend(shown_links(record))
    return links, versions


Plan = list[tuple[Stage, bool, str]]


def plan(reader, order: list[Stage], project: str) -> Plan:
    """
    For each stage of the chain (C{order}, its L{resolution_order}):
    whether it serves C{project}, and why.  Cheap (no links are read), so
    that it can run on every request.
    """
    project = canonicalize_name(project)
    own = order[0].config if order else {}
    inheritance = own.get("mirror_whitelist_inheritance", "intersection")
    whitelist: set[str] | None = None
    if inheritance == "explicit":
        # The dependency-confusion guard: only the names the index itself
        # lists, by name ("*" and the bases' whitelists do not count).
        whitelist = set(own.get("mirror_whitelist", [])) - {"*"}
    private_has_project = False
    result = []
    for stage in order:
        if stage.is_mirror:
            if private_has_project and not (whitelist and ("*" in whitelist or project in whitelist)):
                reason = "a private index of the chain has the project and it is not in mirror_whitelist"
                result.append((stage, False, reason))
            else:
                result.append((stage, True, "mirrors its upstream"))
            continue
        names = set(stage.config.get("mirror_whitelist", []))
        if inheritance == "explicit":
            pass
        elif whitelist is None:
            whitelist = names
        elif inheritance == "union":
            whitelist |= names
        else:
            whitelist &= names
        if releases.get_project(reader, stage.name, project) is not None:
            private_has_project = True
            result.append((stage, True, "private index has the project"))
        else:
            result.append((stage, False, "no such project here"))
    return result


def consulted_mirrors(planned: Plan) -> list[Stage]:
    """
    The mirrors a project page draws on, by C{planned}, the chain's
    L{plan} for the project.
    """
    return [stage for stage, serves, _ in planned if serves and stage.is_mirror]


def project_contributions(
    reader,
    planned: Plan,
    project: str,
    mirror_links: MirrorLinks = _no_mirror_links,
    own_versions: OwnVersions | None = None,
) -> list[Contribution]:
    """
    For each stage of the chain: the links it contributes for C{project},
    and why (or why not); by C{planned}, the chain's L{plan} for it.

    @param own_versions: where private stages' versions are kept, if
        C{reader} is the committed state (not a transaction).
    """
    project = canonicalize_name(project)
    result = []
    for stage, serves, reason in planned:
        if not serves:
            result.append(Contribution(stage.name, [], [], reason))
            continue
        if stage.is_mirror:
            links, versions = mirror_links(stage, project)
        elif own_versions is not None:
            entries = own_versions(stage.name, project)
            groups = list(entries.values())
            links = [link for entry in groups for link in entry.links]
            result.append(Contribution(stage.name, links, list(entries), reason, groups))
            continue
        else:
            links, versions = private_links(reader, stage.name, project)
        result.append(Contribution(stage.name, links, versions, reason))
    return result

"""
The filters of index types (L{devpi_tx.interfaces.IStageCustomizer}'s
C{projects_filter}, C{versions_filter} and C{links_filter}) applied to what
an index shows.

An index's filters apply to everything it shows: its own releases and
those of its bases, and, when another index inherits from it, to what
comes through it (its own releases and its bases'), not to the inheriting
index's own releases.  Types whose C{filters} is false cost nothing.  A
type whose C{hides_emptied_versions} is true hides a version whose files
its C{links_filter} all hid (others show it, without files).

A type whose answer changes with time (a minimum age) has a
C{valid_until(config, project, links)} method: when what it hides of
C{links} next changes (L{None}: not before the state does).  The pages
built from its answer are kept only until then (L{Expiry}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from .archives import version_of
from .stages import Contribution, Stage, chain_names

#: The customizer of an index, by its configuration.
CustomizerFor = Callable[[dict], object]


def link_version(link: dict) -> str | None:
    version = link.get("version")
    if version:
        return version
    try:
        return version_of(link["basename"])
    except Exception:
        return None


class Coverage:
    """
    Which stages of the chain each filtering index sees through.
    """

    def __init__(self, reader, order: list[Stage]) -> None:
        self._reader = reader
        self._order = order
        self._covered: dict[str, frozenset[str]] = {}

    def of(self, stage: Stage) -> frozenset[str]:
        covered = self._covered.get(stage.name)
        if covered is None:
            if self._order and stage.name == self._order[0].name:
                covered = frozenset(s.name for s in self._order)
            else:
                covered = chain_names(self._reader, stage.name)
            self._covered[stage.name] = covered
        return covered


class Expiry:
    """
    The earliest time a filter's answer changes by itself, of those it is
    told (C{at}: L{None} while there is none).
    """

    def __init__(self) -> None:
        self.at: float | None = None

    def add(self, customizer, config: dict, project: str, links: list[dict]) -> None:
        valid_until = getattr(customizer, "valid_until", None)
        if valid_until is None:
            return
        when = valid_until(config, project, links)
        if when is not None and (self.at is None or when < self.at):
            self.at = when


def _emptied(links: list[dict], dropped: set[int]) -> set[str]:
    """
    The versions of C{links} whose every link is in C{dropped} (by id).
    """
    kept: dict[str, bool] = {}
    for link in links:
        version = link_version(link)
        if version is not None:
            kept[version] = kept.get(version, False) or id(link) not in dropped
    return {version for version, any_kept in kept.items() if not any_kept}


def _dropped(items: list, flags: Iterable[bool] | None) -> set:
    if flags is None:
        return set()
    return {item for item, keep in zip(items, flags, strict=True) if not keep}


def filter_contributions(
    reader,
    order: list[Stage],
    project: str,
    contributions: list[Contribution],
    customizer_for: CustomizerFor,
    expiry: Expiry | None = None,
) -> list[Contribution]:
    """
    The C{contributions} of the chain C{order} to C{project}'s simple page,
    less the versions and links its indexes' filters drop (and the
    versions left without links by them, for types that hide those).

    @param expiry: told when the answer changes with time, if given.
    """
    coverage = Coverage(reader, order)
    result = list(contributions)
    for stage in order:
        customizer = customizer_for(stage.config)
        config = stage.config
        if not customizer.filters:
            continue
        covered = coverage.of(stage)
        names = list(dict.fromkeys(v for c in result if c.stage in covered for v in c.versions))
        drop_versions = _dropped(names, customizer.versions_filter(config, project, names))
        links = [link for c in result if c.stage in covered for link in c.links]
        drop_links = {id(link) for link in _dropped_links(customizer, config, project, links)}
        if expiry is not None:
            expiry.add(customizer, config, project, links)
        if drop_links and getattr(customizer, "hides_emptied_versions", False):
            drop_versions |= _emptied(links, drop_links)
        if not drop_versions and not drop_links:
            continue
        for i, c in enumerate(result):
            if c.stage not in covered:
                continue
            new_links = [link for link in c.links if id(link) not in drop_links]
            if drop_versions:
                new_links = [link for link in new_links if link_version(link) not in drop_versions]
            groups = c.groups
            if groups is not None:
                if any(id(link) in drop_links for link in c.links):
                    groups = None  # the versions' kept pieces show dropped links
                else:
                    groups = [g for g in groups if g.record.get("version") not in drop_versions]
            result[i] = attrs.evolve(
                c, links=new_links, versions=[v for v in c.versions if v not in drop_versions], groups=groups
            )
    return result


def _dropped_links(customizer, config: dict, project: str, links: list[dict]) -> list[dict]:
    flags = customizer.links_filter(config, project, links)
    if flags is None:
        return []
    return [link for link, keep in zip(links, flags, strict=True) if not keep]


def filter_records(
    reader,
    order: list[Stage],
    project: str,
    source: str,
    records: dict[str, dict],
    customizer_for: CustomizerFor,
    coverage: Coverage | None = None,
    expiry: Expiry | None = None,
) -> tuple[dict[str, dict], set[str]]:
    """
    The version C{records} of C{project} that index C{source} of the chain
    C{order} contributes, less what the chain's filters drop: whole
    versions, and release files from the records' C{+links} (a version
    whose files were all dropped goes too, for types that hide those).  Returns the records and the
    versions whose record was changed (a copy).

    @param expiry: told when the answer changes with time, if given.
    """
    coverage = coverage or Coverage(reader, order)
    changed: set[str] = set()
    for stage in order:
        if not records:
            break
        customizer = customizer_for(stage.config)
        if not customizer.filters or source not in coverage.of(stage):
            continue
        names = list(records)
        flags = customizer.versions_filter(stage.config, project, names)
        drop = _dropped(names, flags)
        if drop:
            records = {v: r for v, r in records.items() if v not in drop}
        files = [
            (version, link)
            for version, record in records.items()
            for link in record.get("+links", [])
            if link.get("rel") == "releasefile"
        ]
        shown = [link if link.get("version") else dict(link, version=version) for version, link in files]
        gone = {id(link) for link in _dropped_links(customizer, stage.config, project, shown)}
        if expiry is not None:
            expiry.add(customizer, stage.config, project, shown)
        dropped = {id(files[i][1]) for i, link in enumerate(shown) if id(link) in gone}
        if not dropped:
            continue
        records = dict(records)
        emptied: set[str] = set()
        if getattr(customizer, "hides_emptied_versions", False):
            emptied = {version for version, link in files} - {
                version for version, link in files if id(link) not in dropped
            }
        for version, record in list(records.items()):
            if version in emptied:
                del records[version]
            elif any(id(link) in dropped for link in record.get("+links", [])):
                kept = [link for link in record["+links"] if id(link) not in dropped]
                records[version] = dict(record, **{"+links": kept})
                changed.add(version)
    return records, changed

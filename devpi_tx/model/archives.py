"""
What a distribution's file name says: project, version and kind, for
every archive devpi accepts, the legacy ones included (bdist_dumb with a
platform between version and extension, eggs, installers).

Wheels are read by PEP 427's rules (L{packaging.utils}); the rest by the
conventions setuptools and distutils wrote them with, which no standard
fixes, so a name that fits none of them has no version (L{None}).
"""

from __future__ import annotations

import re

import attrs
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import VERSION_PATTERN, InvalidVersion, Version

from .errors import InvalidInput

#: The archive extensions devpi-server's upload view knows, longest first
#: so that C{.tar.gz} wins over C{.gz}-less matches.
ARCHIVE_EXTENSIONS = (
    ".tar.bz2",
    ".tar.gz",
    ".tgz",
    ".tar",
    ".zip",
    ".whl",
    ".egg",
    ".exe",
    ".msi",
    ".dmg",
    ".rpm",
    ".deb",
)

_SOURCE_EXTENSIONS = (".tar.bz2", ".tar.gz", ".tgz", ".tar", ".zip")

#: An egg's python tag and optional platform: C{-py3.11}, C{-py3.11-linux-x86_64}.
_EGG_TAGS = re.compile(r"-py\d[^-]*(-.*)?$", re.IGNORECASE)
#: An rpm's release and architecture: C{-1.noarch}, C{-1.src}.
_RPM_TAGS = re.compile(r"-[^-]+\.[^.-]+$")
#: A version at the start of what follows a name, then the end or a
#: platform (C{.linux-x86_64}, C{.win32}, C{.macosx-10.9-x86_64}).
_VERSION_THEN_PLATFORM = re.compile(
    r"(?P<version>" + VERSION_PATTERN + r")(?P<platform>\.[a-z].*)?$",
    re.VERBOSE | re.IGNORECASE,
)


@attrs.frozen
class ArchiveName:
    """
    What a file name says about its distribution.

    @ivar kind: C{"wheel"}, C{"sdist"}, C{"egg"}, C{"dumb"} (bdist_dumb:
        a source extension with a platform) or C{"installer"} (C{.exe},
        C{.msi}, C{.dmg}, C{.rpm}, C{.deb}).
    @ivar version: L{None} when the name shows none.
    """

    name: str
    version: str | None
    kind: str


def _invalid(basename: str) -> InvalidInput:
    return InvalidInput(f"{basename!r} is not a valid archive name")


def archive_extension(basename: str) -> str | None:
    lowered = basename.lower()
    for ext in ARCHIVE_EXTENSIONS:
        if lowered.endswith(ext) and len(basename) > len(ext):
            return ext
    return None


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def _split_name_version(stem: str) -> tuple[str, str | None, bool]:
    """
    C{name-version} with an optional C{.platform} after the version;
    return the name, the version and whether a platform followed.
    """
    name, dash, version = stem.rpartition("-")
    if dash and name and _is_version(version):
        return name, version, False
    # A platform, which may hold dashes itself: the first dash after which
    # a version and then only a platform follow.
    for match in re.finditer("-", stem):
        rest = stem[match.end() :]
        found = _VERSION_THEN_PLATFORM.match(rest)
        if match.start() and found and rest[:1].isdigit() and _is_version(found.group("version")):
            return stem[: match.start()], found.group("version"), bool(found.group("platform"))
    return stem, None, False


def split_archive_name(basename: str) -> ArchiveName:
    """
    The project, version and kind of a distribution file.

    @raise InvalidInput: the name has no archive extension devpi knows,
        or is not a plain file name, or is a wheel name PEP 427 refuses.
    """
    if not basename or "/" in basename or "\\" in basename or basename.startswith(".") or "\0" in basename:
        raise _invalid(basename)
    ext = archive_extension(basename)
    if ext is None:
        raise _invalid(basename)
    if ext == ".whl":
        try:
            name, version, _, _ = parse_wheel_filename(basename)
        except (InvalidWheelFilename, InvalidVersion):
            raise _invalid(basename) from None
        return ArchiveName(str(name), str(version), "wheel")
    stem = basename[: -len(ext)]
    if ext == ".egg":
        stem = _EGG_TAGS.sub("", stem)
    elif ext == ".rpm":
        stem = _RPM_TAGS.sub("", stem)
    name, version, platform = _split_name_version(stem)
    if ext in _SOURCE_EXTENSIONS:
        kind = "dumb" if platform else "sdist"
    elif ext == ".egg":
        kind = "egg"
    else:
        kind = "installer"
    return ArchiveName(name, version, kind)


def version_of(basename: str) -> str | None:
    """
    The version a file name shows, for grouping the files of a mirrored
    page; L{None} for a name that is no archive or shows no version
    (wheels that PEP 427 refuses are read by their dashes).
    """
    try:
        return split_archive_name(basename).version
    except InvalidInput:
        if basename.lower().endswith(".whl") and basename.count("-") >= 4:
            return basename.split("-")[1]
        return None

"""
File names of distributions: project, version and kind, legacy formats
included.
"""

from __future__ import annotations

import pytest

from devpi_tx.model.archives import ArchiveName, split_archive_name, version_of
from devpi_tx.model.errors import InvalidInput


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("hello_tx-1.0-py3-none-any.whl", ArchiveName("hello-tx", "1.0", "wheel")),
        ("hello-tx-1.0.tar.gz", ArchiveName("hello-tx", "1.0", "sdist")),
        ("hello-tx-1.0.ZIP", ArchiveName("hello-tx", "1.0", "sdist")),
        ("py-3to2-1.0.tgz", ArchiveName("py-3to2", "1.0", "sdist")),
        ("Hello_World-1.0.post1.tar.bz2", ArchiveName("Hello_World", "1.0.post1", "sdist")),
        ("legacy_tx-1.0.linux-x86_64.tar.gz", ArchiveName("legacy_tx", "1.0", "dumb")),
        ("foo-2-bar-1.0rc1.macosx-10.9-x86_64.zip", ArchiveName("foo-2-bar", "1.0rc1", "dumb")),
        ("legacy_tx-1.0-py3.11.egg", ArchiveName("legacy_tx", "1.0", "egg")),
        ("legacy_tx-1.0-py3.11-linux-x86_64.egg", ArchiveName("legacy_tx", "1.0", "egg")),
        ("hello-1.0.win32.exe", ArchiveName("hello", "1.0", "installer")),
        ("hello-1.0.win-amd64-py3.7.exe", ArchiveName("hello", "1.0", "installer")),
        ("hello-1.0.win32-py2.7.msi", ArchiveName("hello", "1.0", "installer")),
        ("hello-1.0-1.noarch.rpm", ArchiveName("hello", "1.0", "installer")),
        ("hello-1.0.dmg", ArchiveName("hello", "1.0", "installer")),
        ("nover.tar.gz", ArchiveName("nover", None, "sdist")),
    ],
)
def test_split_archive_name(filename, expected):
    assert split_archive_name(filename) == expected


@pytest.mark.parametrize(
    "filename",
    [
        "hello-1.0.rar",
        ".tar.gz",
        "../hello-1.0.tar.gz",
        "a\\\\hello-1.0.zip",
        "hello-1.0.tar.gz.txt",
        "x.whl",
    ],
)
def test_not_archives(filename):
    with pytest.raises(InvalidInput, match="is not a valid archive name"):
        split_archive_name(filename)


def test_version_of_reads_odd_wheels_by_their_dashes():
    assert version_of("Not.Normal-2.0-py3-none-any.whl") == "2.0"
    assert version_of("old_style-2.0+local-py3-none-any.whl") == "2.0+local"
    assert version_of("README.txt") is None

"""
The default upstream of root/pypi: the index pip on this machine uses.

Read as pip reads it: C{PIP_INDEX_URL}, else C{index-url} from pip's
configuration files (site-wide, user, the environment's, then
C{PIP_CONFIG_FILE}, later ones winning), else pip's own built-in default,
taken from the installed pip so that no registry host is written here
(the one use of pip's internals, in L{devpi_tx._compat}).
"""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Mapping

from ._compat import pip_builtin_index


def _config_files(environ: Mapping[str, str]) -> list[str]:
    env_file = environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files = [os.path.join(d, "pip", "pip.conf") for d in xdg_dirs if d]
    files.append("/etc/pip.conf")
    if not (env_file and os.path.exists(env_file)):
        home = os.path.expanduser("~")
        config_home = environ.get("XDG_CONFIG_HOME", os.path.join(home, ".config"))
        files.append(os.path.join(home, ".pip", "pip.conf"))
        files.append(os.path.join(config_home, "pip", "pip.conf"))
    files.append(os.path.join(sys.prefix, "pip.conf"))
    if env_file:
        files.append(env_file)
    return files


def _index_url_from_files(files: list[str]) -> str | None:
    found = None
    for path in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "index-url"):
                found = parser.get(section, "index-url").split()[0]
    return found


def pip_default_index() -> str | None:
    """
    pip's built-in default index, or L{None} if pip is not installed.
    """
    return pip_builtin_index()


def default_mirror_url(environ: Mapping[str, str] | None = None) -> str | None:
    environ = os.environ if environ is None else environ
    from_env = environ.get("PIP_INDEX_URL", "").split()
    if from_env:
        return from_env[0]
    return _index_url_from_files(_config_files(environ)) or pip_default_index()

"""
C{devpi-tx export} and C{devpi-tx import}, in devpi-export's and
devpi-import's shape (run them with the server stopped)::

    devpi-tx export [-c FILE] [--serverdir DIR] [--hard-links] DUMPDIR
    devpi-tx import [-c FILE] [--serverdir DIR] [--hard-links] [--from-devpi]
                    [--no-root-pypi] DUMPDIR

The work is in L{devpi_tx.dump}; this module reads the options, takes
the server directory's lock (so neither runs beside a server on the same
directory) and turns what goes wrong into one line naming the path or
option.
"""

from __future__ import annotations

import argparse
import sys

import attrs

from ..config import build_config
from ..dump import DumpError
from ..dump.exporter import export_server
from ..dump.importer import Importer
from ..dump.reader import read_dump
from ..serverdir import is_initialized
from ..startup import check_start, take_serverdir
from ..storage.filestore import check_local_files

#: (C{files}: to refuse a server whose files are in object storage.)
OPTIONS = frozenset(["serverdir", "secretfile", "hard-links", "no-root-pypi", "files"])


def _config(args: argparse.Namespace):
    given = {
        "serverdir": args.serverdir,
        "hard-links": args.hard_links or None,
        "no-root-pypi": getattr(args, "no_root_pypi", False) or None,
    }
    return build_config(given, args.configfile, allowed=OPTIONS)


def _guarded(run, args: argparse.Namespace, partial: str) -> int:
    """
    Run a command: what is wrong with the dump or the server directory,
    an interrupt, a file that cannot be read or written are one line on
    standard error (with C{--debug}, the traceback); the rest goes to
    C{main}'s handler.
    """
    try:
        return run(args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"devpi-tx {args.command}: interrupted; {partial}", file=sys.stderr)
        return 130
    except (DumpError, OSError) as exc:
        if getattr(args, "debug", False):
            raise
        if isinstance(exc, OSError):
            message = f"{exc.filename or '?'}: {exc.strerror or exc}"
        else:
            message = str(exc)
        print(f"devpi-tx {args.command}: error: {message}", file=sys.stderr)
        return 1


def _local_files(config, what: str) -> None:
    try:
        check_local_files(config.serverdir, config.files, what)
    except ValueError as exc:
        raise DumpError(str(exc)) from None


def _export(args: argparse.Namespace) -> int:
    config = _config(args)
    if not is_initialized(config.serverdir):
        # Before the lock, which would create the directory.
        raise DumpError(
            f"{config.serverdir} is no devpi-tx server directory (no .nodeinfo); give one with --serverdir"
        )
    _local_files(config, "export")
    lock = take_serverdir(config)
    try:
        export_server(config.serverdir, args.directory, hard_links=config.hard_links)
    finally:
        lock.release()
    return 0


def _import(args: argparse.Namespace) -> int:
    config = _config(args)
    _local_files(config, "import")
    dump = read_dump(args.directory, from_devpi=args.from_devpi)
    importer = Importer(config, dump, hard_links=config.hard_links, no_root_pypi=config.no_root_pypi)
    importer.check()  # a bad dump is refused before the directory is made
    # The import makes the directory without a root/pypi of its own (the
    # dump's indexes come instead): no upstream URL is needed.
    check_start(attrs.evolve(config, no_root_pypi=True), reactor=None, listen=False)
    lock = take_serverdir(config)
    try:
        importer.apply()
    finally:
        lock.release()
    return 0


def add_commands(commands) -> None:
    """
    Add C{export} and C{import} to C{devpi-tx}'s subcommands.
    """
    export = commands.add_parser(
        "export", help="export the whole server (stopped) into a directory, as devpi-export does"
    )
    export.add_argument("-c", "--configfile", metavar="FILE", help="YAML config file (its serverdir is used)")
    export.add_argument("--serverdir", metavar="DIR", help="the server directory to export")
    export.add_argument(
        "--hard-links", action="store_true", help="hard-link the files into the dump instead of copying them"
    )
    export.add_argument("directory", metavar="DUMPDIR", help="the dump directory: new, or empty")
    export.set_defaults(
        run=lambda args: _guarded(_export, args, "the dump directory is incomplete (no dataindex.json)")
    )
    imp = commands.add_parser(
        "import", help="import a dump into a new (or only initialised) server directory, as devpi-import does"
    )
    imp.add_argument("-c", "--configfile", metavar="FILE", help="YAML config file (its serverdir is used)")
    imp.add_argument(
        "--serverdir", metavar="DIR", help="the server directory to import into: new, or only initialised"
    )
    imp.add_argument(
        "--hard-links",
        action="store_true",
        help="hard-link the dump's files into the store instead of copying",
    )
    imp.add_argument(
        "--from-devpi",
        action="store_true",
        help="the dump was made by devpi-server's devpi-export (6.x and earlier)",
    )
    imp.add_argument("--no-root-pypi", action="store_true", help="leave out the dump's root/pypi")
    imp.add_argument("directory", metavar="DUMPDIR", help="the dump directory (with dataindex.json)")
    imp.set_defaults(
        run=lambda args: _guarded(
            _import, args, "the server directory may hold a partial import: import into a new one"
        )
    )

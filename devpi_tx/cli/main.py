"""
C{devpi-tx}: maintenance commands next to C{twistd devpi}.

    devpi-tx init [--serverdir DIR] [--no-root-pypi] [--root-passwd PW]
                  [--root-passwd-hash HASH] [--mirror-url URL] [-c FILE]
                  [--storage postgresql://USER@HOST/DB]
    devpi-tx passwd USER [--serverdir DIR] [--storage URL]  (the server stopped)
    devpi-tx gen-secret [--secretfile PATH] [--force]
    devpi-tx fsck [--serverdir DIR] [--repair]  (the server stopped)
    devpi-tx gen-config [server options] [--output DIR] [--socket-activation] ...
    devpi-tx export|import ... DUMPDIR          (the server stopped; cli/dumpcmds.py)

Every command takes C{--debug}; without it a failure is one line on
standard error (exit code 1) naming the option or path and what to do.
A command that writes the state takes the server directory's lock first
(L{devpi_tx.startup.take_serverdir}), so it refuses to run beside a
server on the same directory.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import build_config
from ..serverdir import initialize, is_initialized
from ..startup import CommandError, check_start, one_line, take_serverdir
from . import genconfig, maintenance
from .dumpcmds import add_commands as add_dump_commands

INIT_OPTIONS = frozenset(
    [
        "serverdir",
        "no-root-pypi",
        "root-passwd",
        "root-passwd-hash",
        "mirror-url",
        "secretfile",
        "role",
        # With the role, so that a replica's config file passes its checks.
        "primary-url",
        "master-url",
        "storage",
        "files",
        "files-endpoint",
        "files-region",
    ]
)


def _init(args: argparse.Namespace) -> int:
    given = {
        "serverdir": args.serverdir,
        "no-root-pypi": args.no_root_pypi or None,
        "root-passwd": args.root_passwd,
        "root-passwd-hash": args.root_passwd_hash,
        "mirror-url": args.mirror_url,
        "secretfile": args.secretfile,
        "storage": args.storage,
        "files": args.files,
        "files-endpoint": args.files_endpoint,
        "files-region": args.files_region,
    }
    config = build_config(given, args.configfile, allowed=INIT_OPTIONS)
    check_start(config, reactor=None, listen=False)
    lock = take_serverdir(config)
    try:
        for line in initialize(config):
            print(line)
    finally:
        lock.release()
    return 0


def _serverdir_config(args: argparse.Namespace):
    """
    The config of a command on an existing server directory (refused
    before the lock would create one).
    """
    config = build_config(
        {"serverdir": args.serverdir, "storage": getattr(args, "storage", None)},
        None,
        allowed=frozenset(["serverdir", "secretfile", "storage"]),
    )
    if args.command != "gen-secret" and not is_initialized(config.serverdir):
        raise CommandError(f"option serverdir: {config.serverdir} holds no server (give --serverdir)")
    return config


def _serverdir(args: argparse.Namespace) -> str:
    return _serverdir_config(args).serverdir


def _passwd(args: argparse.Namespace) -> int:
    password = maintenance.read_new_password()
    config = _serverdir_config(args)
    lock = take_serverdir(config)
    try:
        maintenance.set_password(config.serverdir, args.user, password, config.storage)
    finally:
        lock.release()
    print(f"password of {args.user} set")
    return 0


def _gen_secret(args: argparse.Namespace) -> int:
    path = args.secretfile or os.path.join(_serverdir(args), ".secret")
    print(f"new secret written to {maintenance.gen_secret(path, force=args.force)}")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    lock = take_serverdir(_serverdir_config(args))
    try:
        report = maintenance.fsck(_serverdir(args), repair=args.repair)
    finally:
        lock.release()
    print(f"checked {report.checked} files, {report.bytes} bytes")
    for label, found in (
        ("missing", report.missing),
        ("damaged", report.damaged),
        ("unlinked", report.unlinked),
    ):
        for sha256 in found:
            print(f"{label}: {sha256}")
    for line in report.repaired:
        print(f"repaired: {line}")
    if report.clean:
        print("no problems found")
        return 0
    return 0 if args.repair else 2


def _add_init(commands) -> None:
    init = commands.add_parser(
        "init",
        help="initialise a server directory",
        description="Initialise a server directory, as devpi-init does: the state with user root and "
        "(unless --no-root-pypi) the root/pypi mirror, and the secret that signs login tokens.  "
        "twistd devpi does the same on its first start.  Options may also come from a config file "
        "(-c) or DEVPISERVER_* environment variables, as for twistd devpi.",
    )
    init.add_argument(
        "-c", "--configfile", metavar="FILE", help="YAML config file with a 'devpi-server:' mapping"
    )
    init.add_argument(
        "--serverdir", metavar="DIR", help="the server directory to create (default ~/.devpi-tx/server)"
    )
    init.add_argument("--no-root-pypi", action="store_true", help="do not create the root/pypi mirror")
    init.add_argument(
        "--root-passwd", metavar="PASSWORD", help="password of user root (default: empty, with a warning)"
    )
    init.add_argument(
        "--root-passwd-hash",
        metavar="HASH",
        help="argon2 hash of root's password, as devpi-server stores it (instead of --root-passwd)",
    )
    init.add_argument(
        "--mirror-url",
        metavar="URL",
        help="upstream simple index of root/pypi (default: the index pip is configured with)",
    )
    init.add_argument(
        "--secretfile",
        metavar="FILE",
        help="file with the secret that signs login tokens (default SERVERDIR/.secret, created)",
    )
    init.add_argument(
        "--storage",
        metavar="URL",
        help="a postgresql://user@host/dbname URL: create the state's tables there (or join the state "
        "other nodes share); default the SQLite file in the server directory",
    )
    init.add_argument(
        "--files",
        metavar="URL",
        help="s3://BUCKET/PREFIX: check that the bucket can be used, and mark the server directory as one "
        "whose files are there; default +files in the server directory",
    )
    init.add_argument("--files-endpoint", metavar="URL", help="the S3 endpoint (overrides AWS_ENDPOINT_URL)")
    init.add_argument(
        "--files-region", metavar="REGION", help="the bucket's region (overrides AWS_DEFAULT_REGION)"
    )
    init.set_defaults(run=_init)


def _add_maintenance(commands) -> None:
    passwd = commands.add_parser("passwd", help="set a user's password (the server stopped)")
    passwd.add_argument("user")
    passwd.add_argument("--serverdir", metavar="DIR")
    passwd.add_argument("--storage", metavar="URL", help="the PostgreSQL database the server's state is in")
    passwd.set_defaults(run=_passwd)
    secret = commands.add_parser("gen-secret", help="write a new secret file")
    secret.add_argument("--serverdir", metavar="DIR")
    secret.add_argument("--secretfile", metavar="FILE")
    secret.add_argument("--force", action="store_true", help="replace an existing secret")
    secret.set_defaults(run=_gen_secret)
    check = commands.add_parser("fsck", help="check the stored files against the state (the server stopped)")
    check.add_argument("--serverdir", metavar="DIR")
    check.add_argument("--repair", action="store_true", help="mend what can be mended; say what was done")
    check.set_defaults(run=_fsck)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devpi-tx", description="devpi-tx maintenance commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init(commands)
    _add_maintenance(commands)
    add_dump_commands(commands)
    # Last, so that every command has it.
    for command in commands.choices.values():
        command.add_argument("--debug", action="store_true", help="show the traceback when the command fails")
    # After: it takes every option of the server, --debug included.
    genconfig.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as e:
        if getattr(args, "debug", False):
            raise
        print(one_line(f"devpi-tx {args.command}", e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

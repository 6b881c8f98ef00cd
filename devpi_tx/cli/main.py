"""
C{devpi-tx}: maintenance commands next to C{twistd devpi}.

    devpi-tx init [--serverdir DIR] [--no-root-pypi] [--root-passwd PW]
                  [--root-passwd-hash HASH] [--mirror-url URL] [-c FILE]

Every command takes C{--debug}; without it a failure is one line on
standard error (exit code 1) naming the option or path and what to do.
A command that writes the state takes the server directory's lock first
(L{devpi_tx.startup.take_serverdir}), so it refuses to run beside a
server on the same directory.
"""

from __future__ import annotations

import argparse
import sys

from ..config import build_config
from ..serverdir import initialize
from ..startup import check_start, one_line, take_serverdir

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
    init.set_defaults(run=_init)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="devpi-tx", description="devpi-tx maintenance commands")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_init(commands)
    # Last, so that every command has it.
    for command in commands.choices.values():
        command.add_argument("--debug", action="store_true", help="show the traceback when the command fails")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as e:
        if args.debug:
            raise
        print(one_line(f"devpi-tx {args.command}", e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

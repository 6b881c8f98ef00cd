"""
C{devpi-tx}: maintenance commands next to C{twistd devpi}.

    devpi-tx init [--serverdir DIR] [--no-root-pypi] [--root-passwd PW]
                  [--root-passwd-hash HASH] [--mirror-url URL] [-c FILE]
    devpi-tx gen-config [server options] [--output DIR] [--socket-activation] ...
"""

from __future__ import annotations

import argparse
import sys

from ..config import ConfigError, build_config
from ..serverdir import AlreadyInitialized, initialize
from . import genconfig

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
    for line in initialize(config):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devpi-tx", description="devpi-tx maintenance")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="initialise a server directory")
    init.add_argument("-c", "--configfile")
    init.add_argument("--serverdir")
    init.add_argument("--no-root-pypi", action="store_true")
    init.add_argument("--root-passwd")
    init.add_argument("--root-passwd-hash")
    init.add_argument("--mirror-url")
    init.add_argument("--secretfile")
    init.set_defaults(run=_init)
    genconfig.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, AlreadyInitialized, ValueError) as e:
        print(f"devpi-tx {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

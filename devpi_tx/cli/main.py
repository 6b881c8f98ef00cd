"""
C{devpi-tx}: maintenance commands next to C{twistd devpi}.

    devpi-tx init [--serverdir DIR] [--no-root-pypi] [--root-passwd PW]
                  [--root-passwd-hash HASH] [--mirror-url URL] [-c FILE]
    devpi-tx passwd USER [--serverdir DIR]      (the server stopped)
    devpi-tx gen-secret [--secretfile PATH] [--force]
    devpi-tx fsck [--serverdir DIR] [--repair]  (the server stopped)
    devpi-tx gen-config [server options] [--output DIR] [--socket-activation] ...
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import DEFAULT_SERVERDIR, ConfigError, build_config
from ..serverdir import AlreadyInitialized, initialize
from . import genconfig, maintenance

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


def _serverdir(args: argparse.Namespace) -> str:
    return os.path.abspath(os.path.expanduser(args.serverdir or DEFAULT_SERVERDIR))


def _passwd(args: argparse.Namespace) -> int:
    password = maintenance.read_new_password()
    maintenance.set_password(_serverdir(args), args.user, password)
    print(f"password of {args.user} set")
    return 0


def _gen_secret(args: argparse.Namespace) -> int:
    path = args.secretfile or os.path.join(_serverdir(args), ".secret")
    print(f"new secret written to {maintenance.gen_secret(path, force=args.force)}")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    report = maintenance.fsck(_serverdir(args), repair=args.repair)
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
    passwd = commands.add_parser("passwd", help="set a user's password (the server stopped)")
    passwd.add_argument("user")
    passwd.add_argument("--serverdir")
    passwd.set_defaults(run=_passwd)
    secret = commands.add_parser("gen-secret", help="write a new secret file")
    secret.add_argument("--serverdir")
    secret.add_argument("--secretfile")
    secret.add_argument("--force", action="store_true", help="replace an existing secret")
    secret.set_defaults(run=_gen_secret)
    check = commands.add_parser("fsck", help="check the stored files against the state (the server stopped)")
    check.add_argument("--serverdir")
    check.add_argument("--repair", action="store_true", help="mend what can be mended; say what was done")
    check.set_defaults(run=_fsck)
    genconfig.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, AlreadyInitialized, ValueError) as e:
        print(f"devpi-tx {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

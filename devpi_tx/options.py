"""
The command line of C{twistd devpi}, with devpi-server's option names.
"""

from __future__ import annotations

import os
import sys

from twisted.python import usage

from . import __version__
from .config import ConfigError, ServerConfig, build_config


class ServerOptions(usage.Options):
    """
    Options for C{twistd devpi}.  Values left unset fall back to the config
    file, then to C{DEVPISERVER_*} environment variables, then to defaults.
    """

    synopsis = "[options]"
    longdesc = (
        "Run devpi-tx, a private package index and PyPI caching server compatible with devpi-server. "
        "Every option can also be set as an environment variable DEVPISERVER_<OPTION> "
        "(DEVPISERVER_PORT=3142, DEVPISERVER_OUTSIDE_URL=...; flags take yes/no) or in a YAML file "
        "(-c FILE) under a 'devpi-server:' mapping; the command line wins over the environment, which "
        "wins over the file, and a misspelt name is an error.  One process at a time uses a server "
        "directory: it locks SERVERDIR/.lock, and twistd's pid file is SERVERDIR/twistd.pid unless "
        "--pidfile is given before 'devpi'.  Start-up errors are one line; --debug shows the traceback."
    )

    optParameters = [
        ["configfile", "c", None, "YAML config file with a 'devpi-server:' mapping."],
        ["serverdir", None, None, "Directory of the server state (default ~/.devpi-tx/server)."],
        ["host", None, None, "Interface to listen on (default 127.0.0.1)."],
        ["port", None, None, "Port to listen on (default 3141)."],
        ["outside-url", None, None, "URL under which clients reach this server."],
        ["secretfile", None, None, "File with the secret that signs login tokens."],
        ["restrict-modify", None, None, "Comma list of users and :groups who may manage users and indexes."],
        ["request-timeout", None, None, "Timeout of outgoing requests in seconds (default 5)."],
        [
            "role",
            None,
            None,
            "standalone, primary (old name master: serves the changelog to replicas), replica (follows "
            "--primary-url), or auto (the default): replica if --primary-url is given, else standalone.",
        ],
        ["primary-url", None, None, "http(s) URL of the primary a replica follows; only for role replica."],
        ["master-url", None, None, "Old name of --primary-url."],
        [
            "replica-max-retries",
            None,
            None,
            "How many times a replica retries a request to the primary whose connection failed (default 0).",
        ],
        [
            "replica-file-search-path",
            None,
            None,
            "Directory laid out like a server directory's +files, where a replica looks for a file "
            "(checked by its hash) before fetching it from the primary.",
        ],
        [
            "file-replication-threads",
            None,
            None,
            "How many files a replica fetches from the primary at once (default 5).",
        ],
        [
            "file-replication-skip-indexes",
            None,
            None,
            "Comma list of indexes (user/index) or index types (mirror, stage), or all, whose files a "
            "replica does not fetch as they appear; they are fetched when first asked for.",
        ],
        [
            "proxy-timeout",
            None,
            None,
            "Seconds a replica waits for the primary's answer to a write it passes on (default 30).",
        ],
        [
            "serial-wait",
            None,
            None,
            "Seconds a request whose X-Devpi-Serial this node has not reached waits for it, before "
            "it is answered from what the node has (default 2; 0: never wait).",
        ],
        [
            "replica-cert",
            None,
            None,
            "PEM file with the client certificate (and its key) a replica presents to the primary.",
        ],
        ["logger-cfg", None, None, "JSON or YAML file for logging.config.dictConfig."],
        [
            "access-log",
            None,
            None,
            "Request log: - (stdout, the default), a file, or off.",
        ],
        ["mirror-url", None, None, "Upstream of root/pypi when it is created (default: pip's index)."],
        ["mirror-cache-expiry", None, None, "Seconds a mirrored project page stays fresh (default 1800)."],
        ["max-request-body-size", None, None, "Largest request body in bytes (default 1 GiB)."],
        ["max-request-line", None, None, "Longest request line in bytes; longer is 414 (default 8192)."],
        ["max-header-size", None, None, "Largest request head in bytes; larger is 431 (default 65536)."],
        [
            "mirror-cache-size",
            None,
            None,
            "Bytes of mirrored files kept (suffixes K, M, G, T: 10G); past it the least recently used are "
            "removed in the background and fetched again when next asked for (default: no bound).",
        ],
        [
            "min-free-space",
            None,
            None,
            "Free space on the server directory's disk below which /+health answers 503: a size (1G) or "
            "a percentage (5%) (default 1G).",
        ],
        [
            "storage",
            None,
            None,
            "Where the state is: a postgresql://user@host/dbname URL, which several servers may share "
            "(password from PGPASSWORD or ~/.pgpass); default the SQLite file in the server directory.",
        ],
        [
            "files",
            None,
            None,
            "Where release files are stored: s3://BUCKET/PREFIX for S3-compatible object storage "
            "(endpoint, region and credentials from the AWS environment and ~/.aws; default: "
            "+files in the server directory).",
        ],
        ["files-endpoint", None, None, "URL of the S3 endpoint of --files (overrides AWS_ENDPOINT_URL)."],
        ["files-region", None, None, "Region of the --files bucket (overrides AWS_DEFAULT_REGION)."],
    ]

    optFlags = [
        ["absolute-urls", None, "Use absolute URLs in simple pages."],
        ["offline-mode", None, "Never contact upstream; serve what is cached."],
        ["debug", None, "Show the traceback of an error at start-up."],
        ["no-root-pypi", None, "When initialising, do not create root/pypi."],
        [
            "hard-links",
            None,
            "A replica hard-links files found under --replica-file-search-path instead of copying them.",
        ],
        ["no-metrics", None, "Do not serve /+metrics (Prometheus text format; on by default)."],
        [
            "files-redirect",
            None,
            "With --files s3://...: answer a file download with a redirect to a short-lived signed "
            "URL of the store instead of streaming it through the server.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        # Flags default to None (not given) so that files and the
        # environment can set them.
        for long, *_ in self.optFlags:
            self[long] = None

    def opt_listen(self, endpoint: str) -> None:
        self["listen"].append(endpoint)

    opt_listen.__doc__ = (
        "Twisted endpoint to listen on (repeatable), e.g. tcp:3141:interface=127.0.0.1 or "
        "ssl:3443:privateKey=key.pem:certKey=cert.pem; overrides --host/--port."
    )

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"devpi-tx {__version__}")
        sys.exit(0)

    def parseOptions(self, options=None) -> None:
        # twistd prints the whole usage text before an error; say what was
        # wrong on one line instead.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"twistd devpi: error: {e}") from None

    def postOptions(self) -> None:
        given = {name: self.get(name) for name in [p[0] for p in self.optParameters if p[0] != "configfile"]}
        for long, *_ in self.optFlags:
            given[long] = True if self[long] else None
        given["listen"] = self["listen"] or None
        try:
            self.config: ServerConfig = build_config(given, self["configfile"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


#: twistd's default pid file, in the current directory.
TWISTD_PIDFILE = "twistd.pid"


class TwistdServerOptions(ServerOptions):
    """
    The options as the twistd plugin takes them: parsed, then everything
    checked that can be without writing (L{startup.check_start}), then the
    server directory created and locked (held in C{lock} for the process's
    life), so that a second server on it stops here, before twistd writes
    its pid file.  Under twistd (not C{twist}), a pid file left at its
    default goes into the server directory, and so does a daemon's log.
    """

    lock = None
    #: What check_start found, for make_service.
    plugins = None

    def postOptions(self) -> None:
        super().postOptions()
        from twisted.internet import reactor

        from . import startup

        try:
            self.plugins = startup.check_start(self.config, reactor)
            self.lock = startup.take_serverdir(self.config)
        except startup.USER_ERRORS as e:
            raise usage.UsageError(str(e)) from None
        daemon = self._twistd_files()
        if not self.config.debug:
            twistd = self.parent is not None and "pidfile" in self.parent
            startup.install_excepthook("twistd devpi" if twistd else "twist devpi", log_it=daemon)

    def _twistd_files(self) -> bool:
        """
        Point twistd's pid file (and a daemon's log) into the server
        directory; remove a pid file there that no process holding the
        lock can have left (a pid recorded before a crash may belong to
        another process since, which twistd would take for a server).

        @return: whether twistd will run as a daemon.
        """
        parent = self.parent
        if parent is None or "pidfile" not in parent:
            return False
        serverdir = self.config.serverdir
        if parent["pidfile"] == TWISTD_PIDFILE:
            parent["pidfile"] = os.path.join(serverdir, TWISTD_PIDFILE)
            try:
                os.remove(parent["pidfile"])
            except FileNotFoundError:
                pass
        daemon = not parent.get("nodaemon")
        if daemon and not parent.get("logfile"):
            parent["logfile"] = os.path.join(serverdir, "twistd.log")
        return daemon

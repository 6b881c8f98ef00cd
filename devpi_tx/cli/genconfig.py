"""
C{devpi-tx gen-config}: the files that put a server behind nginx and under
systemd or supervisor, for the server options given, as devpi-server's
C{devpi-gen-config} writes them.

The options are read through L{build_config}, the server's own reading (a
config file and C{DEVPISERVER_*} variables included), and every value that
differs from its default is written out on the generated command lines:
the service then depends on nothing of the shell it was generated from
(its environment, its working directory, the user's home).

Files under C{+f/} are proxied like everything else.  nginx cannot serve
them from the store itself: the store is addressed by the whole sha256
(C{+files/<h[:3]>/<h[3:]>}) while the URL holds 16 hex digits of it, and
the server decides per request what a URL serves (a deleted file is 410
though its blob may stay for another index; a replica fetches a file it
lacks; a mirrored file may not be fetched yet).  Serving them from nginx
would need the server to answer with C{X-Accel-Redirect} to an internal
location over the store, which it does not do (C{deployment/README.rst}).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from urllib.parse import urlsplit

import attrs

from ..config import OPTIONS, ServerConfig, build_config
from ..options import ServerOptions
from ..startup import CommandError
from .gentemplates import LOGROTATE, NGINX, NGINX_REDIRECT, NGINX_TLS, SERVICE, SOCKET, SUPERVISOR

#: The changelog stream a replica reads waits up to 30 s for the next
#: commit (L{devpi_tx.web.changefeed.WAIT}): nginx must wait longer.
CHANGELOG_READ_TIMEOUT = 90
#: Exit code of a replica that stops on purpose (its primary changed):
#: restarting it would not help.
REPLICA_STOPPED = 3
#: Options written apart (where to listen, the server directory), an alias, and the config
#: file (its values are written out instead).
_NOT_WRITTEN = frozenset({"configfile", "master-url", "host", "port", "listen", "serverdir"})
#: Options whose values are paths, made absolute against the current directory.
_PATHS = frozenset({"secretfile", "logger-cfg", "access-log", "replica-cert", "replica-file-search-path"})
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")
_SAFE_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*$")


class GenConfigError(CommandError):
    """
    Options the files cannot be made for; the message names the option.
    """


@attrs.frozen
class Backend:
    """
    Where nginx reaches the server: C{tcp} (host, port), C{ssl} (the same,
    over TLS) or C{unix} (path).
    """

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def nginx_server(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def socket_listen(self) -> tuple[str, str]:
        """
        The C{.socket} unit's C{ListenStream=} and the address family Twisted's
        C{systemd:} endpoint must adopt the socket with.
        """
        if self.kind == "unix":
            return self.path, "UNIX"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}", "INET6"
        return f"{self.host}:{self.port}", "INET"


@attrs.frozen
class Deployment:
    """
    Everything the files are made from: the server's config and how it is
    deployed (names, user, paths nginx needs that the server does not know).
    """

    config: ServerConfig
    #: The server's arguments as configured (supervisor, and systemd without
    #: socket activation) and as the systemd service gets them.
    arguments: tuple[str, ...]
    service_arguments: tuple[str, ...]
    backend: Backend
    twistd: str
    name: str = "devpi-tx"
    user: str = "devpi"
    group: str = "devpi"
    server_name: str = "devpi.example.com"
    certificate: str = "/etc/ssl/certs/devpi.example.com.pem"
    certificate_key: str = "/etc/ssl/private/devpi.example.com.key"
    socket_activation: bool = False


def _split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    A Twisted server endpoint string as its type, positional and keyword
    arguments (C{\\:} is an escaped colon).
    """
    parts, current, chars = [], "", iter(description)
    for char in chars:
        if char == "\\":
            current += next(chars, "")
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(part)
    return parts[0], args, kwargs


def parse_backend(description: str) -> Backend:
    """
    Where nginx reaches a server listening on a C{tcp:}, C{tcp6:}, C{ssl:}
    or C{unix:} endpoint; a wildcard interface is reached on loopback.
    """
    kind, args, kwargs = _split_endpoint(description)
    if kind == "unix":
        path = kwargs.get("address") or (args[0] if args else "")
        if path:
            return Backend("unix", path=os.path.abspath(path))
    elif kind in ("tcp", "tcp6", "ssl"):
        port = kwargs.get("port") or (args[0] if args else "")
        if port.isdigit() and 0 < int(port) < 65536:
            host = kwargs.get("interface") or ("::" if kind == "tcp6" else "")
            host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            return Backend("ssl" if kind == "ssl" else "tcp", host=host, port=int(port))
    raise GenConfigError(
        f"option listen: cannot tell where nginx reaches the server listening on {description!r} "
        "(give --host/--port, or a tcp:, ssl: or unix: endpoint with its port or path)"
    )


def server_arguments(config: ServerConfig, listen: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """
    The C{twistd devpi} options that make C{config} again: the server
    directory and where to listen always, any other option that differs
    from its default (paths made absolute); C{listen} replaces the config's
    endpoints (socket activation).
    """
    arguments = ["--serverdir", config.serverdir]
    if listen is not None:
        for endpoint in listen:
            arguments += ["--listen", endpoint]
    elif config.listen:
        for endpoint in config.listen:
            arguments += ["--listen", endpoint]
    else:
        arguments += ["--host", config.host, "--port", str(config.port)]
    accepted = {p[0] for p in ServerOptions.optParameters} | {f[0] for f in ServerOptions.optFlags}
    defaults = {field.name: field.default for field in attrs.fields(ServerConfig)}
    for option, (attribute, _) in OPTIONS.items():
        if option in _NOT_WRITTEN or option not in accepted:
            continue
        value = getattr(config, attribute)
        if attribute == "role":
            value = None if value == ("replica" if config.primary_url else "standalone") else value
        if value is None or value is False or value == () or value == defaults.get(attribute):
            continue
        if value is True:
            arguments.append(f"--{option}")
            continue
        if isinstance(value, tuple):
            value = ",".join(value)
        elif option in _PATHS and value not in ("-", "off"):
            value = os.path.abspath(os.path.expanduser(str(value)))
        arguments += [f"--{option}", str(value)]
    return tuple(arguments)


def _systemd_word(word: str) -> str:
    """
    One word of an C{ExecStart=} line: specifiers (C{%}) and variables
    (C{$}) escaped, quoted unless plainly safe.
    """
    word = word.replace("%", "%%").replace("$", "$$")
    if _SAFE_WORD.match(word) or word == "--pidfile=":
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _nginx_word(word: str) -> str:
    if "$" in word or "\n" in word:
        raise GenConfigError(f"{word!r} cannot go into an nginx file (holds '$' or a line break)")
    return word if _SAFE_WORD.match(word) else '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _nginx_size(size: int) -> str:
    for unit, scale in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def command_line(deployment: Deployment, arguments: tuple[str, ...]) -> list[str]:
    """
    The server's command: twistd in the foreground (the service manager
    keeps it), without a pid file (it would land in the working directory).
    """
    return [deployment.twistd, "-n", "--pidfile=", "devpi", *arguments]


def render_nginx(deployment: Deployment) -> str:
    """
    The nginx site: TLS (for an https outside URL) with the plain port
    redirecting to it, the server's outside URL passed on, uploads as large
    as the server takes streamed through, and the changelog stream unbuffered
    with a timeout above its 30 s hold.  An outside URL with a path is
    served under that path, which is taken off before the server sees it.
    """
    config = deployment.config
    outside = config.outside_url or f"https://{deployment.server_name}"
    parts = urlsplit(outside)
    prefix = parts.path.rstrip("/")
    if not _SAFE_PREFIX.match(prefix):
        raise GenConfigError(f"option outside-url: the path of {outside!r} has characters nginx would escape")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    values = {
        "serverdir": config.serverdir,
        "upstream": deployment.name,
        "backend": deployment.backend.nginx_server,
        "port": port,
        "ssl": " ssl" if tls else "",
        "server_name": _nginx_word(deployment.server_name),
        "certificate": _nginx_word(deployment.certificate),
        "certificate_key": _nginx_word(deployment.certificate_key),
        "zone": re.sub(r"[^A-Za-z0-9_]", "_", deployment.name) + "_tls",
        "body_size": _nginx_size(config.max_request_body_size),
        # A literal outside URL (it may have a path); else whatever host the client used.
        "outside_url": _nginx_word(outside.rstrip("/")) if config.outside_url else "$scheme://$http_host",
        "read_timeout": max(60, int(config.proxy_timeout) + 30),
        "changelog_timeout": CHANGELOG_READ_TIMEOUT,
        "prefix": prefix,
        "regex_prefix": prefix.replace(".", "\\."),
        "rewrite": f"        rewrite ^{prefix}/(.*)$ /$1 break;\n" if prefix else "",
        "prefix_redirect": f"\n    location = {prefix} {{\n        return 301 {prefix}/;\n    }}\n"
        if prefix
        else "",
        "scheme": "https" if deployment.backend.kind == "ssl" else "http",
    }
    values["redirect"] = NGINX_REDIRECT % values if tls and port == 443 else ""
    values["tls"] = NGINX_TLS % values if tls else ""
    return NGINX % values


def render_service(deployment: Deployment) -> str:
    """
    The systemd service; with socket activation it adopts the socket of the
    C{.socket} unit, which stays open (queueing connections) over restarts.
    """
    config = deployment.config
    name, socket = deployment.name, deployment.socket_activation
    log = os.path.abspath(config.access_log)
    logs_directory = ""
    if config.access_log not in ("-", "off") and os.path.dirname(os.path.dirname(log)) == "/var/log":
        # systemd makes it, owned by the user.
        logs_directory = f"LogsDirectory={os.path.basename(os.path.dirname(log))}\n"
    return SERVICE % {
        "serverdir": config.serverdir,
        "files": f"{name}.service {name}.socket" if socket else f"{name}.service",
        "enable": f"{name}.socket {name}.service" if socket else f"{name}.service",
        "after": f" {name}.socket" if socket else "",
        "requires": f"Requires={name}.socket\n" if socket else "",
        "user": deployment.user,
        "group": deployment.group,
        "command": " ".join(_systemd_word(w) for w in command_line(deployment, deployment.service_arguments)),
        "replica_stopped": REPLICA_STOPPED,
        "logs_directory": logs_directory,
        "also": f"Also={name}.socket\n" if socket else "",
    }


def render_socket(deployment: Deployment) -> str:
    listen, _ = deployment.backend.socket_listen
    return SOCKET % {"serverdir": deployment.config.serverdir, "name": deployment.name, "listen": listen}


def render_supervisor(deployment: Deployment) -> str:
    """
    The supervisor program: restarted when it exits unexpectedly, not when
    a replica stops on purpose; output to supervisor's rotated log.
    """
    command = " ".join(shlex.quote(word) for word in command_line(deployment, deployment.arguments))
    return SUPERVISOR % {
        "serverdir": deployment.config.serverdir,
        "name": deployment.name,
        # supervisor expands %(...)s in the command.
        "command": command.replace("%", "%%"),
        "user": deployment.user,
        "replica_stopped": REPLICA_STOPPED,
    }


def render_logrotate(deployment: Deployment) -> str | None:
    """
    The logrotate snippet for the access log when it is a file (L{None}
    otherwise: the service manager keeps standard output).  The server keeps
    the file open and does not reopen it, so it is copied and truncated.
    """
    log = deployment.config.access_log
    if log in ("-", "off"):
        return None
    return LOGROTATE % {
        "serverdir": deployment.config.serverdir,
        "name": deployment.name,
        "log": _nginx_word(os.path.abspath(log)),
        "user": deployment.user,
        "group": deployment.group,
    }


def file_names(name: str) -> dict[str, str]:
    return {
        "nginx": f"nginx-{name}.conf",
        "service": f"{name}.service",
        "socket": f"{name}.socket",
        "supervisor": f"supervisor-{name}.conf",
        "logrotate": f"logrotate-{name}",
    }


def render(deployment: Deployment) -> dict[str, str]:
    """
    The files to write, by file name.
    """
    names = file_names(deployment.name)
    files = {
        names["nginx"]: render_nginx(deployment),
        names["service"]: render_service(deployment),
        names["supervisor"]: render_supervisor(deployment),
    }
    if deployment.socket_activation:
        files[names["socket"]] = render_socket(deployment)
    logrotate = render_logrotate(deployment)
    if logrotate is not None:
        files[names["logrotate"]] = logrotate
    return files


def make_deployment(config: ServerConfig, **options: object) -> Deployment:
    """
    The L{Deployment} for a server config: where nginx reaches it and the
    server's arguments (with socket activation, one C{systemd:} endpoint
    in place of the config's).
    """
    endpoints = config.endpoints
    plain = [e for e in endpoints if not e.startswith("ssl:")] or list(endpoints)
    backend = parse_backend(plain[0])
    listen = None
    if options.get("socket_activation"):
        if len(endpoints) != 1 or backend.kind == "ssl":
            raise GenConfigError(
                "option socket-activation: takes a server listening on one plain tcp or unix endpoint, "
                f"not {', '.join(endpoints)}"
            )
        listen = (f"systemd:domain={backend.socket_listen[1]}:index=0",)
    plain_arguments = server_arguments(config)
    return Deployment(
        config=config,
        arguments=plain_arguments,
        service_arguments=server_arguments(config, listen) if listen else plain_arguments,
        backend=backend,
        **options,  # type: ignore[arg-type]
    )


def default_twistd() -> str:
    """
    The twistd of the Python running this (the one devpi-tx is installed in).
    """
    return os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "twistd")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """
    Register C{gen-config} with every server option of C{twistd devpi}.
    """
    parser = commands.add_parser(
        "gen-config",
        help="write nginx, systemd, supervisor and logrotate files for the server options given",
        description="Write deployment files for the server options given (those of twistd devpi) into "
        "gen-config/ (or --output).",
    )
    # Every option of twistd devpi, whatever it adds later; argparse formats
    # help texts with %.
    server = parser.add_argument_group("server options (those of twistd devpi)")
    for long, short, *rest in ServerOptions.optParameters:
        text = str(rest[1] if len(rest) > 1 else "").replace("%", "%%")
        flags = [f"--{long}"] + ([f"-{short}"] if short else [])
        server.add_argument(*flags, dest=f"server_{long}", help=text, metavar="VALUE")
    for long, _, *rest in ServerOptions.optFlags:
        text = str(rest[0] if rest else "").replace("%", "%%")
        server.add_argument(f"--{long}", dest=f"server_{long}", action="store_true", default=None, help=text)
    server.add_argument(
        "--listen",
        dest="server_listen",
        action="append",
        metavar="ENDPOINT",
        help="Twisted endpoint (repeatable)",
    )
    own = parser.add_argument_group("deployment")
    own.add_argument("--output", default="gen-config", help="directory to write to (default gen-config)")
    own.add_argument("--name", default="devpi-tx", help="name of the units and program (default devpi-tx)")
    own.add_argument("--user", default="devpi", help="user the server runs as (default devpi)")
    own.add_argument("--group", help="its group (default: the user's name)")
    own.add_argument(
        "--twistd", default=default_twistd(), help="twistd's path (default: next to this Python)"
    )
    own.add_argument("--server-name", help="nginx server_name (default: the outside URL's host)")
    own.add_argument("--ssl-certificate", help="certificate (chain) for nginx's TLS")
    own.add_argument("--ssl-certificate-key", help="its private key")
    own.add_argument(
        "--socket-activation",
        action="store_true",
        help="a .socket unit holds the listening socket; the server adopts it (Twisted's systemd: endpoint)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    given = {
        name[len("server_") :].replace("_", "-"): value
        for name, value in vars(args).items()
        if name.startswith("server_") and name != "server_configfile"
    }
    config = build_config(given, args.server_configfile)
    if not re.match(r"^[A-Za-z0-9_.@-]+$", args.name):
        raise GenConfigError(f"option name: {args.name!r} is not a unit name (letters, digits, _ . @ -)")
    options: dict[str, object] = {
        "name": args.name,
        "user": args.user,
        "group": args.group or args.user,
        "twistd": os.path.abspath(args.twistd),
        "socket_activation": args.socket_activation,
    }
    host = urlsplit(config.outside_url).hostname if config.outside_url else None
    options["server_name"] = args.server_name or host or "devpi.example.com"
    options["certificate"] = args.ssl_certificate or f"/etc/ssl/certs/{options['server_name']}.pem"
    options["certificate_key"] = args.ssl_certificate_key or f"/etc/ssl/private/{options['server_name']}.key"
    deployment = make_deployment(config, **options)
    files = render(deployment)
    os.makedirs(args.output, exist_ok=True)
    for stale in set(file_names(args.name).values()) - set(files):
        path = os.path.join(args.output, stale)
        if os.path.exists(path):
            os.unlink(path)
            print(f"removed {path} (not wanted for these options)")
    for file_name, text in sorted(files.items()):
        path = os.path.join(args.output, file_name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {path}")
    if not config.outside_url and not args.server_name:
        print("note: no --outside-url: the nginx site answers as devpi.example.com; edit it or give one")
    return 0

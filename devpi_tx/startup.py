"""
What a server (C{twistd devpi}) or a command (C{devpi-tx init}) checks
before it writes anything, the lock that keeps one process per server
directory, and how a failure to start is told: one line naming the option
or path and what to do (the traceback only with C{--debug}).

The order, for a server:

 1. the options' values (L{devpi_tx.config.build_config}: types, ranges,
    the host's form, the replication options);
 2. L{check_start}: the paths (server directory, secret file, logging
    configuration, access log, replica certificate), the state the server
    directory already holds (a replica's or not), the endpoints (parsed,
    and each TCP or TLS address bound once and let go);
 3. L{take_serverdir}: the server directory created, its lock taken; a
    second process on the same directory stops here, told the first one's
    pid.

Only then is the state initialised or opened.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sys

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError

from ._compat import server_endpoint_address
from .config import ConfigError, ServerConfig
from .customizers.plugins import find_index_types
from .logs import logger
from .pipconfig import default_mirror_url
from .plugins import find_authenticators, find_event_listeners
from .serverdir import (
    AlreadyInitialized,
    ServerDirBusy,
    ServerDirLock,
    check_replica_secret,
    check_role,
    is_initialized,
    lock_serverdir,
    read_nodeinfo,
    read_secret,
)
from .storage.backends import check_storage
from .storage.errors import SchemaError, StorageUnavailable

log = logger("devpi_tx.startup")


class ListenError(Exception):
    """
    An endpoint could not listen; the message names the option and the
    address.
    """


class CommandError(ValueError):
    """
    What a C{devpi-tx} command was given cannot be done; the message says
    why and what to give instead.
    """


#: Errors whose message is all a person needs (no traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    ServerDirBusy,
    AlreadyInitialized,
    ListenError,
    CommandError,
    StorageUnavailable,
    SchemaError,
)


@attrs.frozen
class FoundPlugins:
    """
    The plugins of the installed distributions, loaded once at start.
    """

    index_types: list
    authenticators: list
    event_listeners: list


def check_start(config: ServerConfig, reactor, *, listen: bool = True) -> FoundPlugins:
    """
    Everything that can be checked without writing: L{check_paths},
    L{check_state} and, with C{listen}, L{check_endpoints}.

    @return: the plugins found, for the server to use rather than load
        them again (a plugin's factory may open connections).
    @raise ConfigError: the first problem found, naming the option (or
        the index type plugin).
    """
    check_paths(config)
    check_state(config)
    # A broken plugin stops the start here, in one line.
    found = FoundPlugins(find_index_types(), find_authenticators(), find_event_listeners())
    if listen:
        check_endpoints(config, reactor)
    return found


# -- paths ---------------------------------------------------------------------


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_directory(option: str, path: str, file: str | None = None) -> None:
    """
    C{path} is a directory this process may write in, or one it may
    create (its nearest existing ancestor is a directory it may write in).

    @param file: the file to be made in it, if that is what is wanted.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and file is None:
        if not os.path.isdir(path):
            raise ConfigError(f"option {option}: {path} is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"option {option}: this user may not write in {path}")
        return
    wanted = file or path
    ancestor = _nearest_existing(path)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"option {option}: cannot create {wanted}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"option {option}: cannot create {wanted}: this user may not write in {ancestor}")


def check_paths(config: ServerConfig) -> None:
    """
    The server directory, the secret file, the logging configuration, the
    access log and a replica's certificate.
    """
    check_directory("serverdir", config.serverdir)
    path = config.secret_path
    if os.path.exists(path):
        if os.path.isdir(path):
            raise ConfigError(f"option secretfile: {path} is a directory, not a file")
        try:
            read_secret(path)
        except OSError as e:
            raise ConfigError(f"option secretfile: cannot read {path}: {e.strerror}") from None
    else:
        check_directory("secretfile", os.path.dirname(os.path.abspath(path)), file=path)
    if config.logger_cfg:
        _check_logger_cfg(config.logger_cfg)
    if config.access_log not in ("-", "off"):
        directory = os.path.dirname(os.path.abspath(config.access_log))
        if not os.path.isdir(directory):
            raise ConfigError(f"option access-log: {directory} is not a directory (for {config.access_log})")
        if os.path.isdir(config.access_log):
            raise ConfigError(f"option access-log: {config.access_log} is a directory, not a file")
    if config.effective_role == "replica" and config.replica_cert:
        from .replica.primary import PrimaryCertificatePolicy

        with open(config.replica_cert, "rb") as pem:
            try:
                PrimaryCertificatePolicy(config.primary_url, pem.read())
            except ValueError as e:
                raise ConfigError(f"option replica-cert: {config.replica_cert}: {e}") from None


def _check_logger_cfg(path: str) -> None:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"option logger-cfg: cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if path.endswith(".json") else "YAML"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"option logger-cfg: {path} is not valid {kind} ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"option logger-cfg: {path} must hold a mapping (logging.config.dictConfig's)")


# -- the state already there -----------------------------------------------------


def check_state(config: ServerConfig) -> None:
    """
    What the server directory holds agrees with the options: a replica's
    state for a replica only, the primary's secret for a replica, an
    upstream for a new root/pypi.
    """
    serverdir = config.serverdir
    if not is_initialized(serverdir):
        check_replica_secret(config)
        if config.effective_role != "replica" and not config.no_root_pypi:
            if not (config.mirror_url or default_mirror_url()):
                raise ConfigError(
                    "option mirror-url: no upstream index found in pip's configuration; "
                    "give one with --mirror-url or use --no-root-pypi"
                )
        return
    try:
        nodeinfo = read_nodeinfo(serverdir)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"option serverdir: {os.path.join(serverdir, '.nodeinfo')} cannot be read ({e}); "
            "is this a devpi-tx server directory?"
        ) from None
    if not isinstance(nodeinfo, dict):
        raise ConfigError(f"option serverdir: {os.path.join(serverdir, '.nodeinfo')} is not a node's info")
    check_role(config, nodeinfo)
    check_replica_secret(config)
    check_storage(config)


# -- endpoints -------------------------------------------------------------------


def listen_labels(config: ServerConfig, description: str) -> tuple[str, str]:
    """
    What to call the address and the port of an endpoint in an error:
    the C{--listen} option that gave it, or C{--host} and C{--port}.
    """
    if config.listen:
        label = f"option listen {description!r}"
        return label, label
    return "option host", "option port"


def _parse_failure(description: str, error: Exception) -> str:
    text = str(error)
    if description.isdigit():
        return (
            f"option listen: {description!r} is not a server endpoint (a port alone is not one); "
            f"give tcp:{description}, or tcp:{description}:interface=127.0.0.1"
        )
    if isinstance(error, OSError) and error.filename:
        reason = f"{error.filename}: {error.strerror}"
    elif match := re.match(r"Unknown endpoint type: (.*)", text):
        reason = f"unknown endpoint type {match.group(1)}"
    elif "invalid literal for int()" in text:
        reason = "its port is not a number"
    elif match := re.search(r"unexpected keyword argument (.*)", text):
        reason = f"unknown parameter {match.group(1)}"
    else:
        reason = text or type(error).__name__
    return (
        f"option listen: {description!r} is not a server endpoint ({reason}); "
        "give one like tcp:3141:interface=127.0.0.1 or ssl:3443:privateKey=key.pem:certKey=cert.pem"
    )


def listen_failure(host_label: str, port_label: str, interface: str, port: int, error: BaseException) -> str:
    """
    One line for an address that cannot be listened on.
    """
    shown = f"[{interface}]:{port}" if isIPv6Address(interface) else f"{interface or '*'}:{port}"
    if isinstance(error, OverflowError):
        return f"{port_label}: {port} is not a port number (0 to 65535)"
    if isinstance(error, socket.gaierror):
        return f"{host_label}: cannot resolve {interface!r} ({error.strerror}); give an IP address"
    code = getattr(error, "errno", None)
    if code == errno.EADDRINUSE:
        return (
            f"{port_label}: {shown} is already in use (another server listens there); "
            "stop it, or choose another port"
        )
    if code == errno.EACCES:
        return f"{port_label}: not allowed to listen on {shown} (ports below 1024 need privileges)"
    if code == errno.EADDRNOTAVAIL:
        return (
            f"{host_label}: {interface} is not an address of this machine; "
            "give one of its addresses, 127.0.0.1, or 0.0.0.0 for all"
        )
    reason = getattr(error, "strerror", None) or str(error)
    return f"{port_label}: cannot listen on {shown}: {reason}"


def check_endpoints(config: ServerConfig, reactor, *, bind: bool = True) -> None:
    """
    Every endpoint parses; with C{bind}, every TCP and TLS address can be
    bound now (it is let go at once: the server binds it again when it
    starts, after the state is open).
    """
    for description in config.endpoints:
        try:
            endpoint = serverFromString(reactor, description)
        except Exception as e:
            raise ConfigError(_parse_failure(description, e)) from None
        address = server_endpoint_address(endpoint) if bind else None
        if address is None:
            continue
        interface, port = address
        family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As Twisted's ports do, so that connections closing on the
            # port do not count as its use.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((interface, port))
            except (OSError, OverflowError) as e:
                host_label, port_label = listen_labels(config, description)
                raise ConfigError(listen_failure(host_label, port_label, interface, port, e)) from None


# -- the server directory's lock ------------------------------------------------------


def take_serverdir(config: ServerConfig) -> ServerDirLock:
    """
    Create the server directory if needed and lock it for this process.

    @raise ConfigError: it cannot be created or written in.
    @raise ServerDirBusy: another process holds it.
    """
    serverdir = config.serverdir
    try:
        os.makedirs(serverdir, exist_ok=True)
    except OSError as e:
        where = f" ({e.filename})" if e.filename and e.filename != serverdir else ""
        raise ConfigError(f"option serverdir: cannot create {serverdir}: {e.strerror}{where}") from None
    try:
        return lock_serverdir(serverdir)
    except OSError as e:
        raise ConfigError(f"option serverdir: cannot write in {serverdir}: {e.strerror}") from None


class HoldServerDir(Service):
    """
    Keeps the server directory's lock with the service tree, and writes
    this process's pid into it when started (after twistd made a daemon of
    the process, whose pid then changed).  The kernel releases the lock
    when the process exits.
    """

    name = "serverdir-lock"

    def __init__(self, lock: ServerDirLock) -> None:
        self.lock = lock

    def startService(self) -> None:
        super().startService()
        self.lock.write_pid()


# -- telling a failure ---------------------------------------------------------------


def describe(error: BaseException) -> str | None:
    """
    The one line for an error a person can act on, or L{None} for one
    that is a bug or unforeseen.
    """
    if isinstance(error, USER_ERRORS):
        return str(error)
    if isinstance(error, OSError) and error_path(error):
        return f"{error_path(error)}: {error.strerror or error}"
    return None


def error_path(error: OSError) -> str | None:
    """
    The file an C{OSError} is about: the second name of a two-name call
    (the link C{symlink} makes: a UNIX socket's lock), else the first.
    """
    path = error.filename2 or error.filename
    if path is None:
        return None
    return os.fsdecode(path) if isinstance(path, (str, bytes)) else str(path)


def one_line(prog: str, error: BaseException) -> str:
    message = describe(error)
    if message is None:
        message = f"{type(error).__name__}: {error} (run with --debug for the traceback)"
    return f"{prog}: error: {message}"


def install_excepthook(prog: str, *, log_it: bool = False) -> None:
    """
    Make an error that ends the process during start-up (the state cannot
    be opened, a port taken since it was checked) one line on the real
    standard error (twistd redirects C{sys.stderr} into its log), and also
    a log event with C{log_it} (a daemon, whose standard error goes
    nowhere).
    """
    default = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if not isinstance(value, Exception):
            default(kind, value, traceback)
            return
        line = one_line(prog, value)
        if log_it:
            log.critical("{line}", line=line)
        stream = sys.__stderr__ or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    sys.excepthook = hook


class ListeningService(StreamServerEndpointService):
    """
    One endpoint's web server, whose failure to listen when it starts is
    raised at once as a L{ListenError} naming the option and the address
    (the start-up checks bound it a moment before; another process may
    have taken it since).
    """

    def __init__(self, endpoint, factory, description: str, labels: tuple[str, str]) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self._description = description
        self._labels = labels

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            error = e.socketError if isinstance(e.socketError, BaseException) else e
            raise ListenError(listen_failure(*self._labels, e.interface, e.port, error)) from e
        except OSError as e:
            # A UNIX socket's directory missing, say (its lock file is
            # the second file name).
            path = error_path(e)
            where = f" ({path})" if path else ""
            raise ListenError(
                f"{self._labels[1]}: cannot listen on {self._description}: {e.strerror or e}{where}"
            ) from e

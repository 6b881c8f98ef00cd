"""
The server's configuration: one frozen L{ServerConfig}, built from
defaults, a YAML config file, C{DEVPISERVER_*} environment variables and
the command line, in that order of precedence (the last wins), using
devpi-server's option names so that existing files and scripts keep working.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

import attrs
import yaml

from .model.errors import InvalidInput
from .model.names import check_indexname, check_username
from .sizes import parse_free_space, parse_size

DEFAULT_SERVERDIR = "~/.devpi-tx/server"
DEFAULT_MAX_BODY = 1024 * 1024 * 1024
DEFAULT_MAX_JSON_BODY = 1024 * 1024

#: The values of C{--role}, as the config keeps them (C{master} is read as
#: C{primary}; C{auto} is resolved by L{build_config}).
ROLES = ("auto", "standalone", "primary", "replica")
#: Index types C{--file-replication-skip-indexes} may name besides indexes.
SKIP_INDEX_TYPES = frozenset({"all", "mirror", "stage"})


class ConfigError(Exception):
    """
    A wrong or unknown option; the message names it.
    """


@attrs.frozen
class ServerConfig:
    serverdir: str
    host: str = "127.0.0.1"
    port: int = 3141
    listen: tuple[str, ...] = ()
    outside_url: str | None = None
    absolute_urls: bool = False
    secretfile: str | None = None
    restrict_modify: str | None = None
    request_timeout: float = 5.0
    offline_mode: bool = False
    debug: bool = False
    #: One of L{ROLES}; never C{auto} once L{build_config} made the config.
    role: str = "auto"
    primary_url: str | None = None
    replica_max_retries: int = 0
    replica_file_search_path: str | None = None
    hard_links: bool = False
    file_replication_threads: int = 5
    #: Index names (C{user/index}), index types (C{mirror}, C{stage}) or C{all}.
    file_replication_skip_indexes: tuple[str, ...] = ()
    proxy_timeout: float = 30.0
    #: Seconds a request whose X-Devpi-Serial this node lacks waits for it; 0: none.
    serial_wait: float = 2.0
    replica_cert: str | None = None
    logger_cfg: str | None = None
    access_log: str = "-"
    mirror_url: str | None = None
    mirror_cache_expiry: int = 1800
    max_request_body_size: int = DEFAULT_MAX_BODY
    max_json_body_size: int = DEFAULT_MAX_JSON_BODY
    max_request_line: int = 8 * 1024
    max_header_size: int = 64 * 1024
    no_root_pypi: bool = False
    root_passwd: str | None = None
    root_passwd_hash: str | None = None
    no_metrics: bool = False
    #: Bytes of mirrored files kept; L{None}: no bound.
    mirror_cache_size: int | None = None
    #: Free disk space below which /+health fails: (bytes, fraction of the disk), one of them 0.
    min_free_space: tuple[int, float] = (1 << 30, 0.0)
    #: Where the state is: L{None} for the SQLite file in the server
    #: directory, else a PostgreSQL URL (see L{devpi_tx.storage.backends}).
    storage: str | None = None
    #: Where release files are: L{None} for +files in the server directory, or s3://bucket/prefix.
    files: str | None = None
    files_endpoint: str | None = None
    files_region: str | None = None
    files_redirect: bool = False

    @property
    def endpoints(self) -> tuple[str, ...]:
        """
        Twisted server endpoint strings to listen on.
        """
        if self.listen:
            return self.listen
        host = self.host.replace(":", "\\:")
        return (f"tcp:{self.port}:interface={host}",)

    @property
    def effective_role(self) -> str:
        """
        C{standalone}, C{primary} or C{replica}: C{auto} means replica if
        a primary URL is given, else standalone.
        """
        if self.role == "auto":
            return "replica" if self.primary_url else "standalone"
        return self.role

    @property
    def secret_path(self) -> str:
        return self.secretfile or os.path.join(self.serverdir, ".secret")


# option name -> (attribute, parser)
def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("no", "false", "0", "off", ""):
        return False
    raise ConfigError(f"{name}: expected yes/no/true/false, got {value!r}")


def _int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None


def _float(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return number


def _at_least(minimum: int):
    def parse(name: str, value: object) -> int:
        number = _int(name, value)
        if number < minimum:
            raise ConfigError(f"{name}: expected an integer of at least {minimum}, got {number}")
        return number

    return parse


def _positive_float(name: str, value: object) -> float:
    number = _float(name, value)
    if number <= 0:
        raise ConfigError(f"{name}: expected a number of seconds above 0, got {value!r}")
    return number


def _seconds(name: str, value: object) -> float:
    number = _float(name, value)
    if number < 0:
        raise ConfigError(f"{name}: expected a number of seconds, 0 or more, got {value!r}")
    return number


def _skip_indexes(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        items = [v.strip() for v in _str(name, value).split(",")]
    items = [item for item in items if item]
    for item in items:
        if "/" not in item:
            if item not in SKIP_INDEX_TYPES:
                raise ConfigError(
                    f"{name}: {item!r} is neither an index (user/index) nor 'mirror', 'stage' or 'all'"
                )
            continue
        user, _, index = item.partition("/")
        try:
            check_username(user)
            check_indexname(index)
        except InvalidInput:
            raise ConfigError(f"{name}: {item!r} is not an index name (user/index)") from None
    return tuple(items)


def _str(name: str, value: object) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return str(value)


def _role(name: str, value: object) -> str:
    role = _str(name, value).lower()
    if role == "master":
        role = "primary"
    if role not in ROLES:
        raise ConfigError(f"{name}: unknown role {value!r}")
    return role


def _listen(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{name}: expected endpoint strings, got {value!r}")


def _size(name: str, value: object) -> int:
    try:
        return parse_size(value)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def is_postgres_url(value: str) -> bool:
    """
    Whether a C{--storage} value names a PostgreSQL database.
    """
    return value.startswith(("postgresql://", "postgres://"))


def _storage(name: str, value: object) -> str:
    text = _str(name, value)
    if not is_postgres_url(text):
        raise ConfigError(
            f"{name}: expected a postgresql:// URL (leave it unset for the SQLite file in the server "
            f"directory), got {text.split('@')[-1]!r}"
        )
    return text


def _free_space(name: str, value: object) -> tuple[int, float]:
    try:
        return parse_free_space(value)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None


def _files(name: str, value: object) -> str:
    from .storage.s3 import parse_files_url

    try:
        parse_files_url(str(value))
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    return str(value)


OPTIONS: dict[str, tuple[str, object]] = {
    "serverdir": ("serverdir", _str),
    "host": ("host", _str),
    "port": ("port", _int),
    "listen": ("listen", _listen),
    "outside-url": ("outside_url", _str),
    "absolute-urls": ("absolute_urls", _bool),
    "secretfile": ("secretfile", _str),
    "restrict-modify": ("restrict_modify", _str),
    "request-timeout": ("request_timeout", _float),
    "offline-mode": ("offline_mode", _bool),
    "debug": ("debug", _bool),
    "role": ("role", _role),
    "primary-url": ("primary_url", _str),
    "master-url": ("primary_url", _str),
    "replica-max-retries": ("replica_max_retries", _at_least(0)),
    "replica-file-search-path": ("replica_file_search_path", _str),
    "hard-links": ("hard_links", _bool),
    "file-replication-threads": ("file_replication_threads", _at_least(1)),
    "file-replication-skip-indexes": ("file_replication_skip_indexes", _skip_indexes),
    "proxy-timeout": ("proxy_timeout", _positive_float),
    "serial-wait": ("serial_wait", _seconds),
    "replica-cert": ("replica_cert", _str),
    "logger-cfg": ("logger_cfg", _str),
    "access-log": ("access_log", _str),
    "mirror-url": ("mirror_url", _str),
    "mirror-cache-expiry": ("mirror_cache_expiry", _int),
    "max-request-body-size": ("max_request_body_size", _int),
    "max-request-line": ("max_request_line", _int),
    "max-header-size": ("max_header_size", _int),
    "no-root-pypi": ("no_root_pypi", _bool),
    "root-passwd": ("root_passwd", _str),
    "root-passwd-hash": ("root_passwd_hash", _str),
    "no-metrics": ("no_metrics", _bool),
    "mirror-cache-size": ("mirror_cache_size", _size),
    "min-free-space": ("min_free_space", _free_space),
    "storage": ("storage", _storage),
    "files": ("files", _files),
    "files-endpoint": ("files_endpoint", _str),
    "files-region": ("files_region", _str),
    "files-redirect": ("files_redirect", _bool),
}


def load_config_file(path: str) -> dict[str, object]:
    """
    Read a YAML config file (safe loader) whose options live under a
    top-level C{devpi-server:} (or C{devpi-tx:}) mapping.
    """
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"configfile {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"configfile {path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configfile {path}: expected a mapping")
    unknown_sections = set(data) - {"devpi-server", "devpi-tx"}
    if unknown_sections:
        raise ConfigError(
            f"configfile {path}: unknown section {sorted(unknown_sections)[0]!r} (expected 'devpi-server:')"
        )
    options: dict[str, object] = {}
    for section in ("devpi-server", "devpi-tx"):
        values = data.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"configfile {path}: {section!r} must be a mapping")
        for key, value in values.items():
            if key not in OPTIONS:
                raise ConfigError(f"configfile {path}: unknown option {key!r}")
            options[key] = value
    return options


#: The prefix of the environment variables that set options.
ENV_PREFIX = "DEVPISERVER_"


def env_name(option: str) -> str:
    """
    The environment variable of an option: C{DEVPISERVER_OUTSIDE_URL} for
    C{outside-url}.
    """
    return ENV_PREFIX + option.upper().replace("-", "_")


def _did_you_mean(var: str, choices: list[str]) -> str:
    # Compared without the prefix they all share.
    suffixes = {choice[len(ENV_PREFIX) :]: choice for choice in choices}
    close = difflib.get_close_matches(var[len(ENV_PREFIX) :], list(suffixes), n=1, cutoff=0.7)
    return f"did you mean {suffixes[close[0]]}?" if close else ""


def options_from_environ(environ: Mapping[str, str]) -> dict[str, object]:
    """
    The options set by C{DEVPISERVER_*} variables; an empty one counts as
    not set, as devpi-server reads them.

    @raise ConfigError: for a variable that names no option (a misspelt
        one would otherwise be ignored without a word).
    """
    names = {env_name(name): name for name in OPTIONS}
    options: dict[str, object] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        if var not in names:
            hint = _did_you_mean(var, sorted(names)) or "unset it (twistd devpi --help lists the options)"
            raise ConfigError(f"environment variable {var} names no option of devpi-tx; {hint}")
        if environ[var]:
            options[names[var]] = environ[var]
    return options


def build_config(
    command_line: Mapping[str, object],
    configfile: str | None = None,
    environ: Mapping[str, str] | None = None,
    allowed: frozenset[str] | None = None,
) -> ServerConfig:
    """
    Merge the option sources into a L{ServerConfig}.  A value that does not
    parse is reported with its source: the environment variable, the
    config file, or the option.

    @param command_line: options given on the command line, by option name;
        L{None} values count as not given.
    @param allowed: option names this command accepts (others in a config
        file or the environment are ignored, as devpi ignores server
        options in devpi-init).
    """
    environ = os.environ if environ is None else environ
    # option name -> (value, what to call it in an error)
    merged: dict[str, tuple[object, str]] = {}
    if configfile:
        for name, value in load_config_file(configfile).items():
            merged[name] = (value, f"configfile {configfile}: option {name}")
    for name, value in options_from_environ(environ).items():
        merged[name] = (value, f"environment variable {env_name(name)}")
    for name, value in command_line.items():
        if value is not None:
            merged[name] = (value, f"option {name}")
    kwargs: dict[str, object] = {}
    for name, (value, label) in merged.items():
        if allowed is not None and name not in allowed:
            continue
        attribute, parse = OPTIONS[name]
        kwargs[attribute] = parse(label, value)  # type: ignore[operator]
    serverdir = kwargs.pop("serverdir", None) or DEFAULT_SERVERDIR
    kwargs["serverdir"] = os.path.abspath(os.path.expanduser(str(serverdir)))
    config = ServerConfig(**kwargs)  # type: ignore[arg-type]
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"option port: {config.port} is not a port number (0 to 65535)")
    _check_host(config.host)
    config = _check_replication(config)
    if config.outside_url and not config.outside_url.startswith(("http://", "https://")):
        raise ConfigError(f"option outside-url: {config.outside_url!r} is not a URL")
    if config.mirror_url and not config.mirror_url.startswith(("http://", "https://")):
        raise ConfigError(f"option mirror-url: {config.mirror_url!r} is not a URL")
    _check_files(config)
    return config


def _check_files(config: ServerConfig) -> None:
    """
    Refuse what needs release files on this disk when they are not.
    """
    if config.files is None:
        for option, value in [
            ("files-endpoint", config.files_endpoint),
            ("files-region", config.files_region),
            ("files-redirect", config.files_redirect),
        ]:
            if value:
                raise ConfigError(f"option {option}: only for --files s3://bucket/prefix")
        return
    if config.hard_links:
        raise ConfigError("option hard-links: needs files on this disk, not --files " + config.files)
    if config.mirror_cache_size is not None:
        raise ConfigError("option mirror-cache-size: needs files on this disk, not --files " + config.files)
    if config.files_endpoint is not None and not _is_http_url(config.files_endpoint):
        raise ConfigError(f"option files-endpoint: {config.files_endpoint!r} is not an http or https URL")


def _check_host(host: str) -> None:
    """
    Refuse a C{--host} that looks like an IP address but is none (such as
    C{999.1.1.1}), which would otherwise be looked up as a host name when
    the server binds; names are resolved by L{devpi_tx.startup}.
    """
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not host or re.fullmatch(r"[0-9.]+", host) or ":" in host or "/" in host or " " in host:
        raise ConfigError(
            f"option host: {host!r} is not an IP address or host name "
            "(give one of this machine's addresses, 127.0.0.1, or 0.0.0.0 for all)"
        )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_replication(config: ServerConfig) -> ServerConfig:
    """
    Resolve C{--role auto} and check the replication options against the
    role; return the config with its role resolved.
    """
    role = config.effective_role
    if config.primary_url is not None:
        if not _is_http_url(config.primary_url):
            raise ConfigError(f"option primary-url: {config.primary_url!r} is not an http or https URL")
        if role != "replica":
            raise ConfigError(f"option primary-url: a {role} has no primary (give it to a replica only)")
    elif role == "replica":
        raise ConfigError("option primary-url: required for role replica (the URL of the primary)")
    paths = {}
    for option, attribute, exists, kind in [
        ("replica-file-search-path", "replica_file_search_path", os.path.isdir, "a directory"),
        ("replica-cert", "replica_cert", os.path.isfile, "a file"),
    ]:
        path = getattr(config, attribute)
        if path is not None:
            paths[attribute] = os.path.abspath(os.path.expanduser(path))
            if not exists(paths[attribute]):
                raise ConfigError(f"option {option}: {path!r} is not {kind}")
    return attrs.evolve(config, role=role, **paths)

"""
The server directory: initialising it, and reading what it holds besides
the state (node identity, secret).

Layout::

    .sqlite      the serial-numbered state (see storage.sqlite), unless
                 --storage names a PostgreSQL database (storage.postgresql)
    .nodeinfo    JSON: this node's uuid and role
    .secret      the secret that signs login tokens (mode 0600), unless
                 --secretfile points elsewhere
    .lock        locked (flock) by the process using the directory, which
                 wrote its pid in it; see L{lock_serverdir}
    twistd.pid   twistd's pid file, unless --pidfile says otherwise (and
                 twistd.log, a daemon's log, unless --logfile does)
    +files/      release files by sha256 (see storage.files)
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import stat
import uuid

from argon2 import PasswordHasher

from . import __version__
from .auth.passwords import default_hasher
from .config import ConfigError, ServerConfig
from .customizers import default_registry
from .interfaces import IStorage
from .logs import logger
from .model import indexes, users
from .pipconfig import default_mirror_url, pip_default_index
from .storage.backends import open_storage_for
from .storage.filestore import open_file_store

log = logger("devpi_tx.init")


class AlreadyInitialized(Exception):
    pass


#: The file in a server directory that its process holds locked.
LOCK_NAME = ".lock"


class ServerDirBusy(Exception):
    """
    Another process holds the server directory's lock; the message names
    its pid.
    """


class ServerDirLock:
    """
    An exclusive C{flock} on a server directory's L{LOCK_NAME}, which holds
    the pid of its process.  The kernel releases it when the process exits,
    however it exits; a fork shares it (a daemon keeps what its parent took).
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def write_pid(self, pid: int | None = None) -> None:
        """
        Record C{pid} (this process's by default: again after twistd made
        a daemon of it) for whoever is refused the lock.
        """
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid() if pid is None else pid}\n".encode(), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def lock_serverdir(serverdir: str) -> ServerDirLock:
    """
    Take the lock on an existing server directory, for as long as the
    process lives (or until L{ServerDirLock.release}).

    @raise ServerDirBusy: another process holds it.
    @raise OSError: the lock file cannot be opened (a directory one may
        not write in).
    """
    path = os.path.join(serverdir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "its pid not written yet"
        raise ServerDirBusy(
            f"server directory {serverdir} is in use by another devpi-tx process ({who}); "
            "stop it first, or give another --serverdir"
        ) from None
    lock = ServerDirLock(path, fd)
    lock.write_pid()
    return lock


def check_role(config: ServerConfig, nodeinfo: dict) -> None:
    """
    Refuse to start a replica on another kind of server's state, and any
    other role on a replica's.

    @raise ConfigError: the roles disagree.
    """
    role, kind = config.effective_role, nodeinfo.get("role", "standalone")
    if kind == "replica" and role != "replica":
        raise ConfigError(
            f"option role: {config.serverdir} holds a replica's state; start it with --role replica "
            "and --primary-url (a replica's state cannot be written to)"
        )
    if role == "replica" and kind != "replica":
        raise ConfigError(
            f"option role: {config.serverdir} holds a {kind} server's state, not a replica's; "
            "give a replica an empty --serverdir"
        )


def check_replica_secret(config: ServerConfig) -> None:
    """
    A replica signs and checks tokens with its primary's secret, which it
    cannot make itself.

    @raise ConfigError: the secret file is missing.
    """
    if config.effective_role == "replica" and not os.path.exists(config.secret_path):
        raise ConfigError(
            f"option secretfile: a replica needs its primary's secret, and {config.secret_path} does not "
            "exist; copy the primary's secret file here, or give it with --secretfile"
        )


def is_initialized(serverdir: str) -> bool:
    return os.path.exists(os.path.join(serverdir, ".nodeinfo"))


#: The layout of the state a server directory holds: 2 since file links
#: have keys of their own (L{releases.migrate_links} moves a layout-1 state).
LAYOUT = 2


def write_nodeinfo(serverdir: str, nodeinfo: dict) -> None:
    tmp = os.path.join(serverdir, ".nodeinfo.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(nodeinfo, f)
    os.replace(tmp, os.path.join(serverdir, ".nodeinfo"))


def read_nodeinfo(serverdir: str) -> dict:
    with open(os.path.join(serverdir, ".nodeinfo"), encoding="utf-8") as f:
        return json.load(f)


def ensure_secret(path: str) -> bytes:
    """
    Read the token-signing secret, creating it (mode 0600) if missing; warn
    if others may read it.
    """
    if not os.path.exists(path):
        secret = write_secret(path)
        log.info("created secret file {path}", path=path)
        return secret
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warn(
            "secret file {path} is readable by others (mode {mode:o}); chmod 600 it",
            path=path,
            mode=mode,
        )
    return read_secret(path)


def write_secret(path: str) -> bytes:
    """
    Write a new secret (32 random bytes, base64) to C{path}, mode 0600,
    replacing any there whole (a temporary file renamed into place).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    secret = base64.b64encode(os.urandom(32))
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    os.replace(tmp, path)
    return secret


def read_secret(path: str) -> bytes:
    """
    The secret in an existing secret file.

    @raise ConfigError: it is too short to be one.
    @raise OSError: it cannot be read.
    """
    with open(path, "rb") as f:
        secret = f.read().strip()
    if len(secret) < 32:
        raise ConfigError(
            f"option secretfile: {path} holds fewer than 32 bytes; "
            "give a file of at least 32 random bytes (or remove it to have one made)"
        )
    return secret


def root_pypi_config(mirror_url: str) -> dict:
    config = {
        "type": "mirror",
        "volatile": False,
        "title": "PyPI",
        "mirror_url": mirror_url,
    }
    builtin = pip_default_index()
    if builtin and mirror_url.rstrip("/") == builtin.rstrip("/"):
        base = builtin.rstrip("/").rsplit("/", 1)[0]
        config["mirror_web_url_fmt"] = base + "/project/{name}/"
    return config


def initialize(config: ServerConfig, hasher: PasswordHasher | None = None) -> list[str]:
    """
    Create a new server directory: the state with user root and (unless
    C{no_root_pypi}) the root/pypi mirror, the node info and the secret.

    @return: what was done, one line each, for logging.
    @raise AlreadyInitialized: if the directory holds a server already.
    """
    serverdir = config.serverdir
    if is_initialized(serverdir):
        raise AlreadyInitialized(f"{serverdir} is already initialised")
    if config.effective_role == "replica":
        return _initialize_replica(config)
    os.makedirs(serverdir, exist_ok=True)
    done = [f"initialising server directory {serverdir}"]
    hasher = hasher or default_hasher()
    if config.root_passwd_hash:
        pwhash = config.root_passwd_hash
    else:
        if not config.root_passwd:
            done.append("WARNING: user root has an empty password; set one with devpi passwd")
        pwhash = hasher.hash(config.root_passwd or "")
    if config.files is not None:
        # The bucket checked before anything is written; the store's spool
        # directory marks the server directory as one whose files are there.
        open_file_store(config)
        done.append(f"release files in {config.files}")
    storage = open_storage_for(config, create=True)
    try:
        if storage.serial >= 0:
            # An earlier init committed the state but died before writing
            # .nodeinfo; finish it rather than refuse.
            done.append("state already present; completing initialisation")
        else:
            _initial_state(storage, config, pwhash, done)
    finally:
        storage.close()
    ensure_secret(config.secret_path)
    nodeinfo = {
        "uuid": uuid.uuid4().hex,
        "role": config.effective_role,
        "version": __version__,
        "layout": LAYOUT,
    }
    write_nodeinfo(serverdir, nodeinfo)
    done.append(f"node uuid {nodeinfo['uuid']}")
    return done


def _initialize_replica(config: ServerConfig) -> list[str]:
    """
    A replica's server directory: an empty state (every entry, serial 0
    on, comes from the primary) and the node info.  The secret must be the
    primary's: the replica's tokens are signed with it and the primary's
    login tokens checked with it.
    """
    check_replica_secret(config)
    os.makedirs(config.serverdir, exist_ok=True)
    open_storage_for(config, create=True).close()
    nodeinfo = {"uuid": uuid.uuid4().hex, "role": "replica", "version": __version__, "layout": LAYOUT}
    write_nodeinfo(config.serverdir, nodeinfo)
    return [
        f"initialising replica server directory {config.serverdir} (state from {config.primary_url})",
        f"node uuid {nodeinfo['uuid']}",
    ]


def _initial_state(storage: IStorage, config: ServerConfig, pwhash: str, done: list[str]) -> None:
    with storage.transaction() as tx:
        if users.get_user(tx, "root") is not None:
            # Another node initialised the shared state since this one
            # looked (two nodes starting together on an empty database);
            # the transaction reads the latest state.
            done.append("state already present; completing initialisation")
            return
        users.create_user(tx, "root", {}, pwhash)
        done.append("created user root")
        if not config.no_root_pypi:
            mirror_url = config.mirror_url or default_mirror_url()
            if not mirror_url:
                raise ConfigError(
                    "option mirror-url: no upstream index found in pip's configuration; "
                    "give one with --mirror-url or use --no-root-pypi"
                )
            indexes.create_index(tx, default_registry(), "root", "pypi", root_pypi_config(mirror_url))
            done.append(f"created index root/pypi mirroring {mirror_url}")

"""
Which database holds the state: C{--storage} unset means the SQLite file
in the server directory; a C{postgresql://} (or C{postgres://}) URL means
that PostgreSQL database, which several nodes may share.  PostgreSQL's
driver is imported only when it is asked for (it is an extra).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from ..config import ConfigError, ServerConfig, is_postgres_url
from ..interfaces import ICoordinator, IStorage
from .errors import SchemaError, StorageUnavailable, first_line
from .sqlite import open_storage


def open_storage_for(
    config: ServerConfig,
    clock: IReactorTime | None = None,
    *,
    create: bool = False,
    run_in_thread: Callable[..., Deferred] | None = None,
    reactor=None,
) -> IStorage:
    """
    Open the state the config names.

    @param clock: batches SQLite's non-durable commits (PostgreSQL needs
        none: such a commit just does not wait for the WAL flush).
    @param create: create PostgreSQL's schema if missing (initialising);
        SQLite's file is always created.
    @param run_in_thread: where PostgreSQL's C{write()} waits for the
        database; without it, a thread of the storage's own when a
        C{reactor} is given (a server), else the calling thread
        (command-line tools).  SQLite needs neither.
    @raise StorageUnavailable: the database cannot be reached.
    @raise SchemaError: it holds no state (and C{create} is false), or a
        newer devpi-tx's.
    """
    if config.storage and is_postgres_url(config.storage):
        try:
            from .postgresql import PostgresStorage
        except ImportError as e:
            raise ConfigError(f"option storage: {needs_extra(e)}") from None
        return PostgresStorage(config.storage, create=create, run_in_thread=run_in_thread, reactor=reactor)
    return open_storage(config.serverdir, clock=clock)


def storage_service(storage: IStorage, reactor) -> IService | None:
    """
    What keeps a node's view of a shared state current (PostgreSQL's
    watcher of other nodes' commits), as a service for the server's tree;
    L{None} for a state only this process writes.
    """
    from .sqlite import SQLiteStorage

    if isinstance(storage, SQLiteStorage):
        return None
    from .pgwatch import CommitWatcher

    return CommitWatcher(storage, reactor)


def coordinator_for(config: ServerConfig, reactor, run_in_thread, holder: str) -> ICoordinator:
    """
    How this node agrees with the others sharing its state on fetches and
    background jobs: through the PostgreSQL database they share, or, for
    a state only this process writes, with nobody.
    """
    if config.storage and is_postgres_url(config.storage):
        from .pgcoordination import PostgresCoordinator

        return PostgresCoordinator(config.storage, reactor, run_in_thread, holder=holder)
    from .coordination import LocalCoordinator

    return LocalCoordinator(holder)


def needs_extra(error: ImportError) -> str:
    """
    What to say when a scale-out driver is missing.
    """
    return f"needs the scale-out extra: pip install 'devpi-tx[scale-out]' ({error})"


def check_storage(config: ServerConfig) -> None:
    """
    The state the config names can be opened as it is (start-up checks of
    an initialised server directory): an error is one line naming the
    option.
    """
    if not (config.storage and is_postgres_url(config.storage)):
        return
    try:
        import psycopg
    except ImportError as e:
        raise ConfigError(f"option storage: {needs_extra(e)}") from None
    try:
        open_storage_for(config).close()
    except (StorageUnavailable, SchemaError) as e:
        raise ConfigError(f"option storage: {e}") from None
    except psycopg.ProgrammingError as e:
        # A DSN libpq cannot parse (an unknown parameter, say); its
        # message names the parameter, never the password.
        raise ConfigError(f"option storage: not a valid PostgreSQL URL: {first_line(e)}") from None

"""
The PostgreSQL state's tables and connection settings: what C{devpi-tx
init --storage} creates, what a server checks before it starts, and how a
DSN is shown (never with its password).
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import SchemaError, StorageUnavailable, first_line

SCHEMA_VERSION = 1

_SCHEMA = [
    "SELECT pg_advisory_xact_lock(7306413511)",  # two nodes' inits at once
    "CREATE TABLE IF NOT EXISTS devpi_meta (name text PRIMARY KEY, value text NOT NULL)",
    # Keys in code point order ("C"), as Python sorts them and as a range
    # scan on a prefix needs.
    'CREATE TABLE IF NOT EXISTS devpi_kv (key text COLLATE "C" PRIMARY KEY, value text NOT NULL, '
    "serial bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS devpi_changelog (serial bigint PRIMARY KEY, "
    "timestamp double precision NOT NULL, changes text NOT NULL)",
    # One row: the last serial, locked by every write transaction.
    "CREATE TABLE IF NOT EXISTS devpi_serial (serial bigint NOT NULL)",
    "INSERT INTO devpi_serial (serial) SELECT -1 WHERE NOT EXISTS (SELECT 1 FROM devpi_serial)",
]

#: Connection settings that make a dead database show quickly, unless the
#: DSN sets them.
_CONNECT_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
    "application_name": "devpi-tx",
    # A database that stops answering without closing the connection (a
    # paused host, stuck storage) fails a statement within seconds, as
    # one that went away does, rather than hold the caller for good.
    "options": "-c statement_timeout=15000 -c idle_in_transaction_session_timeout=60000",
}


def conninfo(dsn: str, connect_timeout: int) -> str:
    """
    The libpq connection string for C{dsn}, with a short connect timeout
    and TCP keepalives unless it gives its own.  A password not in it
    comes from libpq's usual sources (PGPASSWORD, PGPASSFILE, ~/.pgpass).
    """
    params = conninfo_to_dict(dsn)
    params.setdefault("connect_timeout", str(connect_timeout))
    for name, value in _CONNECT_DEFAULTS.items():
        params.setdefault(name, value)
    return make_conninfo("", **params)


def connect(conninfo: str, dsn: str, lock_timeout: float) -> psycopg.Connection:
    """
    A new connection in autocommit mode (transactions are begun
    explicitly, so that a begin is one round trip), whose waits for a lock
    end after C{lock_timeout} seconds.

    @param dsn: the DSN as shown (L{safe_dsn}).
    @raise StorageUnavailable: the database cannot be reached.
    """
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
    except psycopg.Error as e:
        raise StorageUnavailable(f"the state database {dsn} is unavailable: {first_line(e)}") from e
    return conn


def safe_dsn(dsn: str) -> str:
    """
    The DSN without its password, for logs and messages.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable DSN)"
    user = params.get("user", "")
    port = params.get("port", "")
    where = f"{user + '@' if user else ''}{params.get('host', '')}{':' + port if port else ''}"
    return f"postgresql://{where}/{params.get('dbname', '')}"


def check_schema(conn: psycopg.Connection, dsn: str, create: bool) -> None:
    """
    Create the tables if asked to (idempotent, and safe for two nodes at
    once); then refuse a database without them or with a newer version.

    @param dsn: the DSN as shown (L{safe_dsn}).
    @raise SchemaError: no schema, or a newer one.
    """
    if create:
        with conn.transaction():
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO devpi_meta (name, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (name) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
    try:
        row = conn.execute("SELECT value FROM devpi_meta WHERE name='schema_version'").fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    if row is None:
        raise SchemaError(f"{dsn} holds no devpi-tx state; create it with: devpi-tx init --storage {dsn}")
    if int(row[0]) > SCHEMA_VERSION:
        raise SchemaError(
            f"{dsn} has schema version {row[0]}, this devpi-tx knows only up to {SCHEMA_VERSION}"
        )

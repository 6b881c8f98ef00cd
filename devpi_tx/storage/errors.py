"""
The errors every L{devpi_tx.interfaces.IStorage} provider raises alike, so
that callers (the web layer, the replica's sync, the start-up checks)
handle them without knowing which database holds the state.
"""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """
    An error in one line, for a message or a log: the first line of its
    text, or its type's name when it has none.
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class SchemaError(Exception):
    """
    The database was written by an incompatible version of devpi-tx, or
    holds no devpi-tx state at all.
    """


class SerialMismatch(ValueError):
    """
    A replicated entry does not follow the state's last serial (a gap, or
    one already applied).
    """


class StorageUnavailable(Exception):
    """
    The database holding the state cannot be reached right now (down,
    restarting, unreachable, or its write lock held too long).  Nothing was
    committed by the operation that raised it, unless the connection broke
    during the commit itself; the storage reconnects on its next use.  The
    web layer answers 503 with the message, which is one line and never
    holds a password.
    """


class FileStoreUnavailable(StorageUnavailable):
    """
    The store holding the release files (object storage) cannot be
    reached, or refuses these credentials, right now; answered as the
    state's unavailability is (503, one line).
    """

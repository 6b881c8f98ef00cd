"""
The contracts at devpi-tx's seams.

Everything the server knows lives in an L{IStorage}: a transactional
key-value state in which every committed write transaction becomes one
changelog entry with the next serial number.  Release files live in an
L{IFileStore}, addressed by their sha256.  Index types are
L{IStageCustomizer}s.  Second backends and plugins fill these seams; each
provider is checked with C{verifyObject} in the tests.
"""

from __future__ import annotations

from typing import IO

from zope.interface import Attribute, Interface


class ITransaction(Interface):
    """
    One write transaction over an L{IStorage}.

    Reads see the committed state plus this transaction's own writes.
    Nothing is visible to others until the transaction commits; a
    transaction that is abandoned (or whose block raises) leaves no trace.
    """

    def get(key: str) -> object:
        """
        Return the JSON-compatible value stored under C{key}, or L{None}.
        """

    def set(key: str, value: object) -> None:
        """
        Store a JSON-compatible C{value} under C{key}.
        """

    def delete(key: str) -> None:
        """
        Remove C{key}; removing a missing key is not an error.
        """

    def keys(prefix: str) -> list[str]:
        """
        Return the sorted keys starting with C{prefix}, as seen by this
        transaction.
        """


class IStorage(Interface):
    """
    The serial-numbered state of a server.
    """

    serial = Attribute("The serial of the last committed transaction; -1 for a new state.")

    def get(key: str) -> object:
        """
        Return the committed value of C{key}, or L{None}.
        """

    def keys(prefix: str) -> list[str]:
        """
        Return the sorted committed keys starting with C{prefix}.
        """

    def transaction(durable: bool = True) -> ITransaction:
        """
        Return a context manager yielding an L{ITransaction}.  Leaving the
        block normally commits (one changelog entry, the next serial, if
        anything changed); leaving it with an exception rolls back.

        A durable commit survives a crash of the machine.  With C{durable}
        false, for what can be fetched again (mirrored pages), a commit may
        be written a little later, together with others, and lost if the
        process or the machine dies first; it is visible to readers at
        once either way, and the next durable commit writes it first.

        Waits for the database on the calling thread: for command-line
        tools, initialisation, start-up and tests.  Code on a server's
        reactor (request handlers, mirror fetches) uses L{write}.
        """

    def write(durable: bool = True):
        """
        Return an asynchronous context manager yielding an L{ITransaction}
        (C{async with storage.write() as tx:}), for code on the reactor:
        the body is synchronous code, as with L{transaction}, with the same
        commit, rollback and C{durable}; the C{async with} completes once
        the commit is acknowledged (durable, with C{durable}).  A provider
        whose database is shared waits for its lock and commits without
        blocking the reactor (other requests are served meanwhile); one
        whose commits are local and short may commit as L{transaction}
        does.  One node's writes run one after another.

        @raise devpi_tx.storage.errors.StorageUnavailable: from the C{async
            with}, when the database cannot be reached.
        """

    def changelog_entry(serial: int) -> dict | None:
        """
        Return the entry committed with C{serial}: a mapping with
        C{serial}, C{timestamp} and C{changes} (key to new value, L{None}
        for a deletion), or L{None} if there is no such serial.
        """

    def changelog_frames(start: int, max_bytes: int) -> list[tuple[int, float, str]]:
        """
        Return the entries from serial C{start} on, in serial order, as
        stored: (serial, timestamp, the JSON text of the changes), the text
        L{changelog_entry} decodes.  Stop after the entry that brings the
        texts' length to C{max_bytes} or more (so at least one entry if
        there is any from C{start}); an empty list if there is none.
        Committed non-durable transactions not yet written are included.
        """

    def last_commit_timestamp() -> float | None:
        """
        Return the time of the last commit, or L{None} for a new state.
        """

    def import_entry(serial: int, timestamp: float, changes: dict, durable: bool = True) -> None:
        """
        Commit an entry replicated from a primary, as the primary committed
        it: with exactly C{serial} (which must follow L{serial}: anything
        else raises L{ValueError} and changes nothing) and C{timestamp}, so
        that a replica's changelog is the primary's.  C{changes} maps keys
        to new values, L{None} for a deletion.  Reported to listeners like
        any commit.

        With C{durable} false the commit is not synced to disk by itself
        (the next durable one syncs it): for all but the last of entries
        that arrived together, which a power loss may take back to an
        earlier serial, never to a partial entry.
        """

    def subscribe(listener) -> None:
        """
        Call C{listener(serial, keys)} after each commit with the keys it
        changed, so that caches derived from the state can drop what is
        stale.
        """

    def close() -> None:
        """
        Release the underlying database.
        """


class IFileWriter(Interface):
    """
    A file being written into an L{IFileStore}, hashed as it is written.
    """

    size = Attribute("Bytes written so far.")

    def write(data: bytes) -> None:
        """
        Append C{data}.
        """

    def hexdigest() -> str:
        """
        The sha256 of what was written so far.
        """

    def in_memory() -> bytes | None:
        """
        A copy of everything written, if all of it is still held in memory
        (see L{IFileStore.writer}'s C{spool}), else L{None}.
        """

    def commit(durable: bool = True) -> str:
        """
        Make the file durable under its content address and return its
        sha256 hex digest.  A file with the same content that is already
        stored is kept as it is.

        With C{durable} false the file is stored but not synced to disk: for
        files derived from others (a wheel's METADATA), which a power loss
        may leave missing or short and which are then made again.
        """

    def abort() -> None:
        """
        Discard everything written; nothing remains on disk.
        """


class IFileStore(Interface):
    """
    Content-addressed storage of release files, doc zips and tox results.
    """

    def writer(spool: int = 0) -> IFileWriter:
        """
        Start writing a new file.  With C{spool}, up to that many bytes may
        be kept in memory, so that a small file reaches the disk only when
        it is committed.
        """

    def exists(sha256: str) -> bool:
        """
        Whether a complete file with this digest is stored.
        """

    def open(sha256: str) -> IO[bytes]:
        """
        The stored file, open for reading: a blocking, seekable binary file
        object, for code in worker threads (zipfile seeks to a wheel's end).
        A remote store may read lazily, over the network.

        @raise FileNotFoundError: no file with this digest is stored.
        """

    def size(sha256: str) -> int:
        """
        The length of a stored file, in bytes.  Blocks.

        @raise FileNotFoundError: no file with this digest is stored.
        """

    def remove(sha256: str) -> None:
        """
        Delete the file with this digest, if present.
        """


class ILocalFileStore(IFileStore):
    """
    A file store on this host's disk.  Only what cannot work without a
    local path asks for it (by checking this interface): serving with
    C{sendfile(2)}, hard links (C{--replica-file-search-path}, dumps),
    fsck and the mirror cache's eviction, which rename files.
    """

    root = Attribute("The store's directory.")
    tmpdir = Attribute("A directory for temporary files on the store's filesystem.")

    def local_path(sha256: str) -> str:
        """
        Where a stored file is (or would be) on disk.
        """


class IRemoteFileStore(IFileStore):
    """
    A file store elsewhere (object storage), whose files a client may fetch
    by a URL of limited validity: the web layer streams from it, or
    redirects the client to it.
    """

    def download_url(sha256: str, expires: int, method: str = "GET", content_type: str | None = None) -> str:
        """
        A URL that answers a C{method} (GET, with a C{Range} if sent, or
        HEAD) for the stored file for C{expires} seconds, with
        C{content_type} if given (a client sent there by a redirect sees
        what devpi would send).  Computed locally, no request made, so it
        may be called on the reactor.
        """


class IStageCustomizer(Interface):
    """
    An index type: its configuration (keys, defaults, parsing, whole-config
    validation), what the index accepts, who may do what on it, which
    projects, versions and links it shows, and what happens after it is
    created, modified or uploaded to.

    L{devpi_tx.customizers.base.BaseStageCustomizer} gives every method a
    default (today's behaviour of a private index); a plugin's type
    overrides what it changes.  Methods taking C{config} get the index's
    whole configuration, as stored.
    """

    type_name = Attribute("The value of the index's C{type} key.")
    is_mirror = Attribute(
        "Whether the index's projects come from an upstream simple index (the mirror machinery "
        "of L{devpi_tx.mirror}); false for indexes whose projects live in the state."
    )
    readonly = Attribute("Whether the index refuses uploads, pushes into it and tox results.")
    filters = Attribute(
        "Whether C{projects_filter}, C{versions_filter} or C{links_filter} may drop anything: "
        "when false the server does not call them (what an index shows is listed unfiltered)."
    )
    list_keys = Attribute("The keys whose values are lists, for C{key+=value} and C{key-=value}.")

    def possible_keys() -> frozenset[str]:
        """
        The configuration keys an index of this type accepts, besides
        C{type}.
        """

    def defaults() -> dict:
        """
        The configuration an index of this type starts with.
        """

    def normalize(key: str, value: object) -> object:
        """
        Parse a value given for C{key}; raise
        L{devpi_tx.model.errors.InvalidInput} for a bad value.
        """

    def ignored_keys() -> frozenset[str]:
        """
        Keys that are accepted but silently dropped (for old exports).
        """

    def validate_config(oldconfig: dict | None, newconfig: dict) -> None:
        """
        Check a whole configuration after its values were parsed, before it
        is stored: C{oldconfig} is L{None} when the index is being created.
        Raise L{devpi_tx.model.errors.InvalidInput} (a 400, its message
        shown to the user) to refuse it.
        """

    def principals_for_upload(config: dict) -> frozenset[str]:
        """
        The principals that may upload release files and documentation,
        and push into the index.
        """

    def principals_for_toxresult_upload(config: dict) -> frozenset[str]:
        """
        The principals that may upload tox results.
        """

    def principals_for_delete(config: dict) -> frozenset[str]:
        """
        The principals that may delete and yank releases and files, besides
        the index's owner and the server's administrators.
        """

    def principals_for_modify(config: dict) -> frozenset[str]:
        """
        The principals that may modify the index's configuration, besides
        its owner and the server's administrators.
        """

    def principals_for_read(config: dict) -> frozenset[str]:
        """
        The principals that may read the index (C{:ANONYMOUS:}: everyone).
        """

    def projects_filter(config: dict, names: list[str]) -> list[bool] | None:
        """
        Which of the project C{names} the index lists: one flag per name
        (true: kept), or L{None} to keep them all without a flag each (the
        cheap answer of types that filter nothing).  The server asks with
        no names first: L{None} then means this index's list is not
        filtered at all (an upstream's list is then served from its file,
        not read whole).  Called in a worker thread.
        """

    def versions_filter(config: dict, project: str, versions: list[str]) -> list[bool] | None:
        """
        Which C{versions} of C{project} (normalised name) the index shows:
        one flag per version, or L{None} to keep them all.  The links of a
        dropped version are dropped too.
        """

    def links_filter(config: dict, project: str, links: list[dict]) -> list[bool] | None:
        """
        Which links of C{project}'s simple page the index shows: one flag
        per link (a mapping with C{basename}, C{url} or C{relpath},
        C{hashes}, and C{requires_python} and upload time when known), or
        L{None} to keep them all.
        """

    def on_created(stagename: str, config: dict) -> None:
        """
        Called after an index of this type was created (its transaction
        committed).
        """

    def on_modified(stagename: str, oldconfig: dict, newconfig: dict) -> None:
        """
        Called after the index's configuration changed (committed).
        """

    def on_upload(stagename: str, project: str, version: str, link: dict) -> None:
        """
        Called after a file was uploaded to the index (committed).
        """


class IAuthenticator(Interface):
    """
    Checks a user's credentials against a source outside the server (a
    directory such as LDAP), for C{devpi login} (C{POST /+login}) and for
    HTTP Basic and C{X-Devpi-Auth} passwords (pip, twine).  Found through
    the entry points of group C{devpi_tx.authenticators}
    (docs/plugins.md).
    """

    name = Attribute("A short name for the logs.")

    def authenticate(username: str, password: str):
        """
        Check C{password} for C{username} without blocking the reactor
        (run blocking I/O in a thread, or use an asynchronous client).

        @return: a Deferred (or a coroutine) firing with an
            L{devpi_tx.auth.external.Verdict}: C{Verdict.accept(groups)}
            (the user is who they say; C{groups} usable in ACLs as
            C{:group:NAME}), C{Verdict.reject()} (the user is known to
            this source and the password is wrong: the local password is
            not tried), or C{Verdict.unknown()} (not a user of this source:
            the next authenticator, then the local users, decide).  A
            failure counts as C{unknown}, logged.
        """


class IEventListener(Interface):
    """
    Told after an upload, a removal or a change of an index, once its
    transaction committed (for webhooks, say).  Found through the entry
    points of group C{devpi_tx.events} (docs/plugins.md).  Each call runs
    on the reactor after the request's answer was sent; it may return a
    Deferred (or a coroutine) and take its time.  A failure is logged and
    never reaches a request.
    """

    name = Attribute("A short name for the logs.")

    def on_upload(event) -> object:
        """
        A file was uploaded (L{devpi_tx.events.UploadEvent}).
        """

    def on_remove(event) -> object:
        """
        A project, a version or a file was removed, or a version yanked
        (L{devpi_tx.events.RemoveEvent}).
        """

    def on_index_change(event) -> object:
        """
        An index was created, modified or deleted
        (L{devpi_tx.events.IndexChangeEvent}).
        """


class ICoordinator(Interface):
    """
    What the web nodes sharing one state agree on among themselves: short
    leases, so that one node fetches a mirrored page or file that several
    want at once, and the leadership of background jobs that must run on
    one node at a time (the eviction of mirrored files).  A single node's
    coordinator grants everything at once (L{LocalCoordinator}).
    """

    holder = Attribute("This node's identity in leases and logs: its uuid and its pid.")
    shared = Attribute(
        "Whether other nodes may share the state: False for a single node, whose callers may then"
        " skip the coordination altogether."
    )

    def setup():
        """
        Create what the coordinator keeps (idempotently); a Deferred.
        """

    def acquire(name: str, ttl: float):
        """
        A Deferred firing with a lease on C{name} for C{ttl} seconds, kept
        renewed while held, or with L{None} when another live node holds it
        (a lease that expired, its holder dead, is taken over).
        """

    def release(lease) -> object:
        """
        Give the lease up (a Deferred); releasing a lost lease is no error.
        """

    def lead(name: str):
        """
        A Deferred firing with whether this node leads the job C{name}:
        it becomes the leader when no other node is, and stays it while its
        claim lives.  Asked again periodically (L{LeaderOnly}), it also
        checks that the claim is still alive.
        """

    def resign(name: str) -> object:
        """
        Stop leading C{name} (a Deferred); another node may take it over.
        """

    def close() -> object:
        """
        Release every lease and leadership and close the connections (a Deferred).
        """

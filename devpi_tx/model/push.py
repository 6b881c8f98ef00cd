"""
Push requests, and pushing a release from one index of this server to
another.

A push request (L{parse_push_request}) names the release and either an
index of this server (C{targetindex}) or an external repository
(C{posturl}), which must not be this server itself unless credentials
are given (L{check_not_self}).

The files are not copied: the target's links point at the same blobs
(stored by content), whose reference counts go up.  Each file keeps its
history, with a C{push} entry added (an C{overwrite} entry is not carried
over, as devpi does); tox results follow the files they were run against.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import attrs
from packaging.utils import canonicalize_name

from . import releases
from .errors import InvalidInput, NotFound
from .indexes import get_index, split_stagename
from .redact import redact_url
from .stages import Stage
from .typefilters import CustomizerFor, filter_records
from .values import json_type

#: The keys of a push to another index of this server, and of one to an
#: external repository.
_INTERNAL_KEYS = frozenset({"name", "version", "targetindex", "no_docs", "only_docs"})
_EXTERNAL_KEYS = frozenset(
    {"name", "version", "posturl", "username", "password", "register_project", "no_docs", "only_docs"}
)
#: Host names that are this machine (besides 127.0.0.0/8, ::1 and the
#: unspecified addresses, which connect to it too).
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


@attrs.frozen
class PushRequest:
    """
    A push request's fields, checked.

    @ivar targetindex: C{user/index} of this server, or L{None} for an
        external push to C{posturl}.
    """

    name: str
    version: str
    targetindex: str | None = None
    posturl: str | None = None
    username: str = ""
    password: str = ""
    register_project: bool = False
    no_docs: bool = False
    only_docs: bool = False


def _string(data: dict, key: str, default: str | None = None) -> str | None:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidInput(f"push: {key!r} must be a string, got {json_type(value)}")
    return value


def _flag(data: dict, key: str) -> bool:
    value = data.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"push: {key!r} must be true or false, got {json_type(value)}")
    return value


def _host_port(url: str) -> tuple[str, int]:
    """
    The host (normalised, L{_normal_host}) and port an http(s) URL
    connects to.

    @raise InvalidInput: it has no host, or no valid port.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced IPv6 bracket, say
        raise InvalidInput(f"push: 'posturl' is not a URL: {exc}") from None
    if not parts.hostname:
        raise InvalidInput("push: 'posturl' has no host")
    if len(parts.hostname) > 253 or any(len(label) > 63 for label in parts.hostname.split(".")):
        raise InvalidInput("push: 'posturl' has an invalid host name (labels of 63 characters at most)")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is None:
        port = _DEFAULT_PORTS[parts.scheme.lower()]
    if not 0 < port < 65536:
        raise InvalidInput("push: 'posturl' has an invalid port")
    return _normal_host(parts.hostname), port


def _normal_host(host: str) -> str:
    """
    A host as a resolver would see it: IP addresses in their usual form
    (IPv4 in IPv6 as IPv4, the legacy forms C{127.1} and C{2130706433}
    too), names in lower case without a trailing dot.
    """
    host = host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if not re.fullmatch(r"[0-9a-fx.]+", host):
            return host
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def is_loopback(host: str) -> bool:
    """
    Whether a connection to C{host} (normalised, L{_normal_host}) stays on
    this machine, without asking a resolver.
    """
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def parse_push_request(data: object) -> PushRequest:
    """
    Check a push request's shape: its keys, and each field's type.

    @raise InvalidInput: naming the field that is wrong.
    """
    if not isinstance(data, dict):
        raise InvalidInput("Bad request: expected a JSON object")
    if data.get("name") is None or data.get("version") is None:
        raise InvalidInput("push needs 'name' and 'version'")
    name, version = _string(data, "name"), _string(data, "version")
    no_docs, only_docs = _flag(data, "no_docs"), _flag(data, "only_docs")
    if no_docs and only_docs:
        raise InvalidInput("can't use 'no_docs' and 'only_docs' together")
    internal = "targetindex" in data
    extra = set(data) - (_INTERNAL_KEYS if internal else _EXTERNAL_KEYS)
    if extra:
        shown = [key if key.isprintable() and len(key) <= 40 else repr(key[:40]) for key in sorted(extra)]
        raise InvalidInput(f"unknown additional options: {', '.join(shown[:10])}")
    if internal:
        targetindex = data["targetindex"]
        if not isinstance(targetindex, str):
            kind = json_type(targetindex)
            raise InvalidInput(f"push: 'targetindex' must be a string (user/index), got {kind}")
        return PushRequest(name, version, targetindex=targetindex, no_docs=no_docs, only_docs=only_docs)
    posturl = _string(data, "posturl")
    if posturl is None or not posturl.lower().startswith(("http://", "https://")):
        raise InvalidInput("push needs 'targetindex', or 'posturl' with an http(s) URL")
    if any(char.isspace() or not char.isprintable() for char in posturl):
        raise InvalidInput("push: 'posturl' must not contain spaces or control characters")
    _host_port(posturl)
    try:
        netloc = urlsplit(posturl).netloc
    except ValueError as exc:  # an unbalanced IPv6 bracket, say
        raise InvalidInput(f"push: 'posturl' is not a URL: {exc}") from None
    if "@" in netloc:
        raise InvalidInput("push: 'posturl' must not hold credentials: send 'username' and 'password'")
    return PushRequest(
        name,
        version,
        posturl=posturl,
        username=_string(data, "username", ""),
        password=_string(data, "password", ""),
        register_project=_flag(data, "register_project"),
        no_docs=no_docs,
        only_docs=only_docs,
    )


def check_not_self(request: PushRequest, listener: tuple[str, int] | None, outside_url: str | None) -> None:
    """
    Refuse an external push without credentials to this server itself:
    to the address and port the request came in on (C{listener}), to
    C{outside_url}'s host and port, or to a loopback host on the
    listener's port.

    @raise InvalidInput: it is.
    """
    if request.posturl is None or request.username or request.password:
        return
    target = _host_port(request.posturl)
    own = set()
    if listener is not None:
        own.add((_normal_host(listener[0]), listener[1]))
    if outside_url:
        try:
            own.add(_host_port(outside_url))
        except InvalidInput:
            pass
    host, port = target
    if target in own or (listener is not None and port == listener[1] and is_loopback(host)):
        raise InvalidInput(
            f"push target {redact_url(request.posturl)} is this server: pushing to it needs "
            "credentials ('username', 'password'), or push to one of its indexes with 'targetindex'"
        )


#: Link fields a pushed file keeps besides its blob.
_CARRIED = ("core_metadata_sha256", "attestations", "yanked")


@attrs.frozen
class PushOutcome:
    """
    What a push did.

    @ivar actions: devpi's action log: C{[200, "register", name, version,
        "->", target]}, then one entry per file.
    @ivar unused: digests of blobs no link uses any more (files of the
        target that the push replaced), to remove after the commit.
    """

    actions: list[list]
    unused: frozenset[str]


def push_target(reader, target: str, readonly: Callable[[dict], bool]) -> dict:
    """
    The configuration of the index a release is to be pushed to.

    @param readonly: whether an index (by its configuration) refuses
        pushes: its index type's C{readonly}.
    @raise NotFound: there is no such index.
    @raise InvalidInput: it is read-only (a mirror), or C{target} is no
        index name.
    """
    config = get_index(reader, *split_stagename(target))
    if config is None:
        raise NotFound(f"target index {target!r} does not exist")
    if readonly(config):
        raise InvalidInput(f"cannot push to {config['type']} index {target}")
    return config


def release_to_push(
    reader, stage: str, name: str, version: str, customizer_for: CustomizerFor | None = None
) -> dict:
    """
    The version record to push, which must have files: as index C{stage}
    shows it, when C{customizer_for} gives its index type (whose filters
    may hide the version, or some of its release files, which are then
    not pushed either).

    @raise InvalidInput: there is no such version (or the index does not
        show it), or it has no files.
    """
    record = releases.get_version(reader, stage, name, version)
    if record is not None and customizer_for is not None:
        config = get_index(reader, *split_stagename(stage))
        project = canonicalize_name(name)
        shown, _ = filter_records(
            reader, [Stage(stage, config)], project, stage, {version: record}, customizer_for
        )
        record = shown.get(version)
    if record is None or not record["+links"]:
        raise InvalidInput(f"there are no files for {name} {version} on stage {stage}")
    return record


def push_release(
    tx,
    source: str,
    target: str,
    name: str,
    version: str,
    who: str | None,
    *,
    no_docs: bool = False,
    only_docs: bool = False,
    readonly: Callable[[dict], bool],
    customizer_for: CustomizerFor | None = None,
) -> PushOutcome:
    """
    Register C{name} C{version} of index C{source} on index C{target} and
    link its files there, in transaction C{tx}.  The caller has checked
    that C{who} may upload to C{target}.

    @param no_docs: leave the documentation zip behind.
    @param only_docs: push nothing but the documentation zip.
    @param customizer_for: the index types, whose filters decide what of
        the release C{source} shows (L{release_to_push}).
    @raise InvalidInput: see L{push_target} and L{release_to_push}.
    @raise NotFound: see L{push_target}.
    @raise Conflict: a file differs from the one the (non-volatile)
        target already has.
    """
    record = release_to_push(tx, source, name, version, customizer_for)
    volatile = push_target(tx, target, readonly).get("volatile", True)
    actions: list[list] = [[200, "register", name, version, "->", target]]
    metadata = {k: v for k, v in record.items() if k != "+links"}
    unused: set[str] = set()
    remap: dict[str, str] = {}  # source relpath -> target relpath
    releases.register(tx, target, metadata, replace=False)
    # Tox results after the files they belong to.
    links = sorted(record["+links"], key=lambda link: link["rel"] == "toxresult")
    for link in links:
        if link["rel"] == "doczip" and no_docs:
            continue
        if link["rel"] != "doczip" and only_docs:
            continue
        path = None
        extra = {k: link[k] for k in _CARRIED if k in link}
        if link["rel"] == "toxresult":
            for_path = remap.get(link["for_relpath"])
            if for_path is None:
                continue
            extra["for_relpath"] = for_path
            path = f"{for_path.rsplit('/', 1)[0]}/{link['basename']}"
        _, new, dropped = releases.add_file(
            tx,
            target,
            volatile,
            metadata,
            rel=link["rel"],
            basename=link["basename"],
            sha256=link["sha256"],
            size=link["size"],
            who=who,
            extra=extra,
            log=[e for e in link.get("log", []) if e["what"] != "overwrite"],
            event=releases.log_entry("push", who, src=source, dst=target),
            path=path,
        )
        unused |= dropped
        remap[link["relpath"]] = new["relpath"]
        if link["rel"] == "doczip":
            actions.append([200, "store_doczip", name, version, "->", target])
        else:
            actions.append([200, f"store_{link['rel']}", new["relpath"]])
    # A blob one file dropped may be what a later file linked again.
    return PushOutcome(actions, frozenset(d for d in unused if not releases.blob_in_use(tx, d)))

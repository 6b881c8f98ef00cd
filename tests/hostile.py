"""
Hostile requests (issue 14), made by seeded generators over the server's
routes, shared by the in-memory fuzz test (C{tests/test_fuzz.py}) and the
hand-run script against a real server (C{benchmarks/fuzz_hostile.py}).

This is a helper module, not a test module.  Every request is written out
as the bytes that go on the wire (L{Hostile.wire}), so that lower-case
methods, a missing C{Host}, malformed lengths and percent-encoded dot
segments reach the server exactly as generated: no client library
normalises them first.

Each request says what a correct server does with it (L{Hostile.expect}):

  - C{"refuse"}: anything but 2xx (a 4xx, or a 3xx: a normalising redirect
    to the canonical name is fine); for a method the server does not know,
    501 counts as refused too (L{Hostile.unknown_method}).
  - C{"any"}: odd but legal (a unicode name, an HTTP/1.0 request without
    C{Host}); any answer below 500.
  - a set of status codes: exactly one of these (414 for an over-long
    request line, 431 for over-large headers, 400 for a push back to the
    server itself).

Whatever the expectation, every request must be answered (a status line
comes back) and no answer may be 5xx (but 501 for an unknown method).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from . import distfiles
from .distfiles import make_doczip, make_wheel

REFUSE = "refuse"
ANY = "any"


@dataclass(frozen=True)
class World:
    """
    What the generators may refer to: the state the server was given
    before the fuzzing starts (see L{setup_steps}).

    @ivar host: the C{Host} header value (also the server's own address).
    @ivar root: headers with root's credentials.
    @ivar alice: headers with alice's credentials (owner of C{alice/dev},
        a stage with base C{root/pypi} holding C{pkg-a 1.0}, and of
        C{alice/prod}, an empty stage).
    @ivar file_path: the path of C{pkg-a}'s wheel on C{alice/dev}.
    @ivar external: an external upload URL (nobody listens there on a real
        server; in memory it is the fake upstream).
    """

    host: str
    root: dict[str, str]
    alice: dict[str, str]
    file_path: str
    external: str = "http://127.0.0.1:9/legacy/"

    @property
    def self_url(self) -> str:
        return f"http://{self.host}"


#: The release the world holds (see L{World}).
PROJECT, VERSION = "pkg-a", "1.0"


@functools.cache
def world_wheel() -> tuple[str, bytes]:
    return make_wheel(PROJECT, VERSION)


#: One boundary for every form, so that the same seed makes the same bytes.
BOUNDARY = "hostile0fuzz0boundary0d3f9a"


#: Twine-style forms with the fixed boundary.
multipart = functools.partial(distfiles.multipart, boundary=BOUNDARY)
upload_form = functools.partial(distfiles.upload_form, boundary=BOUNDARY)


@dataclass
class Hostile:
    """
    One request as it goes on the wire.

    @ivar kind: the kind (a test parameter; a line of the script's table).
    @ivar label: what this one is, for the report (C{kind:position:case}).
    @ivar raw: the whole request, when it is not an HTTP/1.x head with a
        body (L{wire} returns it as it is).
    """

    kind: str
    label: str
    method: bytes = b"GET"
    target: bytes = b"/"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    version: bytes = b"HTTP/1.1"
    expect: str | frozenset[int] = REFUSE
    host: bool = True
    length: bool = True
    raw: bytes | None = None
    unknown_method: bool = False
    #: Body bytes to keep sending after L{wire} (real sockets only), as
    #: chunks when C{chunked}, until the server answers or closes.
    stream: int = 0
    chunked: bool = False

    def wire(self, host: str) -> bytes:
        if self.raw is not None:
            return self.raw
        lines = [self.method + b" " + self.target + b" " + self.version]
        if self.host:
            lines.append(b"Host: " + host.encode("ascii"))
        lines.extend(name + b": " + value for name, value in self.headers)
        if self.length and (self.body or self.method.upper() in (b"PUT", b"POST", b"PATCH", b"PUSH")):
            lines.append(b"Content-Length: %d" % len(self.body))
        lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body

    def describe(self, limit: int = 160) -> str:
        """
        The request line and an excerpt of the body, for failure messages.
        """
        line = (self.method + b" " + self.target + b" " + self.version) if self.raw is None else self.raw
        text = f"[{self.label}] {_excerpt(line, limit)}"
        if self.raw is None:
            if not self.host and not any(name.lower() == b"host" for name, _ in self.headers):
                text += " (no Host)"
            odd = [
                _excerpt(name + b": " + value, 60)
                for name, value in self.headers
                if (name, value) != (b"Accept", b"application/json")
            ]
            if odd:
                text += (
                    " headers: " + "; ".join(odd[:4]) + (f"; ...{len(odd) - 4} more" if len(odd) > 4 else "")
                )
        if self.raw is None and self.body:
            text += f" body({len(self.body)}B)={_excerpt(self.body, limit)}"
        return text

    def judge(self, status: int | None) -> str | None:
        """
        What is wrong with answering this request with C{status} (None:
        no status line came back), or None if nothing is.
        """
        if status is None:
            return "unanswered"
        if status == 501 and self.unknown_method:
            return None
        if isinstance(self.expect, frozenset) and status in self.expect and status >= 500:
            return None  # a gateway error the request is expected to get (an unreachable repository)
        if status >= 500:
            return "5xx"
        if self.expect == REFUSE:
            return "accepted" if 200 <= status < 300 else None
        if self.expect == ANY or status in self.expect:
            return None
        return "accepted" if 200 <= status < 300 else "wrong status"


def _excerpt(data: bytes, limit: int) -> str:
    text = repr(data[:limit])[2:-1]
    return text + (f"...(+{len(data) - limit}B)" if len(data) > limit else "")


# -- requests ----------------------------------------------------------------


def _headers(auth: dict[str, str] | None = None, **extra: str) -> list[tuple[bytes, bytes]]:
    headers = {"Accept": "application/json", **(auth or {}), **extra}
    return [(k.replace("_", "-").encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def _json(value: object) -> bytes:
    return json.dumps(value).encode("utf-8")


def request(
    kind: str,
    label: str,
    method: str | bytes,
    target: str | bytes,
    body: object = None,
    *,
    auth: dict[str, str] | None = None,
    raw_body: bytes | None = None,
    content_type: str | None = None,
    expect: str | frozenset[int] = REFUSE,
    **kw,
) -> Hostile:
    headers = _headers(auth)
    if content_type is not None:
        headers.append((b"Content-Type", content_type.encode("latin-1")))
    data = raw_body if raw_body is not None else (b"" if body is None else _json(body))
    return Hostile(
        kind=kind,
        label=label,
        method=method.encode("latin-1") if isinstance(method, str) else method,
        target=target.encode("latin-1") if isinstance(target, str) else target,
        headers=headers,
        body=data,
        expect=expect,
        **kw,
    )


# -- names ---------------------------------------------------------------------

#: Path segments that must never name a user, an index or a project:
#: devpi's rule (no ASCII symbol but -.@_, no control character, not
#: empty), and beyond it C{.} and C{..}, a leading C{+}, and bytes that
#: are not UTF-8.
ILLEGAL_SEGMENTS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "%2e",
    "..%2f..",
    "%2f%2e%2e",
    "+x",
    "+fuzz",
    "%2bx",
    "a%2fb",
    "%2f",
    "a%5cb",
    "%5c..",
    "a%00b",
    "%00",
    "a%0d%0ab",
    "%0a",
    "a%09b",
    "a%20b",
    "%20",
    "a%7fb",
    "%ff%fe",
    "a%c0%afb",
    "%ed%a0%80",
    "a%3ab",
    "a%3bb",
    "%3f",
    "a%3fb%3dc",
    "a%23b",
    "a%25b",
    "%25",
    "%3cx%3e",
    "a%22b",
    "a%27b",
    "a~b",
    "a*b",
    "a!b",
    "a,b",
    "a$b",
    "(a)",
    "a%5bb%5d",
    "a%7cb",
]

#: Legal by devpi's rule, but odd: long, unicode (also invisible and
#: bidirectional characters), only dots and dashes.  Any answer but a 5xx.
ODD_SEGMENTS = [
    "a" * 60,
    "u" * 61,
    "n" * 200,
    "x" * 2000,
    "%C3%A9t%C3%A9",
    "%E2%80%AE",
    "%C2%85",
    "%EF%BB%BF",
    "%F0%9F%90%8D",
    "%E2%80%8B",
    "...",
    "-",
    "_",
    "@x",
    "a.b",
    "a..b",
    "-.-",
]

#: Names that are illegal once decoded, for positions inside JSON bodies.
ILLEGAL_NAMES = [unquote(s, errors="surrogateescape") for s in ILLEGAL_SEGMENTS] + [""]


def _illegal_or_odd(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.7:
        return rng.choice(ILLEGAL_SEGMENTS), REFUSE
    return rng.choice(ODD_SEGMENTS), ANY


def _upload(kind, label, path, world, *, name=PROJECT, version=VERSION, expect=REFUSE) -> Hostile:
    filename, data = world_wheel()
    content_type, body = upload_form(name, version, filename, data)
    return request(
        kind, label, "POST", path, raw_body=body, content_type=content_type, auth=world.alice, expect=expect
    )


def gen_names_user(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Hostile names in the user position.  Odd but legal names may have
    been created by an earlier request of the run, so any answer but a
    5xx is right for them anywhere.
    """
    kind = "names_user"
    out = []
    for _ in range(n):
        seg, expect = _illegal_or_odd(rng)
        slash = rng.choice(["", "/"])
        position = rng.randrange(9)
        if position == 0:
            out.append(request(kind, "put", "PUT", f"/{seg}{slash}", {"password": "pw"}, expect=expect))
        elif position == 1:
            out.append(
                request(
                    kind,
                    "put-root",
                    "PUT",
                    f"/{seg}{slash}",
                    {"password": "pw"},
                    auth=world.root,
                    expect=expect,
                )
            )
        elif position == 2:
            out.append(
                request(
                    kind, "patch", "PATCH", f"/{seg}{slash}", {"title": "t"}, auth=world.root, expect=expect
                )
            )
        elif position == 3:
            out.append(request(kind, "delete", "DELETE", f"/{seg}{slash}", auth=world.root, expect=expect))
        elif position == 4:
            out.append(request(kind, "get", "GET", f"/{seg}{slash}", expect=expect))
        elif position == 5:
            out.append(request(kind, "api", "GET", f"/{seg}/+api", expect=expect))
        elif position == 6:
            out.append(request(kind, "index-put", "PUT", f"/{seg}/dev", {}, auth=world.root, expect=expect))
        elif position == 7:
            out.append(request(kind, "simple", "GET", f"/{seg}/dev/+simple/", expect=expect))
        else:
            out.append(_upload(kind, "upload", f"/{seg}/dev/", world, expect=expect))
    return out


def gen_names_index(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Hostile names in the index position, in paths and in JSON (bases,
    push targets).
    """
    kind = "names_index"
    out = []
    for _ in range(n):
        seg, expect = _illegal_or_odd(rng)
        name = unquote(seg, errors="surrogateescape")
        slash = rng.choice(["", "/"])
        position = rng.randrange(11)
        a = world.alice
        if position == 0:
            out.append(request(kind, "put", "PUT", f"/alice/{seg}{slash}", {}, auth=a, expect=expect))
        elif position == 1:
            out.append(
                request(kind, "patch", "PATCH", f"/alice/{seg}{slash}", {"title": "t"}, auth=a, expect=expect)
            )
        elif position == 2:
            out.append(request(kind, "delete", "DELETE", f"/alice/{seg}{slash}", auth=a, expect=expect))
        elif position == 3:
            out.append(request(kind, "get", "GET", f"/alice/{seg}{slash}", expect=expect))
        elif position == 4:
            out.append(request(kind, "api", "GET", f"/alice/{seg}/+api", expect=expect))
        elif position == 5:
            out.append(request(kind, "simple", "GET", f"/alice/{seg}/+simple/", expect=expect))
        elif position == 6:
            out.append(
                request(kind, "simple-project", "GET", f"/alice/{seg}/+simple/{PROJECT}/", expect=expect)
            )
        elif position == 7:
            out.append(_upload(kind, "upload", f"/alice/{seg}/", world, expect=expect))
        elif position == 8:
            body = {"name": PROJECT, "version": VERSION, "targetindex": f"alice/{name}"}
            out.append(request(kind, "push-target", "PUSH", "/alice/dev", body, auth=a, expect=expect))
        elif position == 9:
            base = rng.choice([f"alice/{name}", f"{name}/dev", name, f"alice/dev/{name}"])
            out.append(
                request(
                    kind,
                    "bases",
                    "PUT",
                    f"/alice/fz{rng.randrange(10**6)}",
                    {"bases": [base]},
                    auth=a,
                    expect=expect,
                )
            )
        else:
            ops = [f"bases=alice/{name}"] if rng.random() < 0.5 else [f"bases+={name}"]
            out.append(request(kind, "bases-patch", "PATCH", "/alice/dev", ops, auth=a, expect=expect))
    return out


def gen_names_project(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Hostile names in the project and version positions (none exists, so
    every one is refused), on the stage and on the mirror.
    """
    kind = "names_project"
    out = []
    segs = ILLEGAL_SEGMENTS + ODD_SEGMENTS
    for _ in range(n):
        seg = rng.choice(segs)
        name = unquote(seg, errors="surrogateescape")
        a = world.alice
        position = rng.randrange(18)
        paths = {
            0: ("GET", f"/alice/dev/{seg}"),
            1: ("GET", f"/alice/dev/{seg}/"),
            2: ("GET", f"/alice/dev/{seg}/{VERSION}"),
            3: ("GET", f"/alice/dev/{PROJECT}/{seg}"),
            4: ("DELETE", f"/alice/dev/{seg}"),
            5: ("DELETE", f"/alice/dev/{PROJECT}/{seg}"),
            6: ("GET", f"/alice/dev/+simple/{seg}/"),
            7: ("GET", f"/alice/dev/+simple/{seg}"),
            8: ("POST", f"/alice/dev/+simple/{seg}/refresh"),
            9: ("GET", f"/alice/dev/+explain/{seg}"),
            10: ("GET", f"/root/pypi/+simple/{seg}/"),
            11: ("GET", f"/root/pypi/{seg}"),
            12: ("GET", f"/alice/dev/+f/{seg}"),
            13: ("GET", f"/alice/dev/+f/{seg}/{seg}/x.whl"),
            14: ("DELETE", f"/alice/dev/+f/{seg}"),
        }
        if position in paths:
            method, path = paths[position]
            # +explain explains a name nothing serves too, if it is a name.
            expect = ANY if position == 9 and seg in ODD_SEGMENTS else REFUSE
            out.append(request(kind, f"{method.lower()}-{position}", method, path, auth=a, expect=expect))
        elif position == 15:
            out.append(
                request(kind, "yank", "PATCH", f"/alice/dev/{PROJECT}/{seg}", {"yanked": True}, auth=a)
            )
        elif position == 16:
            out.append(request(kind, "toxresult", "POST", f"/alice/dev/+f/{seg}", {"testenvs": {}}, auth=a))
        else:
            which = rng.randrange(2)
            out.append(
                _upload(kind, "upload-name", "/alice/dev/", world, name=name)
                if which == 0
                else _upload(kind, "upload-version", "/alice/dev/", world, version=name)
            )
    return out


# -- JSON bodies ---------------------------------------------------------------


def json_routes(world: World, rng: random.Random) -> list[tuple[str, str, str, dict[str, str] | None]]:
    """
    (label, method, path, credentials) of every route that reads JSON but
    tox results (their own kind, L{gen_toxresult}, sends these bodies too).
    """
    a = world.alice
    return [
        ("user-put", "PUT", f"/fz{rng.randrange(10**6)}", None),
        ("user-patch", "PATCH", "/alice", a),
        ("index-put", "PUT", f"/alice/fz{rng.randrange(10**6)}", a),
        ("index-patch", "PATCH", "/alice/dev", a),
        ("login", "POST", "/+login", None),
        ("push", "PUSH", "/alice/dev", a),
        ("push-post", "POST", "/alice/dev/", a),
        ("yank-version", "PATCH", f"/alice/dev/{PROJECT}/{VERSION}", a),
        ("yank-file", "PATCH", world.file_path, a),
    ]


def _nested(depth: int, open_: bytes, close: bytes, inner: bytes = b"1") -> bytes:
    return open_ * depth + inner + close * depth


#: Bodies that are not JSON, or JSON that no route takes.
MALFORMED_BODIES: list[tuple[str, Callable[[random.Random], bytes]]] = [
    ("empty", lambda r: b""),
    ("truncated", lambda r: b'{"password": "pw", "title": '),
    ("open-brace", lambda r: b"{"),
    ("garbage", lambda r: bytes(r.randrange(256) for _ in range(r.randrange(1, 200)))),
    ("latin1", lambda r: b'{"title": "caf\xe9"}'),
    ("utf16", lambda r: '{"title": "x"}'.encode("utf-16")),
    ("bom", lambda r: b'\xef\xbb\xbf{"title": "x"}'),
    ("nan", lambda r: b"NaN"),
    ("infinity", lambda r: b'{"title": Infinity}'),
    ("huge-number", lambda r: b"1e999999"),
    ("long-int", lambda r: b"[" + b"9" * 5000 + b"]"),
    ("trailing", lambda r: b'{"title": "x"} {"title": "y"}'),
    ("single-quotes", lambda r: b"{'title': 'x'}"),
    ("comment", lambda r: b'{"title": "x" /* c */}'),
    ("lone-surrogate", lambda r: b'{"title": "\\ud800", "password": "\\udfff"}'),
    ("lone-surrogate-user", lambda r: b'{"user": "\\ud800", "password": "x", "name": "\\udfff"}'),
    ("deep-list", lambda r: _nested(r.choice([1000, 10000, 100000]), b"[", b"]")),
    ("deep-object", lambda r: _nested(r.choice([1000, 10000, 50000]), b'{"a":', b"}")),
    ("deep-unclosed", lambda r: b"[" * r.choice([1000, 100000])),
    ("deep-in-field", lambda r: b'{"title": ' + _nested(20000, b"[", b"]") + b', "yanked": true}'),
    ("dup-keys", lambda r: b'{"password": "pw", "password": 5, "yanked": true, "yanked": 7}'),
    ("over-cap", lambda r: b'{"title": "' + b"x" * (1024 * 1024 + 10) + b'"}'),
    ("ctrl-in-string", lambda r: b'{"title": "a\x01\x1fb"}'),
]


def gen_json_malformed(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Malformed, deep and huge JSON on every route that reads JSON.
    """
    kind = "json_malformed"
    out = []
    for _ in range(n):
        label, method, path, auth = rng.choice(json_routes(world, rng))
        body_label, make = rng.choice(MALFORMED_BODIES)
        content_type = "application/json" if label == "push-post" else None
        out.append(
            request(
                kind,
                f"{label}:{body_label}",
                method,
                path,
                raw_body=make(rng),
                auth=auth,
                content_type=content_type,
            )
        )
    return out


#: Values of the wrong type for a field that takes a string.
NOT_STRINGS: list[object] = [0, -1, 1.5, True, False, [], ["x"], {}, {"a": "b"}, [[["x"]]]]
#: Bodies that are not JSON objects.
NOT_OBJECTS: list[object] = [None, 0, 1.5, True, "x", "", [], [None], [1, 2], [{}], [[]]]


def _wrong(rng: random.Random, base: dict, fields: list[str], values: list[object]) -> tuple[str, dict]:
    body = dict(base)
    key = rng.choice(fields)
    body[key] = rng.choice(values)
    return key, body


def gen_types_user(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    User records of the wrong shape: not an object, fields of the wrong
    type, unknown keys.
    """
    kind = "types_user"
    out = []
    fields = ["email", "title", "description", "password"]
    for _ in range(n):
        create = rng.random() < 0.5
        method, path, auth = (
            ("PUT", f"/fz{rng.randrange(10**6)}", None) if create else ("PATCH", "/alice", world.alice)
        )
        base = {"password": "pw"} if create else {}
        shape = rng.randrange(3)
        if shape == 0:
            label, body = "not-object", rng.choice(NOT_OBJECTS)
        elif shape == 1:
            key, body = _wrong(rng, base, fields, NOT_STRINGS)
            label = f"wrong-{key}"
        else:
            body = {
                **base,
                # (Not the keys the server sets, created, modified, indexes,
                # username: ignored on input, as devpi-client sends a user's
                # whole record back.)
                rng.choice(["bogus", "is_admin", "pwsalt", "groups", "__proto__"]): "x",
            }
            if rng.random() < 0.1:
                body.update({f"k{i}": i for i in range(rng.choice([1000, 30000]))})
            label = "unknown-key"
        out.append(request(kind, f"{method.lower()}:{label}", method, path, body, auth=auth))
    return out


def gen_types_index(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Index configurations of the wrong shape, in both PATCH forms.
    """
    kind = "types_index"
    out = []
    wrong = {
        "bases": [5, {}, [5], [None], "nosuch/index", "alice", ["alice/dev/x"], [["alice/prod"]], True],
        "volatile": [5, "maybe", [], {}, None, 0],
        "acl_upload": [5, {}, [5], [{}], True],
        "acl_toxresult_upload": [5, {}, [None]],
        "mirror_whitelist": [5, {}, [5]],
        "mirror_whitelist_inheritance": [5, "sometimes", [], {}],
        "title": NOT_STRINGS,
        "description": NOT_STRINGS,
        "type": [5, "nosuchtype", [], {}, None],
        "bogus": ["x", 5],
    }
    for _ in range(n):
        create = rng.random() < 0.4
        path = f"/alice/fz{rng.randrange(10**6)}" if create else "/alice/dev"
        method = "PUT" if create else "PATCH"
        key = rng.choice(sorted(wrong))
        value = rng.choice(wrong[key])
        shape = rng.randrange(4)
        if shape == 0:
            label, body = (
                "not-object",
                rng.choice([None, 0, "x", True, 1.5] + ([] if create else [[5], [None]])),
            )
        elif shape == 1 or create:
            label, body = f"wrong-{key}", {key: value}
        elif shape == 2:
            # List form: every value is a string, so only strings no parser takes.
            label = "list"
            body = [
                rng.choice(
                    [
                        "volatile=maybe",
                        "volatile=5",
                        "type=nosuchtype",
                        "type=mirror",
                        "bogus=1",
                        "mirror_whitelist_inheritance=sometimes",
                        "bases=nosuch/index",
                        "bases=alice/dev",
                        "=x",
                        "novalue",
                        "bases",
                        "acl_upload-=nobody",
                        5,
                        None,
                        [],
                        {},
                    ]
                )
            ]
        else:
            label, body = "indexconfig-wrapped", {"type": "indexconfig", "result": {key: value}}
        out.append(request(kind, f"{method.lower()}:{label}", method, path, body, auth=world.alice))
    return out


def gen_types_login(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Login bodies of the wrong shape, and logins of hostile or unknown
    users (refused with 401).
    """
    kind = "types_login"
    out = []
    for _ in range(n):
        shape = rng.randrange(3)
        if shape == 0:
            label, body = "not-object", rng.choice(NOT_OBJECTS)
        elif shape == 1:
            key, body = _wrong(
                rng, {"user": "alice", "password": "alicepw"}, ["user", "password"], NOT_STRINGS
            )
            label = f"wrong-{key}"
        else:
            label = "hostile-user"
            body = {"user": rng.choice(ILLEGAL_NAMES + ["nosuch", "a" * 10000]), "password": "x"}
        out.append(request(kind, label, "POST", "/+login", body))
    return out


def gen_types_yank(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Yank bodies of the wrong shape, on a version and on a file.
    """
    kind = "types_yank"
    out = []
    for _ in range(n):
        path = rng.choice([f"/alice/dev/{PROJECT}/{VERSION}", world.file_path])
        shape = rng.randrange(3)
        if shape == 0:
            label, body = "not-object", rng.choice(NOT_OBJECTS)
        elif shape == 1:
            label, body = "wrong-yanked", {"yanked": rng.choice([0, 1, 1.5, [], ["x"], {}, {"reason": "x"}])}
        else:
            label, body = "no-yanked", rng.choice([{}, {"reason": "x"}, {"Yanked": True}])
        out.append(request(kind, label, "PATCH", path, body, auth=world.alice))
    return out


# -- push ----------------------------------------------------------------------


def gen_push(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Pushes to another index of this server, and to an external URL,
    whose bodies are not mappings of the right types: all refused.
    """
    kind = "push"
    out = []
    base = {"name": PROJECT, "version": VERSION, "targetindex": "alice/prod"}
    external = {"name": PROJECT, "version": VERSION, "posturl": world.external}
    wrong_targets = [
        5,
        None,
        [],
        {},
        ["alice/prod"],
        "",
        "alice",
        "alice/",
        "/alice/prod",
        "alice/prod/x",
        "nosuch/index",
        "alice/nosuch",
        "root/pypi",
        "alice/dev",
        "alice/..",
        "../..",
        "alice/%2e%2e",
    ]
    wrong_urls = [
        5,
        None,
        [],
        {},
        "",
        "ftp://x/",
        "file:///etc/passwd",
        "http://",
        "http:///x",
        "javascript:1",
        "http://[::1",
        "http://a b/",
        "http://127.0.0.1:99999/",
        "http://x" + "a" * 5000 + "/",
    ]
    for _ in range(n):
        method = rng.choice(["PUSH", "POST"])
        shape = rng.randrange(7)
        if shape == 0:
            label, body = "not-object", rng.choice(NOT_OBJECTS)
        elif shape == 1:
            key, body = _wrong(rng, base, ["name", "version"], NOT_STRINGS + ["", "nosuch", "7.0"])
            label = f"wrong-{key}"
        elif shape == 2:
            label, body = "wrong-targetindex", {**base, "targetindex": rng.choice(wrong_targets)}
        elif shape == 3:
            key = rng.choice(["no_docs", "only_docs"])
            label, body = f"wrong-{key}", {**base, key: rng.choice([5, "yes", "false", [], {}, None])}
            if body[key] is None:
                body[key] = "no"
        elif shape == 4:
            label, body = "unknown-key", {**base, rng.choice(["bogus", "posturl", "username"]): "x"}
        elif shape == 5:
            label, body = "wrong-posturl", {**external, "posturl": rng.choice(wrong_urls)}
        else:
            key = rng.choice(["username", "password", "register_project"])
            label, body = f"external-wrong-{key}", {**external, key: rng.choice([5, [], {}, ["x"], {"a": 1}])}
        out.append(
            request(
                kind, label, method, "/alice/dev", body, auth=world.alice, content_type="application/json"
            )
        )
    return out


def gen_push_loopback(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    A push to an external URL that is this server's own listener, without
    credentials: 400.
    """
    kind = "push_loopback"
    out = []
    for _ in range(n):
        path = rng.choice(["/alice/prod/", "/alice/prod", "/root/pypi/", "/", "/alice/dev/"])
        body = {"name": PROJECT, "version": VERSION, "posturl": world.self_url + path}
        out.append(
            request(
                kind,
                "self",
                rng.choice(["PUSH", "POST"]),
                "/alice/dev",
                body,
                auth=world.alice,
                expect=frozenset({400}),
                content_type="application/json",
            )
        )
    return out


def gen_push_external(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Well-formed pushes to an external repository that refuses them (on a
    real server: nobody listens; in memory: the fake upstream answers
    404).  The push fails: 502, as devpi answers an unreachable
    repository (the issue allows it), or a 4xx; never a 2xx or a 500.
    """
    kind = "push_external"
    out = []
    for _ in range(n):
        body = {"name": PROJECT, "version": VERSION, "posturl": world.external}
        if rng.random() < 0.5:
            body.update(username="u", password="p")
        if rng.random() < 0.3:
            body["register_project"] = True
        method = rng.choice(["PUSH", "POST"])
        out.append(
            request(
                kind,
                "refused",
                method,
                "/alice/dev",
                body,
                auth=world.alice,
                content_type="application/json",
                expect=frozenset({502, *range(400, 500)}),
            )
        )
    return out


# -- uploads -------------------------------------------------------------------


def _corrupt_multipart(rng: random.Random, world: World) -> tuple[str, str, bytes]:
    filename, data = world_wheel()
    case = rng.randrange(22)
    if case == 0:
        ct, body = upload_form(PROJECT, VERSION, filename, data)
        return "truncated", ct, body[: rng.randrange(1, len(body) - 1)]
    if case == 1:
        ct, body = upload_form(PROJECT, VERSION, filename, data)
        return "no-final-boundary", ct, body.rsplit(b"--", 2)[0]
    if case == 2:
        _, body = upload_form(PROJECT, VERSION, filename, data)
        return "wrong-boundary", "multipart/form-data; boundary=deadbeef", body
    if case == 3:
        _, body = upload_form(PROJECT, VERSION, filename, data)
        return "no-boundary", "multipart/form-data", body
    if case == 4:
        _, body = upload_form(PROJECT, VERSION, filename, data)
        return "long-boundary", "multipart/form-data; boundary=" + "b" * 5000, body
    if case == 5:
        return "garbage", "multipart/form-data; boundary=x", bytes(rng.randrange(256) for _ in range(500))
    if case == 6:
        ct, body = multipart(
            [("protocol_version", "1"), ("name", PROJECT), ("version", VERSION)], (filename, data)
        )
        return "no-action", ct, body
    if case == 7:
        action = rng.choice(["bogus", "remove_pkg", "", "FILE_UPLOAD", "file_upload\x00"])
        ct, body = upload_form(PROJECT, VERSION, filename, data, action=action)
        return "bad-action", ct, body
    if case == 8:
        hostile = rng.choice(
            [
                "../../x.whl",
                "/abs/pkg_a-1.0-py3-none-any.whl",
                "..",
                ".",
                "",
                "pkg_a-1.0-py3-none-any.whl\x00.txt",
                "a\\..\\pkg_a-1.0-py3-none-any.whl",
                "pkg_a-1.0-py3-none-any.whl/../../x",
                "x" * 5000 + ".whl",
                "+f",
                "%2e%2e",
            ]
        )
        ct, body = upload_form(PROJECT, VERSION, hostile, data)
        return "hostile-filename", ct, body
    if case == 9:
        ct, body = upload_form("pkg-b", VERSION, filename, data)
        return "name-mismatch", ct, body
    if case == 10:
        ct, body = upload_form(PROJECT, "2.0", filename, data)
        return "version-mismatch", ct, body
    if case == 11:
        ct, body = upload_form(PROJECT, VERSION, filename, b"not a zip at all")
        return "not-a-wheel", ct, body
    if case == 12:
        ct, body = upload_form(PROJECT, VERSION, filename, b"")
        return "empty-file", ct, body
    if case == 13:
        fields = [
            (":action", "file_upload"),
            ("name", PROJECT),
            ("version", VERSION),
            ("sha256_digest", "0" * 64),
        ]
        ct, body = multipart(fields, (filename, data))
        return "digest-mismatch", ct, body
    if case == 14:
        ct, body = upload_form(PROJECT, VERSION, "pkg-a.doc.zip", b"not a zip", action="doc_upload")
        return "doc-not-zip", ct, body
    if case == 15:
        ct, body = multipart([(":action", "file_upload"), ("name", PROJECT), ("version", VERSION)])
        return "no-file", ct, body
    if case == 16:
        ct, body = upload_form(PROJECT, VERSION, filename, data, extra=[("attestations", "{not json")])
        return "bad-attestations", ct, body
    if case == 17:
        boundary = "b0undary"
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data\r\n\r\nx\r\n"
            f"--{boundary}\r\nno-colon-header\r\n\r\nx\r\n--{boundary}--\r\n"
        ).encode()
        return "bad-part-headers", f"multipart/form-data; boundary={boundary}", body
    if case == 18:
        ct, body = multipart(
            [(":action", "file_upload"), ("name", PROJECT), ("version", VERSION)],
            ("pkg_a-1.0-py3-none-any.whl", data),
        )
        body = body.replace(b'filename="pkg_a-1.0-py3-none-any.whl"', b"filename*=UTF-8''%2e%2e%2fx.whl", 1)
        return "filename-star", ct, body
    if case == 19:
        ct, body = upload_form(PROJECT, VERSION, filename, data)
        return "mirror-index", ct, body
    if case == 20:
        ct, body = multipart([(":action", "submit"), ("name", "../evil"), ("version", "../1")])
        return "submit-hostile-name", ct, body
    fields = [(":action", "doc_upload"), ("name", PROJECT), ("version", "../../x")]
    ct, body = multipart(fields, ("pkg-a.zip", make_doczip()))
    return "doc-hostile-version", ct, body


def gen_multipart(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Bad multipart uploads: broken forms, hostile fields and file names,
    files that do not match the form.
    """
    kind = "multipart"
    out = []
    for _ in range(n):
        label, content_type, body = _corrupt_multipart(rng, world)
        path = "/root/pypi/" if label == "mirror-index" else rng.choice(["/alice/dev/", "/alice/dev"])
        auth = world.root if label == "mirror-index" else world.alice
        out.append(request(kind, label, "POST", path, raw_body=body, content_type=content_type, auth=auth))
    return out


# -- tox results ---------------------------------------------------------------


def gen_toxresult(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Bodies that are not tox results, posted to a release file's URL; and
    tox results posted where no release file is.
    """
    kind = "toxresult"
    out = []
    not_tox: list[object] = [
        {},
        [],
        5,
        None,
        "x",
        True,
        {"a": 1},
        {"testenvs": []},
        {"testenvs": 5},
        {"testenvs": "x"},
        {"testenvs": None},
        [{"testenvs": {}}],
        {"reportversion": "1"},
        {"x" * 100: "y" * 100000},
    ]
    for _ in range(n):
        shape = rng.randrange(3)
        if shape == 0:
            out.append(
                request(kind, "not-tox", "POST", world.file_path, rng.choice(not_tox), auth=world.alice)
            )
        elif shape == 1:
            label, make = rng.choice(MALFORMED_BODIES)
            out.append(request(kind, f"malformed:{label}", "POST", world.file_path, raw_body=make(rng)))
        else:
            directory, _, _ = world.file_path.rpartition("/")
            path = rng.choice(
                [
                    f"{directory}/nothing.whl",
                    f"{directory}/",
                    f"{directory}/..",
                    f"{world.file_path}/..",
                    world.file_path.replace("alice/dev", "alice/prod"),
                    world.file_path + ".toxresult-1-0",
                    world.file_path.replace("alice/dev", "root/pypi"),
                    "/alice/dev/+f/",
                    "/alice/dev/+f/%2e%2e",
                ]
            )
            out.append(request(kind, "no-release-file", "POST", path, {"testenvs": {}}, auth=world.alice))
    return out


# -- methods -------------------------------------------------------------------


def gen_methods(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Lower-case and unknown methods, and known methods where a route does
    not take them.  Methods are case-sensitive: C{get} is not C{GET}.
    """
    kind = "methods"
    out = []
    a = world.alice
    # (method, path, body): what a case-insensitive server would act on.
    real = [
        ("GET", "/"),
        ("GET", "/+api"),
        ("GET", "/alice"),
        ("GET", "/alice/dev"),
        ("GET", f"/alice/dev/+simple/{PROJECT}/"),
        ("GET", world.file_path),
        ("HEAD", world.file_path),
        ("PATCH", "/alice"),
        ("PATCH", "/alice/dev"),
        ("DELETE", "/alice/prod"),
        ("DELETE", f"/alice/dev/{PROJECT}"),
        ("PUT", "/alice/fz"),
        ("POST", "/+login"),
        ("PUSH", "/alice/dev"),
        ("PATCH", f"/alice/dev/{PROJECT}/{VERSION}"),
        ("DELETE", world.file_path),
    ]
    bodies = {
        "PATCH": {"title": "lower"},
        "PUT": {"password": "pw"},
        "POST": {"user": "alice", "password": "alicepw"},
        "PUSH": {"name": PROJECT, "version": VERSION, "targetindex": "alice/prod"},
    }
    unknown = ["FOO", "BREW", "PROPFIND", "MKCOL", "LOCK", "TRACE", "CONNECT", "SEARCH", "PURGE", "X" * 200]
    not_here = [
        ("POST", "/+api"),
        ("PUT", "/+status"),
        ("DELETE", "/"),
        ("PATCH", "/+login"),
        ("GET", "/+login"),
        ("PUT", "/"),
        ("POST", "/alice"),
        ("PUSH", "/alice"),
        ("DELETE", "/alice/dev/+simple/"),
        ("PUT", f"/alice/dev/+simple/{PROJECT}/"),
        ("PUT", world.file_path),
        ("POST", "/root/pypi/+simple/"),
        ("PUT", f"/alice/dev/{PROJECT}/{VERSION}"),
    ]
    for _ in range(n):
        shape = rng.randrange(3)
        if shape == 0:
            method, path = rng.choice(real)
            variant = rng.choice([method.lower(), method.capitalize(), method[:-1] + method[-1].lower()])
            body = bodies.get(method)
            out.append(
                request(
                    kind,
                    "case",
                    variant,
                    path,
                    body,
                    auth=a,
                    unknown_method=True,
                    expect=frozenset({400, 405, 501}),
                )
            )
        elif shape == 1:
            method = rng.choice(unknown)
            path = rng.choice(real)[1]
            out.append(request(kind, "unknown", method, path, auth=a, unknown_method=True))
        else:
            method, path = rng.choice(not_here)
            out.append(request(kind, "not-here", method, path, bodies.get(method), auth=a))
    return out


# -- heads -----------------------------------------------------------------------


def gen_headers(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Odd heads: HTTP/1.0 and 1.1 without C{Host}, odd C{Host}, C{Accept}
    and credentials, malformed lengths and chunking.  Reads may succeed
    (C{"any"}); malformed bodies and credentials are refused.
    """
    kind = "headers"
    out = []
    reads = [
        "/",
        "/+api",
        "/alice",
        "/alice/dev",
        f"/alice/dev/+simple/{PROJECT}/",
        "/alice/dev/+simple/",
        world.file_path,
        f"/alice/dev/{PROJECT}",
        "/root/pypi/+simple/",
        "/+status",
        "/alice/dev/+api",
    ]
    login = _json({"user": "alice", "password": "alicepw"})
    patch = _json({"title": "headers"})
    for _ in range(n):
        shape = rng.randrange(9)
        if shape == 0:
            # HTTP/1.0 (or 1.1) without Host: reads answer, writes are judged by their body.
            version = rng.choice([b"HTTP/1.0", b"HTTP/1.0", b"HTTP/1.1"])
            write = rng.random() < 0.3
            if write:
                h = request(
                    kind, "no-host-write", "PATCH", "/alice", raw_body=patch, auth=world.alice, expect=ANY
                )
            else:
                h = request(kind, "no-host", "GET", rng.choice(reads), expect=ANY)
            h.version, h.host = version, False
            out.append(h)
        elif shape == 1:
            value = rng.choice(
                [
                    b"",
                    b"\x00",
                    b"a b",
                    b"[::1",
                    b"x" * 10000,
                    b"127.0.0.1:3141, evil",
                    b"\xff\xfe",
                    b"evil.example:80",
                    b"127.0.0.1:99999",
                    b"@",
                    b"%00",
                ]
            )
            h = request(kind, "odd-host", "GET", rng.choice(reads), expect=ANY)
            h.host = False
            h.headers.insert(0, (b"Host", value))
            out.append(h)
        elif shape == 2:
            value = rng.choice(
                [
                    "application/json;q=nan",
                    "*/*;q=1e999",
                    ";;;",
                    ",,,",
                    "text/html;q=-1",
                    "application/json;q=" + "9" * 5000,
                    "\xff\xfe",
                    "a/b/c",
                    "*",
                ]
            )
            h = request(kind, "odd-accept", "GET", rng.choice(reads), expect=ANY)
            h.headers = [(b"Accept", value.encode("latin-1"))]
            out.append(h)
        elif shape == 3:
            value = rng.choice(
                [
                    b"Basic !!!",
                    b"Basic " + base64.b64encode(b"no-colon"),
                    b"Basic " + base64.b64encode(b"\xff\xfe:x"),
                    b"Basic " + base64.b64encode(b"alice:\xff"),
                    b"Bearer x",
                    b"Basic " + b"A" * 10000,
                    b"Basic",
                    b"Basic " + base64.b64encode(b"..:x"),
                    b"Basic " + base64.b64encode(b":"),
                ]
            )
            name = rng.choice([b"Authorization", b"X-Devpi-Auth"])
            if name == b"X-Devpi-Auth":
                value = value.split(b" ", 1)[-1]
            write = rng.random() < 0.5
            if write:
                h = request(kind, "bad-credentials-write", "PATCH", "/alice", raw_body=patch)
            else:
                h = request(
                    kind, "bad-credentials-read", "GET", rng.choice(reads + ["/alice/dev/+api"]), expect=ANY
                )
            h.headers.append((name, value))
            out.append(h)
        elif shape == 4:
            value = rng.choice(
                [
                    b"-1",
                    b"abc",
                    b"1, 2",
                    b" 5",
                    b"+5",
                    b"0x10",
                    b"99999999999999999999",
                    b"5 5",
                    b"1e3",
                    b"",
                    b"\x00",
                ]
            )
            target, body = rng.choice([("/+login", login), ("/alice", patch)])
            method = "POST" if target == "/+login" else "PATCH"
            h = request(kind, "bad-length", method, target, raw_body=body, auth=world.alice)
            h.length = False
            h.headers.append((b"Content-Length", value))
            out.append(h)
        elif shape == 5:
            h = request(kind, "two-lengths", "POST", "/+login", raw_body=login)
            h.length = False
            h.headers += [
                (b"Content-Length", b"%d" % len(login)),
                (b"Content-Length", b"%d" % (len(login) - 3)),
            ]
            out.append(h)
        elif shape == 6:
            case = rng.randrange(4)
            chunked = b"%x\r\n" % len(login) + login + b"\r\n0\r\n\r\n"
            h = request(kind, "bad-chunked", "POST", "/+login")
            h.length = False
            if case == 0:
                h.body = b"zz\r\n" + login + b"\r\n0\r\n\r\n"
                h.headers.append((b"Transfer-Encoding", b"chunked"))
            elif case == 1:
                h.body = chunked
                h.headers += [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")]
            elif case == 2:
                h.body = login
                h.headers.append((b"Transfer-Encoding", b"gzip"))
            else:
                h.body = b"-5\r\n" + login + b"\r\n0\r\n\r\n"
                h.headers.append((b"Transfer-Encoding", b"chunked"))
            out.append(h)
        elif shape == 7:
            case = rng.randrange(6)
            h = request(kind, "odd-header-line", "GET", rng.choice(reads), expect=ANY)
            if case == 0:
                # A header line without a colon.
                h.raw = h.wire(world.host).replace(b"\r\n\r\n", b"\r\nNoColon\r\n\r\n", 1)
            else:
                h.headers.append(
                    [
                        (b"Bad Name", b"x"),
                        (b"X-Fold", b"a\r\n continued"),
                        (b"X-Nul", b"a\x00b"),
                        (b"X-High", b"\xff\xfe\xfd"),
                        (b"", b"empty-name"),
                    ][case - 1]
                )
            out.append(h)
        else:
            value = rng.choice(
                [
                    "javascript:alert(1)",
                    "http://" + "a" * 5000,
                    "",
                    "//evil",
                    "http://x/\x7f",
                    "ftp://x",
                    "http://[::1",
                ]
            )
            h = request(
                kind,
                "odd-outside-url",
                "GET",
                rng.choice(["/+api", "/alice/dev/+simple/", "/+login"]),
                expect=ANY,
            )
            h.headers.append((b"X-Outside-Url", value.encode("latin-1")))
            out.append(h)
    return out


def gen_oversized(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Request lines and heads too large to take (up to a 100 KB request
    line, a 1 MB header, 5,000 headers): 414 for a request line, 431 for
    headers, answered before the connection is closed.
    """
    kind = "oversized"
    out = []
    for _ in range(n):
        shape = rng.randrange(4)
        if shape == 0:
            size = rng.choice([20_000, 100_000])
            h = request(kind, "long-request-line", "GET", "/" + "a" * size, expect=frozenset({414}))
        elif shape == 1:
            size = rng.choice([20_000, 100_000, 1_000_000])
            h = request(kind, "huge-header", "GET", "/+api", expect=frozenset({431}))
            h.headers.append((b"X-Huge", b"h" * size))
        elif shape == 2:
            count = rng.choice([600, 5000])
            h = request(kind, "many-headers", "GET", "/+api", expect=frozenset({431}))
            h.headers += [(b"X-H%d" % i, b"v") for i in range(count)]
        else:
            count = rng.choice([2000, 3000])
            h = request(kind, "large-head", "GET", "/+api", expect=frozenset({431}))
            h.headers += [(b"X-Large-%d" % i, b"v" * 40) for i in range(count)]
        out.append(h)
    return out


#: The kinds, in order, with their generators and a default count.
GENERATORS: dict[str, tuple[Callable[..., list[Hostile]], int]] = {
    "names_user": (gen_names_user, 300),
    "names_index": (gen_names_index, 300),
    "names_project": (gen_names_project, 300),
    "json_malformed": (gen_json_malformed, 300),
    "types_user": (gen_types_user, 150),
    "types_index": (gen_types_index, 200),
    "types_login": (gen_types_login, 100),
    "types_yank": (gen_types_yank, 100),
    "push": (gen_push, 200),
    "push_loopback": (gen_push_loopback, 20),
    "push_external": (gen_push_external, 20),
    "multipart": (gen_multipart, 200),
    "toxresult": (gen_toxresult, 150),
    "methods": (gen_methods, 200),
    "headers": (gen_headers, 250),
    "oversized": (gen_oversized, 30),
}


def gen_endless_body(rng: random.Random, world: World, n: int) -> list[Hostile]:
    """
    Bodies that keep coming (real sockets only: C{stream}): far over the
    JSON cap, with a length or chunked, on a 60-character user name and
    on JSON routes (413 is the answer, sent before the connection is
    closed); an upload without credentials (refused).
    """
    kind = "endless_body"
    out = []
    for _ in range(n):
        shape = rng.randrange(4)
        if shape == 0:
            h = request(kind, "long-user", "PUT", "/" + "u" * 60, expect=frozenset({413}))
        elif shape == 1:
            h = request(kind, "patch-user", "PATCH", "/alice", auth=world.alice, expect=frozenset({413}))
        elif shape == 2:
            h = request(kind, "login", "POST", "/+login", expect=frozenset({413}))
        else:
            content_type, _ = upload_form(PROJECT, VERSION, *world_wheel())
            h = request(kind, "upload-anonymous", "POST", "/alice/dev/", content_type=content_type)
        h.length = False
        h.stream = rng.choice([5, 20, 50]) * 1024 * 1024
        h.chunked = shape == 2
        if h.chunked:
            h.headers.append((b"Transfer-Encoding", b"chunked"))
        else:
            h.headers.append((b"Content-Length", b"%d" % h.stream))
        out.append(h)
    return out


#: Kinds only the real-socket script sends.
SOCKET_ONLY: dict[str, tuple[Callable[..., list[Hostile]], int]] = {
    "endless_body": (gen_endless_body, 30),
}


def generate(kind: str, world: World, seed: int, n: int | None = None, **kw) -> list[Hostile]:
    """
    The requests of one kind, the same for the same seed.
    """
    make, default = GENERATORS.get(kind) or SOCKET_ONLY[kind]
    return make(random.Random(f"{seed}:{kind}"), world, default if n is None else n, **kw)


def setup_steps(alice_password: str = "alicepw") -> Iterable[tuple[str, str, object]]:
    """
    The requests that make the world (after root has logged in): (method,
    path, JSON body); then upload L{world_wheel} to C{alice/dev} as alice.
    """
    yield "PUT", "/alice", {"password": alice_password, "email": "alice@example.com"}
    yield "PUT", "/alice/dev", {"bases": "root/pypi"}
    yield "PUT", "/alice/prod", {}


def file_path(data: bytes, filename: str, stage: str = "alice/dev") -> str:
    sha = hashlib.sha256(data).hexdigest()
    return f"/{stage}/+f/{sha[:3]}/{sha[3:16]}/{filename}"

"""
Hostile requests against the in-memory server (issue 14): a seeded
generator over the routes (L{tests.hostile}) sends a few thousand
malformed requests, one kind per test, each on a connection of its own
as raw bytes, and checks every answer:

  - it came (a status line; iosim has no resets, so the connections the
    issue saw closed with no answer show up here as a wrong status, not
    as silence: see C{benchmarks/fuzz_hostile.py} for real sockets);
  - it is not 5xx (501 for a method the server does not know is fine);
  - a request that must be refused is not answered 2xx, and one that
    must get a given status gets it;
  - unless it was 2xx, the state is as before: the serial, every key and
    value, and the blob files on disk.

A failure names each request that broke a rule (its request line and an
excerpt of its body and of the answer) and counts by rule and case.
"""

from __future__ import annotations

import os
import re
from collections import Counter

import attrs
import pytest

from .hostile import (
    GENERATORS,
    PROJECT,
    VERSION,
    Hostile,
    World,
    file_path,
    generate,
    upload_form,
    world_wheel,
)

#: The seed of every generator (each kind draws from its own stream).
SEED = 14

#: Kinds the server fails today; each fix makes its test XPASS, which
#: fails the suite (strict) until the mark is removed here.
KNOWN_FAILURES: dict[str, str] = {}

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")


@pytest.fixture
def world(client, context, root, alice) -> World:
    # Throttled logins are answered at once here: the answer's hold (up to
    # a second, on the real reactor) is the throttle's tests' business.
    context.throttle.limits = attrs.evolve(context.throttle.limits, hold=0)
    for path, body in (("/alice/dev", {"bases": "root/pypi"}), ("/alice/prod", {})):
        answer = client.request("PUT", path, body, headers=alice)
        assert answer.code == 200, answer.body
    filename, data = world_wheel()
    content_type, body = upload_form(PROJECT, VERSION, filename, data)
    answer = client.request(
        "POST", "/alice/dev/", raw=body, headers={"Content-Type": content_type, **alice}, accept=None
    )
    assert answer.code == 200, answer.phrase
    context.derived_blobs.flush()
    return World(host="127.0.0.1:3141", root=root, alice=alice, file_path=file_path(data, filename))


def blob_files(context) -> frozenset[str]:
    root = context.files.root
    found = set()
    for directory, _, names in os.walk(root):
        if os.path.relpath(directory, root).split(os.sep)[0] == "tmp":
            continue
        found.update(os.path.join(directory, name) for name in names)
    return frozenset(found)


def snapshot(context) -> tuple:
    """
    The serial, every key with its value, and the blob files.
    """
    storage = context.storage
    return storage.serial, {key: storage.get(key) for key in storage.keys("")}, blob_files(context)


def changes(before: tuple, after: tuple) -> str:
    serial, kv, blobs = before
    serial2, kv2, blobs2 = after
    keys = sorted(k for k in set(kv) | set(kv2) if kv.get(k) != kv2.get(k))
    return (
        f"serial {serial}->{serial2}, keys {keys[:5]}, "
        f"blobs +{sorted(blobs2 - blobs)[:3]} -{sorted(blobs - blobs2)[:3]}"
    )


def exchange(client, hostile: Hostile, host: str) -> tuple[int | None, bytes]:
    """
    Send one request on a new connection; the status (None if no status
    line came back) and what came back.
    """
    connection = client.connect()
    connection.send(hostile.wire(host))
    client.flush()
    match = _STATUS.match(connection.received)
    if not connection.closed:
        connection.close()
        client.flush()
    return (int(match.group(1)) if match else None), connection.received


def answer_excerpt(received: bytes, limit: int = 200) -> str:
    """
    The status line and the start of the body (the headers are the same
    X-Devpi-* for every answer).
    """
    if not received:
        return "(nothing)"
    head, _, body = received.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    return repr(status_line)[2:-1] + " | " + repr(body[:limit])[2:-1]


class Run:
    """
    The outcome of one kind: counts per case and status, and the requests
    that broke a rule.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.statuses: Counter[tuple[str, str]] = Counter()
        self.problems: Counter[tuple[str, str]] = Counter()
        self.failures: list[str] = []

    def record(self, hostile: Hostile, status: int | None, problem: str | None, detail: str) -> None:
        self.statuses[(hostile.label, str(status))] += 1
        if problem is None:
            return
        self.problems[(problem, hostile.label)] += 1
        self.failures.append(f"{problem}: {status} for {hostile.describe()}\n      {detail}")

    def summary(self, shown: int = 12) -> str:
        lines = [f"{len(self.failures)} of {sum(self.statuses.values())} {self.kind} requests broke a rule:"]
        lines += [
            f"  {count:4d} {problem:14s} {label}" for (problem, label), count in self.problems.most_common()
        ]
        lines.append("first failures:")
        lines += ["  " + failure for failure in self.failures[:shown]]
        return "\n".join(lines)


def fuzz(client, context, world: World, requests: list[Hostile]) -> Run:
    run = Run(requests[0].kind if requests else "?")
    state = snapshot(context)
    for hostile in requests:
        status, received = exchange(client, hostile, world.host)
        problem = hostile.judge(status)
        detail = "answer: " + answer_excerpt(received)
        if status is not None and 200 <= status < 300:
            context.derived_blobs.flush()
            state = snapshot(context)
        else:
            after = snapshot(context)
            if after != state:
                problem = problem or "state changed"
                detail += "\n      changed: " + changes(state, after)
                state = after
        run.record(hostile, status, problem, detail)
    return run


def kinds() -> list:
    params = []
    for kind in GENERATORS:
        reason = KNOWN_FAILURES.get(kind)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(kind, marks=marks, id=kind))
    return params


@pytest.mark.parametrize("kind", kinds())
def test_hostile_requests(client, context, world, kind):
    requests = generate(kind, world, SEED)
    run = fuzz(client, context, world, requests)
    assert not run.failures, run.summary()


def test_generators_are_deterministic(world):
    for kind in GENERATORS:
        first = [h.wire(world.host) for h in generate(kind, world, SEED, n=20)]
        again = [h.wire(world.host) for h in generate(kind, world, SEED, n=20)]
        assert first == again, kind


def test_the_instrument_sees_what_it_is_meant_to(client, context, world):
    """
    The checks themselves: a 2xx for a request that must be refused is
    reported, as is a change of state by a 4xx; a refused request that
    changes nothing passes.
    """
    accepted = Hostile(kind="self", label="accepted", method=b"GET", target=b"/+api", headers=[])
    unchanged = Hostile(kind="self", label="refused", method=b"GET", target=b"/nosuch", headers=[])
    run = fuzz(client, context, world, [accepted, unchanged])
    assert [failure.split(":")[0] for failure in run.failures] == ["accepted"]
    # A 4xx whose request (here: one sent before it, on the side) changed the state.
    sneaky = Hostile(kind="self", label="sneaky", method=b"GET", target=b"/nosuch", headers=[])
    state = snapshot(context)
    client.request("PATCH", "/alice", {"title": "changed"}, headers=world.alice)
    assert snapshot(context) != state
    assert changes(state, snapshot(context)).startswith(f"serial {state[0]}->{state[0] + 1}")
    status, _ = exchange(client, sneaky, world.host)
    assert status == 404
    assert Hostile.judge(sneaky, None) == "unanswered"
    assert Hostile.judge(sneaky, 502) == "5xx"

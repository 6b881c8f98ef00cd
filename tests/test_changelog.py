"""
The primary's replication routes, in memory on one clock: who may read the
changelog (devpi's checks, in devpi's order), one entry, the waits for the
next serial, and what /+status says of the replicas.  Streams are in
test_changelog_stream.py.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from devpi_tx.auth.replicatokens import EXPIRED, MALFORMED, WRONG, ReplicaTokens
from devpi_tx.model.changes import MEDIA_TYPE, FrameParser
from devpi_tx.serverdir import read_nodeinfo
from devpi_tx.web.changelog import DISABLED, NO_EXPECTED_ID, NO_IDENTITY

from .primaryserver import REPLICA, Server


@pytest.fixture
def primary(tmp_path):
    server = Server(tmp_path)
    yield server
    server.context.close()


# -- who may ask ----------------------------------------------------------------


def test_a_standalone_server_refuses(tmp_path):
    server = Server(tmp_path, role="standalone")
    answer = server.client.get("/+changelog/0", headers=server.headers())
    assert (answer.code, answer.message) == (403, DISABLED)
    assert server.client.get("/+changelog/0-", headers=server.headers()).code == 403
    assert read_nodeinfo(server.config.serverdir)["role"] == "standalone"
    server.context.close()


def test_a_primary_says_so_in_its_nodeinfo_and_status(primary):
    assert read_nodeinfo(primary.config.serverdir)["role"] == "primary"
    result = primary.client.get("/+status").json["result"]
    assert (result["role"], result["polling_replicas"]) == ("MASTER", {})


@pytest.mark.parametrize(
    "overrides, code, message",
    [
        ({"X-DEVPI-EXPECTED-PRIMARY-ID": None, "X-DEVPI-EXPECTED-MASTER-ID": None}, 400, NO_EXPECTED_ID),
        # The header is checked before the token.
        (
            {"X-DEVPI-EXPECTED-PRIMARY-ID": None, "X-DEVPI-EXPECTED-MASTER-ID": None, "Authorization": None},
            400,
            NO_EXPECTED_ID,
        ),
        (
            {"X-DEVPI-EXPECTED-PRIMARY-ID": "f" * 32},
            400,
            "expected {uuid} as primary_uuid, replica sent " + "f" * 32,
        ),
        (
            {"X-DEVPI-EXPECTED-PRIMARY-ID": None, "X-DEVPI-EXPECTED-MASTER-ID": "e" * 32},
            400,
            "replica sent eeee",
        ),
        ({"Authorization": None}, 403, NO_IDENTITY),
        ({"Authorization": "Basic cm9vdDpyb290cHc="}, 403, NO_IDENTITY),
        ({"Authorization": "Bearer"}, 403, NO_IDENTITY),
        ({"Authorization": "Bearer nonsense"}, 403, MALFORMED),
        ({"Authorization": "Bearer a.b.!"}, 403, MALFORMED),
        ({"X-DEVPI-REPLICA-UUID": "0" * 32}, 403, WRONG),
    ],
)
def test_refusals_in_devpis_order(primary, overrides, code, message):
    for path in ("/+changelog/0", "/+changelog/0-"):
        answer = primary.client.get(path, headers=primary.headers(**overrides))
        assert answer.code == code
        assert message.format(uuid=primary.context.uuid) in answer.message


def test_tokens_of_another_secret_and_old_tokens_are_refused(primary):
    other = ReplicaTokens(b"x" * 44, clock=primary.clock.seconds)
    answer = primary.client.get(
        "/+changelog/0", headers=primary.headers(Authorization=f"Bearer {other.issue(REPLICA)}")
    )
    assert (answer.code, answer.message) == (403, WRONG)
    headers = primary.headers()
    primary.clock.advance(38)
    answer = primary.client.get("/+changelog/0", headers=headers)
    assert (answer.code, answer.message) == (403, EXPIRED)


def test_an_empty_expected_id_and_the_old_header_name_are_accepted(primary):
    primary.commit(0)
    assert (
        primary.client.get("/+changelog/0", headers=primary.headers(X_DEVPI_EXPECTED_PRIMARY_ID="")).code
        == 200
    )
    headers = primary.headers(X_DEVPI_EXPECTED_PRIMARY_ID=None)
    assert primary.client.get("/+changelog/0", headers=headers).code == 200


# -- one entry ------------------------------------------------------------------


def test_one_entry_is_one_frame(primary):
    for n in range(3):
        primary.commit(n)
    answer = primary.client.get("/+changelog/2", headers=primary.headers())
    assert answer.code == 200
    assert answer.header("Content-Type") == MEDIA_TYPE
    assert answer.header("X-Devpi-Serial") == "3"
    for name in ("X-Devpi-Uuid", "X-Devpi-Primary-Uuid", "X-Devpi-Master-Uuid"):
        assert answer.header(name) == primary.context.uuid
    [entry] = FrameParser().feed(answer.body)
    assert entry.serial == 2
    primary.entries_match([entry])


@pytest.mark.parametrize("suffix", ["", "-"])
def test_beyond_the_next_serial_is_404(primary, suffix):
    primary.commit(0)
    assert primary.client.get(f"/+changelog/3{suffix}", headers=primary.headers()).code == 404
    assert primary.client.get(f"/+changelog/99{suffix}", headers=primary.headers()).code == 404


@pytest.mark.parametrize("spec", ["x", "-1", "01", "1--", "1-2"])
def test_not_a_serial(primary, spec):
    assert primary.client.get(f"/+changelog/{spec}", headers=primary.headers()).code == 400


# -- waiting for the next serial ---------------------------------------------------


@pytest.mark.parametrize(
    "query, wait",
    [("", 30), ("?initial_fetch", 1), ("-", 30), ("-?initial_fetch", 1)],
)
def test_the_next_serial_waits_then_202(primary, query, wait):
    primary.commit(0)
    answer = primary.raw(f"/+changelog/2{query}")
    primary.clock.advance(wait - 0.01)
    primary.client.flush()
    assert not answer.started
    primary.clock.advance(0.01)
    primary.client.flush()
    assert answer.status == 202
    assert answer.header("X-Devpi-Serial") == "1"
    assert primary.feed._waiters == {}


def test_a_commit_while_waiting_starts_the_answer(primary):
    primary.commit(0)
    single = primary.raw("/+changelog/2")
    stream = primary.raw("/+changelog/2-")
    primary.clock.advance(20)
    primary.client.flush()
    assert not single.started and not stream.started
    primary.commit(1)
    primary.client.flush()
    assert single.status == stream.status == 200
    assert [e.serial for e in FrameParser().feed(single.conn.received.split(b"\r\n\r\n", 1)[1])] == [2]
    assert [e.serial for e in stream.entries()] == [2]
    assert not stream.complete
    assert primary.feed._waiters == {}


# -- /+status -----------------------------------------------------------------------


def test_status_lists_the_polling_replicas_for_a_while(primary):
    primary.commit(0)
    answer = primary.raw("/+changelog/1-")
    record = primary.client.get("/+status").json["result"]["polling_replicas"][REPLICA]
    assert record == {
        "remote-ip": "127.0.0.1",
        "serial": 2,
        "in-request": True,
        "is-streaming": True,
        "last-request": primary.clock.seconds(),
        "outside-url": "https://replica.example.com",
    }
    primary.commit(1)
    primary.client.flush()
    assert primary.client.get("/+status").json["result"]["polling_replicas"][REPLICA]["serial"] == 3
    primary.clock.advance(30)
    primary.client.flush()
    assert answer.complete
    record = primary.client.get("/+status").json["result"]["polling_replicas"][REPLICA]
    assert (record["in-request"], record["is-streaming"]) == (False, False)
    assert record["last-request"] == primary.clock.seconds()
    primary.clock.advance(299)
    assert REPLICA in primary.client.get("/+status").json["result"]["polling_replicas"]
    primary.clock.advance(2)
    assert primary.client.get("/+status").json["result"]["polling_replicas"] == {}


def test_polling_replicas_are_bounded():
    from devpi_tx.web.changefeed import PollingReplicas

    clock = MemoryReactorClock()
    replicas = PollingReplicas(clock, limit=3)
    for n in range(5):
        replicas.started(f"r{n}", "127.0.0.1", n, None, False)
        clock.advance(1)
        if n != 0:
            replicas.ended(f"r{n}")
    # r0 is in a request: kept; of the idle ones the latest.
    assert sorted(replicas.snapshot()) == ["r0", "r3", "r4"]

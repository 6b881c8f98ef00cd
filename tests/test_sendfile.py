"""
Large bodies sent with sendfile(2) from a worker thread (plain TCP).
"""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted

from devpi_tx.web import files as files_module
from devpi_tx.web.sendfile import SendfileBody

from .test_files import (
    SMALL,
    fetch,
    header,
    needs_proc,
    open_paths,
    raw,
    raw_request,
    server,  # noqa: F401  (the fixture)
    wait,
)


def add_big(files, name: str, size: int):
    path, sha = files.add_random(name, size)
    files.files[name]["use_sendfile"] = True
    return path, sha


@pytest.fixture
def transfers(monkeypatch) -> list[SendfileBody]:
    """
    The sendfile transfers started, in order.
    """
    made: list[SendfileBody] = []

    class Recorded(SendfileBody):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(files_module, "SendfileBody", Recorded)
    return made


@pytest_twisted.ensureDeferred
async def test_whole_file_and_ranges_are_byte_exact(server, transfers):  # noqa: F811
    size = 5 * 1024 * 1024 + 123
    path, sha = add_big(server, "big", size)
    with open(path, "rb") as f:
        data = f.read()
    response, body = await fetch(server, "big")
    assert response.code == 200
    assert hashlib.sha256(body).hexdigest() == sha
    for first, last in [(0, 2 * 1024 * 1024), (1, size - 2), (size - 1024 * 1024 - 7, size - 1)]:
        response, body = await fetch(server, "big", {"Range": f"bytes={first}-{last}"})
        assert response.code == 206
        assert header(response, "Content-Range") == [f"bytes {first}-{last}/{size}"]
        assert body == data[first : last + 1]
    # The producer was never used: the bytes went through the thread.
    assert server.bodies == [None] * len(server.bodies)
    assert len(transfers) == 4
    for transfer in transfers:  # the thread lets the file go just after the last byte
        await wait(transfer.released)


@needs_proc
@pytest_twisted.ensureDeferred
async def test_slow_reader_holds_up_nothing_but_itself(server):  # noqa: F811
    size = 40 * 1024 * 1024
    path, sha = add_big(server, "big", size)
    client = await raw(server, raw_request("GET", "big"), pause_at=1)
    await wait(client.paused)
    response, small = await fetch(server, "small")
    assert (response.code, small) == (200, SMALL)
    assert not server.requests[0].finished
    assert client.body_length < size
    assert path in open_paths()
    client.transport.resumeProducing()
    await wait(client.closed)
    assert client.body_length == size
    assert client.body_sha.hexdigest() == sha
    await wait(server.finished[0])
    assert server.requests[0].finished
    assert server.requests[0].sentLength >= size
    assert path not in open_paths()


@needs_proc
@pytest_twisted.ensureDeferred
async def test_disconnect_mid_transfer_closes_file(server, transfers):  # noqa: F811
    size = 40 * 1024 * 1024
    path, _ = add_big(server, "big", size)
    client = await raw(server, raw_request("GET", "big"), abort_at=2 * 1024 * 1024)
    await wait(client.closed)
    assert client.body_length < size
    await wait(server.finished[0])
    # The thread notices the gone client at its next send, then lets go.
    [transfer] = transfers
    await wait(transfer.released)
    assert path not in open_paths()
    assert not server.requests[0].finished
    response, small = await fetch(server, "small")
    assert (response.code, small) == (200, SMALL)


@needs_proc
@pytest_twisted.ensureDeferred
async def test_stopping_the_workers_ends_a_transfer_to_a_client_that_stopped_reading(
    server,  # noqa: F811
    transfers,
):
    """
    What the service tree does at shutdown: a transfer stuck on a client
    that reads nothing more ends (its thread notices within a second), the
    file is let go, and later large bodies go through the producer.  (Large
    enough not to fit the loopback's socket buffers, which take 36 MiB.)
    """
    size = 100 * 1024 * 1024
    path, _ = add_big(server, "big", size)
    client = await raw(server, raw_request("GET", "big"), pause_at=1)
    await wait(client.paused)
    [transfer] = transfers
    assert path in open_paths()
    server.site.sendfile_workers.stop()
    await wait(transfer.released)
    assert path not in open_paths()
    # The client's connection is dropped: a short body never passes for a
    # whole one.
    client.transport.resumeProducing()
    await wait(client.closed)
    assert client.body_length < size
    response, body = await fetch(server, "big")
    assert response.code == 200 and len(body) == size
    assert len(transfers) == 1  # the producer sent that one

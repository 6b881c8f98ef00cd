"""
The changelog entries' wire form (L{devpi_tx.model.changes}).
"""

import json

import pytest

from devpi_tx.model.changes import Entry, FrameError, FrameParser, encode_frame


def test_frames_round_trip_in_pieces_of_any_size():
    entries = [
        Entry(0, 1700000000.25, {"user/root": {"username": "root"}}),
        Entry(1, 1700000001.0, {"project/root/dev/a": {}, "version/root/dev/a/1.0": None}),
        Entry(2, 1700000002.5, {"k": "\u00e9\u6f22"}),
    ]
    stream = b"".join(
        encode_frame(e.serial, e.timestamp, json.dumps(e.changes, sort_keys=True)) for e in entries
    )
    for size in (1, 2, 7, 64, len(stream)):
        parser = FrameParser()
        got = []
        for at in range(0, len(stream), size):
            got.extend(parser.feed(stream[at : at + size]))
        assert got == entries
        assert not parser.midframe


def test_a_cut_frame_is_not_returned():
    frame = encode_frame(5, 1.5, '{"a":1}')
    parser = FrameParser()
    assert parser.feed(frame[:-1]) == []
    assert parser.midframe
    parser = FrameParser()
    assert parser.feed(frame[:3]) == []
    assert parser.midframe


@pytest.mark.parametrize(
    "data",
    [
        b"x 1.0 2\n{}",
        b"1 1.0 -2\n{}",
        b"01 1.0 2\n{}",
        b"1 1.0 2\n[]",
        b"1 1.0 3\n{x}",
        b"1" * 200,
        b"1 1.0 99999999999999\n",
    ],
)
def test_garbage_is_refused(data):
    with pytest.raises(FrameError):
        FrameParser(max_frame=1 << 20).feed(data)

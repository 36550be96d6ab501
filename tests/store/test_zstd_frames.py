import os

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from node.store.zstd_frames import ZstdFrameError, ZstdFrameTracker


def track(data: bytes, piece: int = 7) -> ZstdFrameTracker:
    tracker = ZstdFrameTracker()
    for i in range(0, len(data), piece):
        tracker.feed(data[i : i + piece])
    return tracker


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("content_size", [True, False])
@pytest.mark.parametrize("payload", [b"", b"a", b"\0" * 500_000, os.urandom(300_000), b"seamless " * 40_000])
def test_complete_frames_are_complete_and_every_cut_is_not(checksum, content_size, payload):
    frame = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=content_size).compress(payload)
    assert track(frame).complete
    for cut in {1, 4, len(frame) // 2, len(frame) - 4, len(frame) - 1}:
        if 0 < cut < len(frame):
            assert not track(frame[:cut]).complete


def test_streamed_frames_with_several_blocks():
    payload = os.urandom(1 << 20) + b"x" * (1 << 20)
    cobj = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    frame = cobj.compress(payload) + cobj.flush()
    assert track(frame, 4096).complete
    assert not track(frame[:-4], 4096).complete


def test_concatenated_and_skippable_frames():
    a = zstandard.ZstdCompressor().compress(b"one")
    b = zstandard.ZstdCompressor().compress(b"two")
    skippable = (0x184D2A51).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"xyz"
    tracker = track(a + skippable + b, 1)
    assert tracker.complete and tracker.frames == 3


def test_garbage_is_an_error():
    with pytest.raises(ZstdFrameError):
        track(b"garbage garbage")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=64))
def test_any_piece_size_gives_the_same_verdict(payload, piece):
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(payload)
    assert track(frame, piece).complete
    assert not track(frame[:-1], piece).complete

"""Bulk receiving: worker threads fill page-aligned pieces that end on PIECE_SIZE
boundaries of the body, however the bytes arrive."""

from __future__ import annotations

import ctypes
import os

import trio
from hypothesis import given
from hypothesis import strategies as st

from node.store.direct_io import ALIGN, PIECE_SIZE
from node.web import bulk

MiB = 1 << 20


@given(offset=st.integers(0, 64 * MiB), remaining=st.integers(0, 64 * MiB))
def test_piece_sizes_end_on_boundaries(offset, remaining):
    sizes = bulk.piece_sizes(offset, remaining)
    assert len(sizes) <= bulk.RECEIVE_HOP // PIECE_SIZE
    assert sum(sizes) <= remaining and all(size > 0 for size in sizes)
    assert bool(sizes) == (remaining > 0)
    end = offset
    for size in sizes:
        end += size
        assert end % PIECE_SIZE == 0 or end == offset + remaining
    if sum(sizes) < remaining:  # a hop stops short only after its full count of pieces
        assert len(sizes) == bulk.RECEIVE_HOP // PIECE_SIZE


async def test_receive_pieces_fills_aligned_pieces_whatever_the_sends():
    data = os.urandom(5 * MiB + 777)
    head = 3000  # bytes that came with the request head, received elsewhere
    a, b = trio.socket.socketpair()
    received: list[memoryview] = []

    async def send() -> None:
        view = memoryview(data)[head:]
        sizes = [1, 4095, 70_000, MiB + 3, 12_345]
        i = 0
        while view:
            n = await a.send(view[: sizes[i % len(sizes)]])
            view = view[n:]
            i += 1
        a.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        offset = head
        while True:
            pieces = await bulk.receive_pieces(b, bulk.piece_sizes(offset, len(data) - offset) or [PIECE_SIZE])
            if not pieces:
                break
            for piece in pieces:
                assert ctypes.addressof(ctypes.c_char.from_buffer(piece)) % ALIGN == 0
                offset += len(piece)
                received.append(piece)
    b.close()
    assert b"".join(received) == data[head:]
    # pieces cut short (the bytes that had arrived when a slice ended) are allowed, but
    # the receiver always asks for pieces up to the next boundary, so every boundary in
    # the body is where one piece ends and the next begins
    offsets = [head]
    for piece in received:
        offsets.append(offsets[-1] + len(piece))
    assert offsets[-1] == len(data)
    boundaries = range(PIECE_SIZE, len(data), PIECE_SIZE)
    assert boundaries and all(boundary in offsets for boundary in boundaries)

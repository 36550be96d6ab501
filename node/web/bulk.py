"""Bulk transfers on a trio socket, done by worker threads.

Large bodies are where per-piece work on the event loop costs most: a wake-up, a receive
of whatever arrived (often 64 KiB) and a copy to join the pieces again. Here a worker
thread receives straight into page-aligned pieces of the store's pool (two of 2 MiB per
hop, see ``receive_pieces``), or sends a file with ``sendfile(2)``,
with the socket switched to blocking and a kernel send/receive timeout of SLICE seconds,
for at most SLICE seconds per hop: the loop stays free, cancellation and the callers'
limits are seen between slices, and no thread outlives its hop (so none can touch a socket
the loop has closed). The socket is back in non-blocking mode whenever the loop runs.

Over TLS the bytes on the socket are not the body: ``receive_pieces_from`` fills the same
pooled pieces from a trio stream on the loop (what arrives within a slice once something
has), and ``send_file_to`` sends a file through the stream, read by worker threads one
READ_PIECE at a time (no ``sendfile``: the kernel does not encrypt here).
"""

from __future__ import annotations

import os
import socket
import struct
import time

import trio

from ..store.direct_io import PIECE_SIZE, PIECES

#: longest a worker thread works on a socket before reporting back to the loop
SLICE = 0.25
SENDFILE_MAX_CALL = 8 << 20
#: most bytes received in one worker-thread hop, in pieces of PIECE_SIZE
RECEIVE_HOP = 2 * PIECE_SIZE
_TIMEOUT = struct.pack("ll", 0, int(SLICE * 1e6))
#: bytes of a file read per worker-thread hop when it is sent through a stream (TLS)
READ_PIECE = 1 << 20


def piece_sizes(offset: int, remaining: int) -> list[int]:
    """Sizes of the next pieces of a body from *offset* on, RECEIVE_HOP // PIECE_SIZE
    pieces at most: each ends on a PIECE_SIZE boundary of the body (or at its end),
    whatever came before them (with the request head, say), so that the store can write
    them straight to disk (O_DIRECT)."""
    sizes = []
    while remaining > 0 and len(sizes) < RECEIVE_HOP // PIECE_SIZE:
        size = min(remaining, PIECE_SIZE - offset % PIECE_SIZE)
        sizes.append(size)
        offset += size
        remaining -= size
    return sizes


async def receive_pieces(sock: trio.socket.SocketType, sizes: list[int]) -> list[memoryview]:
    """Pieces of up to the given *sizes*, filled in order by one worker thread with what
    arrives within a slice once something has; [] at the peer's end of stream. A slice
    that brings nothing is repeated, so an idle peer is cut only by the caller's own
    timeout (a cancellation, seen between slices). Pieces are page-aligned memory from
    the store's pool, so that the store can write them with O_DIRECT; several per hop
    spare the event loop a wake-up per piece."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEOUT)
    pieces = [PIECES.take(size) for size in sizes]
    got = 0
    while got == 0:
        got = await trio.to_thread.run_sync(_receive_slice, sock.fileno(), pieces)
    return _filled(pieces, got)


async def sendfile(sock: trio.socket.SocketType, fd: int, count: int, *, stall_timeout: float) -> None:
    """Send the first *count* bytes of the file *fd*; trio.TooSlowError if the peer takes
    nothing for *stall_timeout* seconds, OSError if the file turns out shorter."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEOUT)
    offset = 0
    stalled = 0.0
    while offset < count:
        sent = await trio.to_thread.run_sync(_sendfile_slice, sock.fileno(), fd, offset, count - offset)
        offset += sent
        stalled = 0.0 if sent else stalled + SLICE
        if stalled >= stall_timeout:
            raise trio.TooSlowError("the peer stopped reading")


async def receive_pieces_from(stream: trio.abc.ReceiveStream, sizes: list[int]) -> list[memoryview]:
    """``receive_pieces`` for a stream (TLS): pieces of up to *sizes*, filled in order
    with what arrives within SLICE seconds once something has; [] at its end. The first
    receive waits as long as it takes (the caller's own timeouts cut an idle peer)."""
    pieces = [PIECES.take(size) for size in sizes]
    total = sum(sizes)
    got = 0
    first = 0  # the piece being filled, and how much of it is
    done = 0

    async def fill() -> bool:
        nonlocal got, first, done
        data = await stream.receive_some(min(len(pieces[first]) - done, total - got))
        if not data:
            return False
        pieces[first][done : done + len(data)] = data
        got += len(data)
        done += len(data)
        if done == len(pieces[first]):
            first, done = first + 1, 0
        return True

    if not await fill():
        return []
    with trio.move_on_after(SLICE):
        while got < total and await fill():
            pass
    return _filled(pieces, got)


async def send_file_to(stream: trio.abc.SendStream, fd: int, count: int, *, stall_timeout: float) -> None:
    """``sendfile`` for a stream (TLS): the first *count* bytes of the file *fd*, read by
    worker threads; trio.TooSlowError if the peer takes no piece for *stall_timeout*
    seconds, OSError if the file turns out shorter."""
    offset = 0
    while offset < count:
        data = await trio.to_thread.run_sync(os.pread, fd, min(READ_PIECE, count - offset), offset)
        if not data:
            raise OSError(f"file ended {count - offset} bytes early")
        with trio.fail_after(stall_timeout):
            await stream.send_all(data)
        offset += len(data)


class _Blocking:
    """The socket in blocking mode for one slice (its kernel timeout bounds each call)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        os.set_blocking(self.fd, True)

    def __exit__(self, *exc: object) -> None:
        os.set_blocking(self.fd, False)


def _sendfile_slice(sockfd: int, fd: int, offset: int, count: int) -> int:
    """Send from *offset* for up to SLICE seconds; the bytes sent."""
    deadline = time.monotonic() + SLICE
    sent = 0
    with _Blocking(sockfd):
        while sent < count and time.monotonic() < deadline:
            try:
                n = os.sendfile(sockfd, fd, offset + sent, min(count - sent, SENDFILE_MAX_CALL))
            except (BlockingIOError, InterruptedError):
                break  # the send timeout passed: the peer is not reading fast enough
            if n == 0:
                raise OSError(f"file ended {count - sent} bytes early")
            sent += n
    return sent


def _receive_slice(sockfd: int, pieces: list[memoryview]) -> int:
    """Fill *pieces* in order for up to SLICE seconds; the bytes received, or -1 at the
    peer's end of stream (or reset) with nothing received."""
    deadline = time.monotonic() + SLICE
    total = sum(len(piece) for piece in pieces)
    got = 0
    first = 0  # the piece being filled, and how much of it is
    done = 0
    with _Blocking(sockfd):
        while got < total and time.monotonic() < deadline:
            try:
                n = os.readv(sockfd, [pieces[first][done:], *pieces[first + 1 :]])
            except (BlockingIOError, InterruptedError):
                break  # the receive timeout passed: nothing more for now
            except (ConnectionResetError, BrokenPipeError):
                return got or -1
            if n == 0:
                return got or -1
            got += n
            done += n
            while first < len(pieces) and done >= len(pieces[first]):
                done -= len(pieces[first])
                first += 1
    return got


def _filled(pieces: list[memoryview], got: int) -> list[memoryview]:
    """The parts of *pieces* that the first *got* bytes received filled."""
    filled: list[memoryview] = []
    for piece in pieces:
        if got <= 0:
            break
        filled.append(piece if got >= len(piece) else piece[:got])
        got -= len(piece)
    return filled

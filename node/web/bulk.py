"""Bulk transfers on a trio socket, done by worker threads.

Large bodies are where per-piece work on the event loop costs most: a wake-up, a receive
of whatever arrived (often 64 KiB) and a copy to join the pieces again. Here a worker
thread receives straight into one new 1 MiB buffer, or sends a file with ``sendfile(2)``,
with the socket switched to blocking and a kernel send/receive timeout of SLICE seconds,
for at most SLICE seconds per hop: the loop stays free, cancellation and the callers'
limits are seen between slices, and no thread outlives its hop (so none can touch a socket
the loop has closed). The socket is back in non-blocking mode whenever the loop runs.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import trio

#: longest a worker thread works on a socket before reporting back to the loop
SLICE = 0.25
SENDFILE_MAX_CALL = 8 << 20
_TIMEOUT = struct.pack("ll", 0, int(SLICE * 1e6))


async def receive_piece(sock: trio.socket.SocketType, size: int) -> bytes | bytearray:
    """Up to *size* bytes: what arrives within a slice once something has (b"" at the
    peer's end of stream). A slice that brings nothing is repeated, so an idle peer is
    cut only by the caller's own timeout (a cancellation, seen between slices)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEOUT)
    piece = bytearray(size)
    got = 0
    while got == 0:
        got = await trio.to_thread.run_sync(_receive_slice, sock.fileno(), piece)
    if got < 0:
        return b""
    return piece if got == size else piece[:got]


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


def _receive_slice(sockfd: int, piece: bytearray) -> int:
    """Fill *piece* for up to SLICE seconds; the bytes received, or -1 at the peer's end
    of stream (or reset) with nothing received."""
    deadline = time.monotonic() + SLICE
    got = 0
    with _Blocking(sockfd), memoryview(piece) as view:
        while got < len(piece) and time.monotonic() < deadline:
            try:
                n = os.readv(sockfd, [view[got:]])
            except (BlockingIOError, InterruptedError):
                break  # the receive timeout passed: nothing more for now
            except (ConnectionResetError, BrokenPipeError):
                return got or -1
            if n == 0:
                return got or -1
            got += n
    return got

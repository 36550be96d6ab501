"""Writing large buffers with ``O_DIRECT``: from the receive buffer straight to the disk.

A buffered write copies every byte into the page cache, and the fsync before the rename
waits for whatever write-back has not finished. With ``O_DIRECT`` the disk reads the
bytes from the receive buffer itself, while the next pieces arrive and are hashed, and the
final fsync has only metadata left: about 10% less CPU per upload and no page cache taken
by write-once data, but the first read of such a buffer comes from the disk. Measured
here: up to 256 MiB both reach the same upload speed (and the page cache keeps a new
buffer in memory for the reads that often follow); a 512 MiB upload went 1.5x faster
direct, and eight concurrent ones 2.4x, as dirty pages piled up faster than write-back.
So uploads of ``buffers.direct_io_min_size`` (256 MiB) or more are written direct.
The receive buffers are page-aligned either way (``PIECES``): a pool is cheaper than
fresh memory.

The kernel accepts a direct write only when the memory address, the file offset and the
length are all multiples of the device's block size; ALIGN (4096) covers every common
device. Receivers therefore take their pieces from ``PIECES`` (page-aligned, reused) and
keep the file offsets of their pieces on ALIGN boundaries; any piece that does not
qualify (the first bytes that arrived with the request head, the tail of an odd-sized
buffer, a decompressed piece) is written through the page cache as before, by a second
descriptor of the same file. Direct and buffered pieces never share a page, so the two
never overlap. A filesystem that refuses ``O_DIRECT`` (tmpfs, some network and overlay
filesystems) is detected on the first attempt and written buffered from then on.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import sys
import threading

log = logging.getLogger("seamless_node.store")

ALIGN = 4096
#: uploads smaller than this are always written through the page cache
DIRECT_MIN_SIZE = 4 << 20
#: size of the pooled receive buffers
PIECE_SIZE = 2 << 20

_O_DIRECT = getattr(os, "O_DIRECT", 0)


def aligned_buffer(size: int) -> memoryview:
    """A new writable buffer of *size* bytes whose address is a multiple of ALIGN."""
    raw = bytearray(size + ALIGN)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(raw)) % ALIGN
    return memoryview(raw)[start : start + size]


class AlignedPool:
    """Page-aligned buffers of *size* bytes, each reused once nothing refers to it.

    Fresh memory is expensive here (a page fault and zeroing per 4 KiB: measured 0.35-0.8
    ms per MiB, as long as hashing it), so receive buffers are recycled. A buffer is handed
    out as a memoryview; that view, its slices, and anything holding them (a queued write,
    a hash in progress) keep one reference to the underlying mmap, so the buffer is free
    again exactly when its reference count is back to what it was when it was new. No
    caller has to give anything back. Up to *keep* buffers are pooled; when all are in use,
    a transient one is made."""

    def __init__(self, size: int = PIECE_SIZE, keep: int = 16) -> None:
        self.size = size
        self.keep = keep
        self._buffers: list[mmap.mmap] = []
        self._idle_refs = 0
        self._next = 0
        self._lock = threading.Lock()

    def _refs(self, index: int) -> int:
        return sys.getrefcount(self._buffers[index])

    def take(self, size: int | None = None) -> memoryview:
        """A buffer of *size* bytes (at most the pool's size; default all of it)."""
        size = self.size if size is None else size
        if size > self.size:
            return aligned_buffer(size)
        with self._lock:
            count = len(self._buffers)
            for step in range(count):
                index = (self._next + step) % count
                if self._refs(index) <= self._idle_refs:
                    self._next = index + 1
                    return memoryview(self._buffers[index])[:size]
            if count >= self.keep:
                return aligned_buffer(size)
            self._buffers.append(mmap.mmap(-1, self.size))
            if not count:
                self._idle_refs = self._refs(0)
            self._next = count + 1
            return memoryview(self._buffers[count])[:size]

    def in_use(self) -> int:
        with self._lock:
            return sum(self._refs(i) > self._idle_refs for i in range(len(self._buffers)))


#: the receive buffers of bulk transfers (web/bulk.py)
PIECES = AlignedPool()


def address_aligned(data: bytes | bytearray | memoryview) -> bool:
    """Whether *data* is writable memory starting on an ALIGN boundary (read-only
    objects such as ``bytes`` cannot be asked for their address and count as unaligned)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(data)) % ALIGN == 0
    except (TypeError, ValueError):
        return False


def qualifies(data: bytes | bytearray | memoryview, offset: int) -> bool:
    """Whether *data* can be written at *offset* with O_DIRECT."""
    size = len(data)
    return size > 0 and offset % ALIGN == 0 and size % ALIGN == 0 and address_aligned(data)


class DirectSupport:
    """Which uploads are written direct: those of *min_size* bytes or more (None: none),
    as long as the store's filesystem takes O_DIRECT writes (learnt on the first try)."""

    def __init__(self, min_size: int | None) -> None:
        self.min_size = max(min_size, DIRECT_MIN_SIZE) if min_size is not None else None
        self.usable = min_size is not None and bool(_O_DIRECT)

    def applies(self, expected_size: int | None) -> bool:
        """Whether an upload announced as *expected_size* bytes is written direct."""
        return (
            self.usable
            and self.min_size is not None
            and expected_size is not None
            and expected_size >= self.min_size
        )

    def open(self, path: str) -> int | None:
        """A second, direct descriptor of the temp file at *path*, or None."""
        if not self.usable:
            return None
        try:
            return os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | _O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.refused(str(exc))
            return None

    def refused(self, why: str) -> None:
        if self.usable:
            log.info("the buffer store's filesystem refuses O_DIRECT (%s): writing through the page cache", why)
        self.usable = False


def write_direct(fd: int, data: memoryview, offset: int, support: DirectSupport) -> bool:
    """Write all of *data* at *offset* through the direct descriptor *fd*; False (nothing
    written) when the filesystem refuses, so that the caller writes it buffered."""
    view = data
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written
    except OSError as exc:
        if exc.errno != errno.EINVAL or len(view) != len(data):
            raise
        support.refused(str(exc))
        return False
    return True

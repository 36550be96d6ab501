"""The atomic, verified write protocol for one buffer.

Theory of operation. Bytes never appear under a buffer's name until they are known to
hash to it and are on stable storage:

1. open a fresh temp file in the store-private ``.tmp`` directory (same filesystem),
   ``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600;
2. write each chunk while hashing it; enforce the size limit and the free-space reserve
   (space.py: each piece is charged before it is written) as it goes. A compressed body
   (Content-Encoding zstd or gzip) is decompressed on the way in: the checksum names the
   decompressed bytes, and those are what the store keeps, so every stored file is
   verifiable by hashing it alone. (Compression is a transfer encoding here.)
3. compare the digest with the claimed checksum: a mismatch deletes the temp file;
4. ``fsync`` the file, make it read-only (0444), ``rename`` it into place, ``fsync`` the
   directory: only then is the write acknowledged.

A crash at any point leaves at most a stray temp file, which start-up removes. The
methods here are blocking; the async service calls each of them in one thread hop.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from ..checksum import new_hasher
from ..errors import BufferTooLarge, ChecksumMismatch, StoreError, StoreFull
from .compression import Decompressor
from .direct_io import ALIGN, DirectSupport, qualifies, write_direct
from .layout import BufferLocation
from .space import SpaceGuard
from .writeback import WRITEBACK_STEP, start_writeback

log = logging.getLogger("seamless_node.store")

#: pieces at least this large are hashed and written in worker threads, while the caller
#: goes on receiving; smaller ones in the caller's thread (after those before them)
PARALLEL_MIN = 256 * 1024
#: largest single write through the page cache. Measured on Linux 6.18 / ext4: 2 MiB writes
#: (which ask for 2 MiB page-cache folios) fell into spells of 150-250 ms of kernel CPU per
#: 64 MiB instead of 12-15; 1 MiB writes never did.
BUFFERED_WRITE_MAX = 1 << 20
#: pieces of one upload being hashed or written at once, at most (bounds memory)
MAX_IN_FLIGHT = 2
_HASHERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seamless-node-hash")
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="seamless-node-write")

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def raise_for_oserror(exc: OSError, what: str) -> None:
    """Turn a disk-full error into StoreFull; re-raise anything else as StoreError."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StoreFull(f"no space left on the buffer store while {what}") from None
    raise StoreError(f"store I/O error while {what}: {exc.strerror or exc}") from exc


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PendingWrite:
    """One buffer being written. Not thread-safe; use from one task at a time.

    Large pieces are pipelined: ``feed`` hands each to a hashing lane and a writing lane
    (each takes the pieces in order, one at a time: concurrent buffered writes to one
    file were measured to spin on the inode's lock, several times slower) and returns,
    waiting only when MAX_IN_FLIGHT pieces are still busy. A piece must not be changed
    after it has been fed. Errors of a piece surface at a later ``feed`` or at
    ``verify``."""

    def __init__(
        self,
        checksum: str,
        tmp_dir: str,
        encoding: str | None,
        max_size: int | None,
        fsync: bool = True,
        *,
        expected_size: int | None = None,
        direct: DirectSupport | None = None,
        space: SpaceGuard | None = None,
    ) -> None:
        self.checksum = checksum
        #: charged with every piece before it is written (the free-space reserve)
        self._space = space
        self.encoding = encoding
        self.max_size = max_size
        self.fsync = fsync
        self.length = 0  # bytes fed so far (decompressed): the next piece's offset
        self._written = 0  # bytes written through the page cache since the last write-back
        self._flush_from = 0  # where that write-back ended
        self._hasher = new_hasher()
        self._hashing = SerialLane(_HASHERS)
        self._writing = SerialLane(_WRITERS)
        self._in_flight: deque[Future[object]] = deque()
        self._decompressor = Decompressor(encoding, self._write_piece) if encoding else None
        self.tmp_path = os.path.join(tmp_dir, f"{checksum}.{secrets.token_hex(6)}")
        self._direct_fd: int | None = None
        try:
            self._fd: int | None = os.open(self.tmp_path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise_for_oserror(exc, "creating a temp file")
        self._direct = direct
        if direct is not None and encoding is None and direct.applies(expected_size):
            try:
                # large plain uploads go to the disk with O_DIRECT where pieces allow
                self._direct_fd = direct.open(self.tmp_path)
            except OSError as exc:
                self.abort()
                raise_for_oserror(exc, "opening a temp file")

    def _write_piece(self, piece: bytes | memoryview) -> None:
        offset = self.length
        self.length += len(piece)
        if self.max_size is not None and self.length > self.max_size:
            raise BufferTooLarge(
                f"buffer is larger than the node's maximum buffer size ({self.max_size} bytes)"
            )
        assert self._fd is not None, "write already finished"
        charge = self._space.charge(len(piece)) if self._space is not None else 0
        if len(piece) >= PARALLEL_MIN:
            while len(self._in_flight) >= 2 * MAX_IN_FLIGHT:
                self._in_flight.popleft().result()
            self._in_flight.append(self._hashing.submit(self._hasher.update, piece))
            self._in_flight.append(self._writing.submit(self._write_at, piece, offset, charge))
        else:
            self._settle()  # earlier pieces first (there are rarely any)
            self._hasher.update(piece)
            self._write_at(piece, offset, charge)

    def _write_at(self, piece: bytes | memoryview, offset: int, charge: int = 0) -> None:
        """Write *piece* at *offset*: straight to the disk if it qualifies, else through
        the page cache (starting write-back now and then, see writeback.py). *charge*
        (what the piece was charged against the reserve) ends here."""
        try:
            self._write_piece_at(piece, offset)
        finally:
            if charge and self._space is not None:
                self._space.landed(charge)

    def _write_piece_at(self, piece: bytes | memoryview, offset: int) -> None:
        assert self._fd is not None
        try:
            view = memoryview(piece)
            if self._direct_fd is not None:
                # the aligned part of the piece (all of it but for an odd tail) goes direct
                direct = view[: len(view) - len(view) % ALIGN]
                if qualifies(direct, offset):
                    assert self._direct is not None
                    if write_direct(self._direct_fd, direct, offset, self._direct):
                        view = view[len(direct) :]
                        offset += len(direct)
            buffered = len(view)
            while view:
                written = os.pwrite(self._fd, view[:BUFFERED_WRITE_MAX], offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise_for_oserror(exc, "writing a buffer")
        if self.fsync and buffered:
            self._start_writeback(offset - buffered, buffered)

    def _start_writeback(self, offset: int, size: int) -> None:
        # the writing lane writes the pieces in order: [_flush_from, end) is all new
        self._written += size
        if self._written >= WRITEBACK_STEP:
            end = offset + size
            start_writeback(self._fd, self._flush_from, end - self._flush_from)  # type: ignore[arg-type]
            self._written, self._flush_from = 0, end

    def _settle(self) -> None:
        """Wait for every piece in flight; raise the first error among them."""
        failure: BaseException | None = None
        while self._in_flight:
            try:
                self._in_flight.popleft().result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                failure = failure or exc
        if failure is not None:
            raise failure

    def pipelined(self, chunk: bytes | memoryview) -> bool:
        """Whether ``feed(chunk)`` only hands the chunk to worker threads (a large plain
        piece), blocking at most until ``busy()`` is None."""
        return self._decompressor is None and len(chunk) >= PARALLEL_MIN

    def busy(self) -> Future[object] | None:
        """While MAX_IN_FLIGHT pieces are in flight: the oldest one's work, which a
        caller that must not block (an event loop) can wait for before feeding more."""
        in_flight = self._in_flight
        while in_flight and in_flight[0].done() and in_flight[0].exception() is None:
            in_flight.popleft()
        if len(in_flight) < 2 * MAX_IN_FLIGHT or in_flight[0].done():
            return None  # room (or a failure, which the next feed raises)
        return in_flight[0]

    def feed(self, chunk: bytes | memoryview) -> None:
        """Hash and write one chunk of the body, as received."""
        if self._decompressor is not None:
            self._decompressor.feed(chunk)
        else:
            self._write_piece(chunk)

    def verify(self) -> None:
        """Finish decoding and compare the digest with the claimed checksum."""
        if self._decompressor is not None:
            self._decompressor.finish()
        self._settle()
        digest = self._hasher.hexdigest()
        if digest != self.checksum:
            raise ChecksumMismatch(
                f"Incorrect checksum: the body hashes to {digest}, not {self.checksum}"
            )

    def commit(self, location: BufferLocation) -> None:
        """Make the verified temp file visible at *location* (see the module docstring)."""
        self.seal()
        self.place(location)

    def seal(self) -> None:
        """Flush the verified temp file to disk and make it read-only (step 4, first half)."""
        if self._fd is None:
            return  # sealed already
        self._settle()
        self._close_direct()
        fd, self._fd = self._fd, None
        try:
            if self.fsync:
                os.fsync(fd)
            os.fchmod(fd, 0o444)
        except OSError as exc:
            os.close(fd)
            raise_for_oserror(exc, "flushing a buffer to disk")
        os.close(fd)

    def place(self, location: BufferLocation) -> None:
        """Rename the sealed temp file to *location* and flush the directory."""
        try:
            created_dir = _ensure_directory(location.directory)
            try:
                os.rename(self.tmp_path, location.path)
            except FileNotFoundError:
                # the shard directory was removed behind the node's back: make it again
                _known_directories.discard(location.directory)
                created_dir = _ensure_directory(location.directory)
                os.rename(self.tmp_path, location.path)
            if self.fsync:
                fsync_directory(location.directory)
                if created_dir:
                    fsync_directory(os.path.dirname(location.directory))
        except OSError as exc:
            raise_for_oserror(exc, "moving a buffer into place")

    def _close_direct(self) -> None:
        if self._direct_fd is not None:
            fd, self._direct_fd = self._direct_fd, None
            os.close(fd)

    def abort(self) -> None:
        """Discard the temp file; safe to call more than once."""
        try:
            self._settle()  # no thread may still write to a closed descriptor
        except BaseException:  # noqa: BLE001 - the write is being discarded anyway
            pass
        self._close_direct()
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass
        except OSError:
            pass


_known_directories: set[str] = set()


def _ensure_directory(path: str) -> bool:
    """Create the shard directory if needed; True if it was created.

    A shard found to be a plain directory is remembered (256 of them at most per store),
    so a write does not stat it again; a symlink planted later over it still makes the
    rename fail or, if it succeeded, makes reads refuse the file."""
    if path in _known_directories:
        return False
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if os.path.islink(path) or not os.path.isdir(path):
            log.error("store shard %s is not a plain directory; run seamless-node fsck", path)
            raise StoreError(
                "the buffer store is damaged (a shard directory is not a plain directory); "
                "the operator should run seamless-node fsck"
            ) from None
        _known_directories.add(path)
        return False
    _known_directories.add(path)
    return True


class SerialLane:
    """Runs the calls submitted to it one after another, in order, on a shared executor
    (a hash must see a buffer's pieces in order; the executor's threads serve many
    uploads)."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor
        self._queue: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            self._queue.append((future, fn, args))
            start, self._running = not self._running, True
        if start:
            self._executor.submit(self._drain)
        return future

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
                future, fn, args = self._queue.popleft()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                future.set_exception(exc)

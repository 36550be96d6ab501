"""The atomic, verified write protocol for one buffer.

Theory of operation. Bytes never appear under a buffer's name until they are known to
hash to it and are on stable storage:

1. open a fresh temp file in the store-private ``.tmp`` directory (same filesystem),
   ``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600;
2. write each chunk while hashing it; enforce the size limit as it goes. A compressed body
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
from concurrent.futures import ThreadPoolExecutor

from ..checksum import new_hasher
from ..errors import BufferTooLarge, ChecksumMismatch, StoreError, StoreFull
from .compression import Decompressor
from .layout import BufferLocation
from .writeback import WRITEBACK_STEP, start_writeback

log = logging.getLogger("seamless_node.store")

#: pieces at least this large are hashed in a helper thread while they are written
PARALLEL_HASH_MIN = 256 * 1024
_HASHERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seamless-node-hash")

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
    """One buffer being written. Not thread-safe; use from one task at a time."""

    def __init__(
        self,
        checksum: str,
        tmp_dir: str,
        encoding: str | None,
        max_size: int | None,
        fsync: bool = True,
    ) -> None:
        self.checksum = checksum
        self.encoding = encoding
        self.max_size = max_size
        self.fsync = fsync
        self.length = 0  # bytes written to disk (decompressed)
        self._flushed = 0  # write-back started up to here (see writeback.py)
        self._hasher = new_hasher()
        self._decompressor = Decompressor(encoding, self._write_piece) if encoding else None
        self.tmp_path = os.path.join(tmp_dir, f"{checksum}.{secrets.token_hex(6)}")
        try:
            self._fd: int | None = os.open(self.tmp_path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise_for_oserror(exc, "creating a temp file")

    def _write_piece(self, piece: bytes) -> None:
        self.length += len(piece)
        if self.max_size is not None and self.length > self.max_size:
            raise BufferTooLarge(
                f"buffer is larger than the node's maximum buffer size ({self.max_size} bytes)"
            )
        assert self._fd is not None, "write already finished"
        if len(piece) >= PARALLEL_HASH_MIN:
            # hashing and copying into the page cache both release the GIL: overlap them
            hashed = _HASHERS.submit(self._hasher.update, piece)
            try:
                self._write_all(piece)
            finally:
                hashed.result()
        else:
            self._hasher.update(piece)
            self._write_all(piece)
        if self.fsync and self.length - self._flushed >= WRITEBACK_STEP:
            start_writeback(self._fd, self._flushed, self.length - self._flushed)
            self._flushed = self.length

    def _write_all(self, piece: bytes) -> None:
        assert self._fd is not None
        view = memoryview(piece)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise_for_oserror(exc, "writing a buffer")

    def feed(self, chunk: bytes) -> None:
        """Hash and write one chunk of the body, as received."""
        if self._decompressor is not None:
            self._decompressor.feed(chunk)
        else:
            self._write_piece(chunk)

    def verify(self) -> None:
        """Finish decoding and compare the digest with the claimed checksum."""
        if self._decompressor is not None:
            self._decompressor.finish()
        digest = self._hasher.hexdigest()
        if digest != self.checksum:
            raise ChecksumMismatch(
                f"Incorrect checksum: the body hashes to {digest}, not {self.checksum}"
            )

    def commit(self, location: BufferLocation) -> None:
        """Make the verified temp file visible at *location* (see the module docstring)."""
        assert self._fd is not None
        fd, self._fd = self._fd, None
        try:
            if self.fsync:
                os.fsync(fd)
            os.fchmod(fd, 0o444)
        except OSError as exc:
            os.close(fd)
            raise_for_oserror(exc, "flushing a buffer to disk")
        os.close(fd)
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

    def abort(self) -> None:
        """Discard the temp file; safe to call more than once."""
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

"""BufferStore: content-addressed files on disk, written atomically and read verified.

This is the blocking core; ``node.store.service.BufferService`` is the async API that every
ingress path (HTTP PUT, peer fetch, download index, job output, ...) goes through, calling
each method here in a single thread hop.

The directory is compatible with Seamless's hashserver in both directions: the node can
serve a hashserver directory (prefix or flat layout, plain or compressed files) and
hashserver can serve the node's.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass
from typing import Collection, Iterable, Iterator

from ..checksum import new_hasher, parse_checksum
from ..errors import ChecksumMismatch, StoreError, StoreReadOnly
from . import layout as L
from .direct_io import DirectSupport
from .lengths import CompressedLengths
from .locks import DEFAULT_LOCK_TIMEOUT, lock_in_force, lock_paths
from .reader import OpenedBuffer, VerifiedReader, open_in_shard, open_shard
from .space import SpaceGuard
from .verified import VERIFIED_MIN_SIZE, FileStamp, VerifiedFiles
from .writer import PendingWrite

log = logging.getLogger("seamless_node.store")



@dataclass(frozen=True)
class StoreRoot:
    """One directory of buffers: the primary store or a read-only extra directory."""

    path: str
    layout: L.Layout


def _stat_in_shard(dir_fd: int, shard: str, checksum: str) -> tuple[L.BufferLocation, int] | None:
    """The first regular stored variant of *checksum* in an open shard: the plain file
    first (by far the common case), compressed variants only when it is absent."""
    for encoding, suffix in L.ENCODING_SUFFIXES.items():
        try:
            st = os.stat(checksum + suffix, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            return L.BufferLocation(shard, checksum + suffix, encoding), st.st_size
    return None


def _ensure_private_directory(path: str) -> None:
    """Create a node-private directory; refuse one that is a symlink or not a directory
    (emptying a planted symlink's target would delete files outside the store)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(
                f"{path} must be a plain directory, not a symlink or file; "
                "remove it and start again"
            ) from None


class BufferStore:
    """Blocking operations on the buffer directory. Thread-safe: no shared mutable state
    other than the filesystem, whose renames are atomic."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        readonly: bool = False,
        max_buffer_size: int | None = None,
        layout: L.Layout | None = None,
        extra_dirs: Iterable[str | os.PathLike[str]] = (),
        fsync: bool = True,
        reserve_free_bytes: int = 0,
        verified_ttl: float = 0.0,
        direct_io_min_size: int | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        #: how long another tool's lock file is honoured (see locks.py)
        self.lock_timeout = lock_timeout
        #: verified lengths of compressed files (see lengths.py)
        self._compressed_lengths = CompressedLengths()
        self._commit_locks = [threading.Lock() for _ in range(64)]
        #: which uploads are written with O_DIRECT (see direct_io.py); None: none
        self.direct_io = DirectSupport(direct_io_min_size)
        #: recently verified files, read again without re-hashing (see verified.py)
        self.verified = VerifiedFiles(verified_ttl)
        self.directory = os.path.abspath(os.fspath(directory))
        self.readonly = readonly
        self.max_buffer_size = max_buffer_size
        self.fsync = fsync
        self.reserve_free_bytes = reserve_free_bytes
        self._requested_layout = layout
        self._extra_dirs = [os.path.abspath(os.fspath(d)) for d in extra_dirs]
        self.layout: L.Layout = layout or "prefix"
        self.roots: list[StoreRoot] = []
        #: the free-space reserve, charged as bytes land (see space.py)
        self.space = SpaceGuard(self.directory, reserve_free_bytes)
        self.tmp_dir = os.path.join(self.directory, L.TMP_DIR)
        self.quarantine_dir = os.path.join(self.directory, L.QUARANTINE_DIR)

    # -- start-up -------------------------------------------------------------------

    def open(self, *, clear_tmp: bool = True) -> None:
        """Create (or check) the directory, pick the layout, clear stale temp files.

        ``clear_tmp=False`` opens a store that a running node may be using (fsck)."""
        if self.readonly:
            if not os.path.isdir(self.directory):
                raise StoreError(f"buffer directory {self.directory!r} does not exist")
        else:
            os.makedirs(self.directory, exist_ok=True)
        self.layout = self._requested_layout or L.detect_layout(self.directory)
        if not self.readonly:
            sentinel = os.path.join(self.directory, L.PREFIX_SENTINEL)
            if self.layout == "prefix" and not os.path.exists(sentinel):
                with open(sentinel, "wb") as f:
                    f.write(L.PREFIX_SENTINEL_CONTENT)
            for private in (self.quarantine_dir, self.tmp_dir):
                _ensure_private_directory(private)
            if clear_tmp:
                stale = self.clear_tmp()
                if stale:
                    log.warning("removed %d unfinished write(s) left by an earlier run", stale)
        self.roots = [StoreRoot(self.directory, self.layout)] + [
            StoreRoot(d, L.detect_layout(d)) for d in self._extra_dirs
        ]

    def clear_tmp(self) -> int:
        count = 0
        for entry in os.scandir(self.tmp_dir):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                count += 1
            except OSError as exc:
                log.warning("cannot remove stale temp file %s: %s", entry.path, exc)
        return count

    # -- locating -------------------------------------------------------------------

    def _locations(self, root: StoreRoot, checksum: str) -> list[L.BufferLocation]:
        return L.candidate_locations(root.path, checksum, root.layout)

    def open_buffer(self, checksum: str, accept: Collection[str] = ()) -> OpenedBuffer | None:
        """Open the first stored variant of *checksum* (primary store, then extra dirs):
        the plain file, else a compressed one the client accepts as stored, else any."""
        parse_checksum(checksum)
        for root in self.roots:
            locations = self._locations(root, checksum)
            locations.sort(key=lambda loc: (loc.encoding is not None, loc.encoding not in accept))
            dir_fd = open_shard(locations[0].directory, nofollow=root.layout == "prefix")
            if dir_fd is None:
                continue
            try:
                for location in locations:
                    opened = open_in_shard(dir_fd, location)
                    if opened is not None:
                        return opened
            finally:
                os.close(dir_fd)
        return None

    def root_of(self, location: L.BufferLocation) -> StoreRoot | None:
        for root in self.roots:
            if location.directory == root.path or os.path.dirname(location.directory) == root.path:
                return root
        return None

    def locked(self, checksum: str, location: L.BufferLocation | None = None) -> bool:
        """Whether another tool's lock file is in force for *checksum* (see locks.py): in
        *location*'s directory, or in any of the store's directories."""
        roots = self.roots
        if location is not None:
            root = self.root_of(location)
            roots = [root] if root is not None else roots
        names = (location.filename,) if location is not None else ()
        return any(
            lock_in_force(lock_paths(r.path, r.layout, checksum, names), self.lock_timeout)
            for r in roots
        )

    def _stat_many(self, checksums: list[str]) -> list[tuple[L.BufferLocation, int] | None]:
        """For each checksum, its first regular stored file and that file's size."""
        results: list[tuple[L.BufferLocation, int] | None] = [None] * len(checksums)
        for root in self.roots:
            by_shard: dict[str, list[int]] = {}
            for i, cs in enumerate(checksums):
                if results[i] is None:
                    by_shard.setdefault(L.shard_directory(root.path, cs, root.layout), []).append(i)
            for shard, indices in by_shard.items():
                dir_fd = open_shard(shard, nofollow=root.layout == "prefix")
                if dir_fd is None:
                    continue
                try:
                    for i in indices:
                        results[i] = _stat_in_shard(dir_fd, shard, checksums[i])
                finally:
                    os.close(dir_fd)
        return results

    def has_many(self, checksums: list[str]) -> list[bool]:
        return [r is not None for r in self._stat_many(checksums)]

    def lengths(self, checksums: list[str]) -> list[int]:
        """Decompressed lengths; 0 for an absent buffer (as hashserver answers). A
        compressed file's length is verified, never read from its sidecar (lengths.py)."""
        out: list[int] = []
        for cs, found in zip(checksums, self._stat_many(checksums)):
            if found is None:
                out.append(0)
            elif found[0].encoding is None:
                out.append(found[1])
            else:
                out.append(self._verified_length(cs))
        return out

    def _verified_length(self, checksum: str) -> int:
        opened = self.open_buffer(checksum)
        if opened is None:
            return 0
        if opened.location.encoding is None:
            os.close(opened.fd)
            return opened.stored_size
        return self._compressed_lengths.length(opened, checksum, self.quarantine)

    # -- reading --------------------------------------------------------------------

    def open_reader(self, checksum: str, accept: set[str] = frozenset()) -> VerifiedReader | None:  # type: ignore[assignment]
        opened = self.open_buffer(checksum, accept)
        if opened is None:
            return None
        stored = opened.location.encoding
        send = stored if stored is not None and stored in accept else None
        return VerifiedReader(opened, checksum, send, self.verified, on_corrupt=self.quarantine)

    def read(self, checksum: str) -> bytes | None:
        """The whole buffer, verified; None if absent. Raises CorruptBuffer (and
        quarantines the file) if it no longer matches its name."""
        reader = self.open_reader(checksum)
        if reader is None:
            return None
        return reader.read_all()

    # -- writing --------------------------------------------------------------------

    def primary_location(self, checksum: str) -> L.BufferLocation:
        """Where a new buffer is written: always the plain (decompressed) file."""
        return L.candidate_locations(self.directory, checksum, self.layout)[0]

    def begin_write(self, checksum: str, encoding: str | None, expected_size: int | None = None) -> PendingWrite:
        parse_checksum(checksum)
        if self.readonly:
            raise StoreReadOnly("this buffer store is read-only")
        if expected_size:
            self.space.check(expected_size)  # refused before any byte is read
        return PendingWrite(
            checksum,
            self.tmp_dir,
            encoding,
            self.max_buffer_size,
            self.fsync,
            expected_size=expected_size,
            direct=self.direct_io,
            space=self.space,
        )

    def finish_write(self, pending: PendingWrite, *, check_exists: bool = True) -> bool:
        """Verify and commit; True if the buffer is new, False if it was already there.

        On any error the temp file is removed and nothing becomes visible."""
        try:
            pending.verify()
            if check_exists and self._stat_many([pending.checksum])[0] is not None:
                pending.abort()
                return False
            pending.seal()
            location = self.primary_location(pending.checksum)
            # concurrent uploads of one checksum: exactly one is placed, the others find it
            with self._commit_locks[int(pending.checksum[:2], 16) % len(self._commit_locks)]:
                if check_exists and self._stat_many([pending.checksum])[0] is not None:
                    pending.abort()
                    return False
                pending.place(location)
            if pending.length >= VERIFIED_MIN_SIZE:
                self._remember_written(pending.checksum, location)
            return True
        except BaseException:
            pending.abort()
            raise

    def _remember_written(self, checksum: str, location: L.BufferLocation) -> None:
        """The node hashed this upload itself: a read soon after need not hash it again."""
        try:
            st = os.stat(location.path, follow_symlinks=False)
        except OSError:
            return
        self.verified.remember(checksum, FileStamp.of(st))

    def put(self, checksum: str, data: bytes, encoding: str | None = None) -> bool:
        """Store a whole in-memory buffer (the same protocol as a streamed write).

        The bytes are verified even when the buffer is already there (hashing a small
        body costs little): a wrong body is refused, never acknowledged as present."""
        parse_checksum(checksum)
        if encoding is None and self._stat_many([checksum])[0] is not None:
            hasher = new_hasher()
            hasher.update(data)
            if hasher.hexdigest() != checksum:
                raise ChecksumMismatch(
                    f"Incorrect checksum: the body hashes to {hasher.hexdigest()}, not {checksum}"
                )
            return False
        pending = self.begin_write(checksum, encoding, len(data))
        try:
            pending.feed(data)
        except BaseException:
            pending.abort()
            raise
        return self.finish_write(pending)

    # -- damage -----------------------------------------------------------------------

    def changed_since(self, location: L.BufferLocation, stamp: FileStamp | None) -> bool:
        """Whether the file at *location* is no longer the one stamped *stamp* (written
        to, replaced or removed since)."""
        if stamp is None:
            return False
        try:
            return FileStamp.of(os.stat(location.path, follow_symlinks=False)) != stamp
        except OSError:
            return True

    def quarantine(
        self, location: L.BufferLocation, reason: str, stamp: FileStamp | None = None
    ) -> str | None:
        """Move a damaged file (and a compressed file's length sidecar) out of the store;
        return where it went. The one place where the store judges a file damaged: a
        file under another tool's lock (locks.py), or changed since it was opened (as
        *stamp*), may still be being written, and is left alone; so is a file outside
        the store or in a read-only one."""
        checksum = location.filename.split(".", 1)[0]
        if self.locked(checksum, location) or self.changed_since(location, stamp):
            log.warning(
                "buffer %s failed verification (%s) while being written: left in place", location.path, reason
            )
            return None
        if self.readonly or not location.path.startswith(self.directory + os.sep):
            log.error("corrupt buffer %s (%s); store is read-only, left in place", location.path, reason)
            return None
        os.makedirs(self.quarantine_dir, exist_ok=True)
        moved_at = time.time_ns()
        target = os.path.join(self.quarantine_dir, f"{location.filename}.{moved_at}")
        try:
            os.rename(location.path, target)
        except FileNotFoundError:
            return None
        self.verified.forget(checksum)
        if location.encoding is not None:
            sidecar = checksum + L.LENGTH_SIDECAR_SUFFIX
            try:
                os.rename(
                    os.path.join(location.directory, sidecar),
                    os.path.join(self.quarantine_dir, f"{sidecar}.{moved_at}"),
                )
            except OSError:
                pass
        log.error("quarantined %s: %s", location.path, reason)
        return target

    def shards(self) -> list[str]:
        """The primary store's shard directories (the store itself in a flat layout)."""
        root = self.directory
        if self.layout == "prefix":
            return sorted(
                e.path for e in os.scandir(root) if len(e.name) == 2 and e.is_dir(follow_symlinks=False)
            )
        return [root]

    def iter_files(self) -> Iterator[tuple[str, L.BufferLocation]]:
        """Every buffer file in the primary store, as (checksum, location); for fsck."""
        for shard in self.shards():
            for entry in sorted(os.scandir(shard), key=lambda e: e.name):
                parsed = L.encoding_of_filename(entry.name)
                if parsed is None:
                    continue
                name, encoding = parsed
                if len(name) != 64 or entry.name.startswith("."):
                    continue
                yield name, L.BufferLocation(shard, entry.name, encoding)

"""Which stored files were verified recently, so that re-reading them skips the re-hash.

security.md rule 3 allows a read to be verified while streaming *or* on a schedule. The
node re-hashes every read by default, except for a file it verified itself (it hashed the
upload that wrote it, or it hashed the whole file on an earlier read) less than
``buffers.verified_ttl`` seconds ago and whose identity is unchanged: same device, inode,
size, modification and change times. Anything that rewrites, replaces, truncates or
``touch``es the file changes that identity (the change time cannot be set back by a user),
so only damage below the filesystem (bit rot) can go unseen, and for at most the TTL;
``seamless-node fsck`` finds it. Without re-hashing, a large read costs a ``sendfile``
instead of a SHA-256 pass (measured: the hash is what limited large GETs).

Bookkeeping only (no I/O; the clock is injected), safe to use from the store's threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

#: only files at least this large are remembered: smaller ones cost little to re-hash, and
#: many small reads must not push the large files out of the bounded table
VERIFIED_MIN_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class FileStamp:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStamp":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class VerifiedFiles:
    """checksum -> (stamp, when verified), bounded, least recently verified dropped first."""

    def __init__(self, ttl: float, *, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[FileStamp, float]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, checksum: str, stamp: FileStamp) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[checksum] = (stamp, self._clock())
            self._entries.move_to_end(checksum)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def is_verified(self, checksum: str, stamp: FileStamp) -> bool:
        with self._lock:
            entry = self._entries.get(checksum)
            if entry is None:
                return False
            known, when = entry
            if known != stamp or self._clock() - when >= self.ttl:
                del self._entries[checksum]
                return False
            return True

    def forget(self, checksum: str) -> None:
        with self._lock:
            self._entries.pop(checksum, None)

    def __len__(self) -> int:
        return len(self._entries)

"""The free-space reserve: bytes are counted as they land, not as they are announced.

Theory of operation. The buffer store shares its filesystem with the result database
(and the job directories): ``buffers.reserve_free_bytes`` is the room that buffer writes
must leave free, so that a database write never fails for space that buffers took. A
declared length proves nothing (a compressed body expands, a chunked body has no length,
a peer or a job may send more than it said), so every write charges its bytes here
*before* writing them, piece by piece, after decompression: a piece that would leave less
than the reserve free is refused (StoreFull, HTTP 507) and the write is abandoned, its
temp file removed.

The estimate of free space is a ``statvfs`` reading minus what was charged since. A
reading is reused for ``ttl`` seconds, but never near the reserve: when the estimate comes
within ``near`` bytes of it, every charge reads again, and a refusal is only ever based on
a fresh reading. Charged bytes whose write has not finished yet (``in_flight``) are not
yet visible to ``statvfs`` and are subtracted from each fresh reading; ``landed`` ends a
charge. Bytes are charged in whole filesystem blocks.

Thread-safe: the store's writing threads charge concurrently.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

from ..errors import StoreFull

#: a reading of free space is reused for this long, far from the reserve (seconds)
FREE_SPACE_TTL = 1.0
#: within this many bytes of the reserve, every charge reads free space again
NEAR_RESERVE = 64 << 20


class SpaceGuard:
    """Admits writes to the store's filesystem while they leave *reserve* bytes free."""

    def __init__(
        self,
        directory: str,
        reserve: int,
        *,
        ttl: float = FREE_SPACE_TTL,
        near: int = NEAR_RESERVE,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.reserve = reserve
        self._ttl = ttl
        self._near = near
        self._statvfs = statvfs
        self._clock = clock
        self._lock = threading.Lock()
        self._free = 0  # estimate: the last reading minus what was charged since
        self._read_at = -float("inf")
        self._block = 4096
        #: bytes charged whose write has not finished
        self.in_flight = 0

    def _refresh(self) -> None:
        try:
            st = self._statvfs(self.directory)
        except OSError as exc:
            from .writer import raise_for_oserror

            raise_for_oserror(exc, "checking free space")
            return
        self._block = max(st.f_frsize, 512)
        self._free = st.f_bavail * st.f_frsize - self.in_flight
        self._read_at = self._clock()

    def _rounded(self, nbytes: int) -> int:
        block = self._block
        return -(-nbytes // block) * block

    def _admit(self, nbytes: int, *, keep: bool) -> int:
        with self._lock:
            size = self._rounded(nbytes)
            fresh = False
            if self._clock() - self._read_at > self._ttl or self._free - size < self.reserve + self._near:
                self._refresh()
                size = self._rounded(nbytes)
                fresh = True
            if self._free - size < self.reserve:
                if not fresh:
                    self._refresh()
                    size = self._rounded(nbytes)
                if self._free - size < self.reserve:
                    raise StoreFull(
                        f"not enough free space on the buffer store: {max(self._free, 0)} bytes "
                        f"free, {nbytes} more would leave less than the reserve of "
                        f"{self.reserve} bytes (buffers.reserve_free_bytes)"
                    )
            if keep:
                self._free -= size
                self.in_flight += size
            return size

    def check(self, nbytes: int) -> None:
        """Refuse up front a write announced as *nbytes* that cannot fit (charges nothing:
        the bytes are charged as they land)."""
        self._admit(nbytes, keep=False)

    def charge(self, nbytes: int) -> int:
        """Admit *nbytes* about to be written, or raise StoreFull; return the charge to
        pass to ``landed`` once the write has finished (or failed)."""
        return self._admit(nbytes, keep=True)

    def landed(self, charge: int) -> None:
        """The write of a charge has finished: its bytes now show in ``statvfs``."""
        with self._lock:
            self.in_flight -= charge

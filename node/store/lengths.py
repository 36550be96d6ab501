"""Verified decompressed lengths of compressed files (``/buffer-length``).

A compressed file's ``.BUFFERLENGTH`` sidecar is a hint, never an answer: the file is
decoded as stored (hashing and counting the decompressed bytes, which also checks the
sidecar; see ``VerifiedReader``), in bounded pieces, and only a file that verifies gives a
length. The verified length is remembered while the file is unchanged (same path, stamp
and sidecar value), so asking again costs a stat. A damaged file is quarantined by the
reader and counts as absent (0).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from ..errors import StoreError
from .reader import OnCorrupt, OpenedBuffer, VerifiedReader

#: compressed files whose verified length is remembered, at most
MAX_ENTRIES = 10_000


class CompressedLengths:
    """checksum -> (file identity, verified length); thread-safe, bounded."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[tuple[object, ...], int]] = OrderedDict()
        self._lock = threading.Lock()

    def length(self, opened: OpenedBuffer, checksum: str, on_corrupt: OnCorrupt | None) -> int:
        """The decompressed length of the opened compressed file; 0 if it does not verify.
        Closes the file."""
        key = (opened.location.path, opened.stamp, opened.length)
        with self._lock:
            known = self._entries.get(checksum)
        if known is not None and known[0] == key:
            os.close(opened.fd)
            return known[1]
        reader = VerifiedReader(opened, checksum, opened.location.encoding, on_corrupt=on_corrupt)
        try:
            while not reader.read_chunk()[1]:  # as stored: decoded only to hash and count
                pass
        except StoreError:
            return 0
        with self._lock:
            self._entries[checksum] = (key, reader.decoded)
            self._entries.move_to_end(checksum)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return reader.decoded

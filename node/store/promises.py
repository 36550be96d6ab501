"""Promises and uploads in progress: buffers that are not stored yet but soon will be.

A client may announce an upload with ``PUT /promise/<cs>``; until the promise expires (or
the buffer arrives) ``/has`` counts the buffer as present and a GET waits for it instead of
answering 404. An upload in progress is tracked the same way, so that a concurrent
identical upload gets 202 and a concurrent GET waits for it.

Waiting is bounded by the promise's expiry and is cancelled with the request (or the node's
shutdown): no wait outlives the server.
"""

from __future__ import annotations

import trio


class _Pending:
    __slots__ = ("deadline", "event")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.event = trio.Event()


class PendingBuffers:
    """Checksums that are promised or being uploaded, with a way to wait for them."""

    def __init__(self, promise_ttl: float) -> None:
        self.promise_ttl = promise_ttl
        self._promised: dict[str, _Pending] = {}
        self._uploading: dict[str, _Pending] = {}

    # -- promises -------------------------------------------------------------------

    def promise(self, checksum: str) -> float:
        """Register (or renew) a promise; return its lifetime in seconds."""
        deadline = trio.current_time() + self.promise_ttl
        entry = self._promised.get(checksum)
        if entry is None or entry.event.is_set():
            self._promised[checksum] = _Pending(deadline)
        else:
            entry.deadline = deadline
        return self.promise_ttl

    def is_promised(self, checksum: str) -> bool:
        entry = self._promised.get(checksum)
        if entry is None:
            return False
        if entry.deadline <= trio.current_time():
            del self._promised[checksum]
            entry.event.set()
            return False
        return True

    def promised_count(self) -> int:
        return sum(1 for cs in list(self._promised) if self.is_promised(cs))

    # -- uploads in progress ----------------------------------------------------------

    def start_upload(self, checksum: str) -> bool:
        """Mark an upload as started; False if the same buffer is already being uploaded."""
        if checksum in self._uploading:
            return False
        self._uploading[checksum] = _Pending(float("inf"))
        return True

    def end_upload(self, checksum: str, stored: bool) -> None:
        entry = self._uploading.pop(checksum, None)
        if entry is not None:
            entry.event.set()
        if stored:
            self.resolve(checksum)

    def is_uploading(self, checksum: str) -> bool:
        return checksum in self._uploading

    def resolve(self, checksum: str) -> None:
        """The buffer is stored: wake everyone waiting for it."""
        entry = self._promised.pop(checksum, None)
        if entry is not None:
            entry.event.set()

    # -- waiting ----------------------------------------------------------------------

    def is_pending(self, checksum: str) -> bool:
        return self.is_uploading(checksum) or self.is_promised(checksum)

    async def wait(self, checksum: str) -> None:
        """Wait until *checksum* is no longer pending (stored, failed or expired)."""
        while True:
            entry = self._uploading.get(checksum)
            if entry is not None:
                await entry.event.wait()
                continue
            if not self.is_promised(checksum):
                return
            entry = self._promised[checksum]
            with trio.move_on_at(entry.deadline):
                await entry.event.wait()

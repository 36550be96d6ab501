"""Promises and uploads in progress: buffers that are not stored yet but soon will be.

A client may announce an upload with ``PUT /promise/<cs>``; until the promise expires (or
the buffer arrives) ``/has`` counts the buffer as present and a GET waits for it instead of
answering 404. Uploads in progress are tracked the same way (several uploads of one
checksum may run at once, each writing its own bytes): ``/has`` counts them, and a GET
waits until one of them has stored the buffer or all of them have ended.

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


class _Uploads:
    """Uploads of one checksum in progress; *event* is set (and replaced) as each ends."""

    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.count = 0
        self.event = trio.Event()


class PendingBuffers:
    """Checksums that are promised or being uploaded, with a way to wait for them."""

    def __init__(self, promise_ttl: float) -> None:
        self.promise_ttl = promise_ttl
        self._promised: dict[str, _Pending] = {}
        self._uploading: dict[str, _Uploads] = {}

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

    def start_upload(self, checksum: str) -> None:
        """Count one more upload of *checksum* in progress."""
        entry = self._uploading.get(checksum)
        if entry is None:
            entry = self._uploading[checksum] = _Uploads()
        entry.count += 1

    def end_upload(self, checksum: str, stored: bool) -> None:
        """One upload ended (*stored*: its bytes are in the store): wake the waiters, who
        look again."""
        entry = self._uploading.get(checksum)
        if entry is not None:
            entry.count -= 1
            if entry.count <= 0:
                del self._uploading[checksum]
            event, entry.event = entry.event, trio.Event()
            event.set()
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
        """Wait until something changes for *checksum*: an upload of it ends (stored or
        not), or its promise is kept or expires. The caller looks again and, if the
        buffer is still absent but pending, waits again."""
        uploads = self._uploading.get(checksum)
        if uploads is not None:
            await uploads.event.wait()
            return
        if not self.is_promised(checksum):
            return
        entry = self._promised[checksum]
        with trio.move_on_at(entry.deadline):
            await entry.event.wait()

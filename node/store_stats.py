"""Gauges of the buffer store for ``/metrics``: bytes and files stored, free disk.

Free disk is one ``statvfs`` call, read at every scrape. Counting the store means listing
it, which for millions of files takes seconds: ``StoreStats.refresh`` (awaited by the
``/metrics`` route before it renders) lists it again in a worker thread only when the
last count is stale, that is when it is older than ``max_age`` (a minute), or when
buffers were stored since and the last listing is older than ten times what it took. A
small store is therefore counted afresh at every scrape after a write, and a large one
costs at most a tenth of one thread's time. A scrape waits for the listing it started
for at most ``wait`` seconds (one); if the listing takes longer, it goes on in the
background and this scrape, like those that arrive meanwhile, gets the previous count.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import trio

from .metrics import Metrics
from .store.buffers import BufferStore

log = logging.getLogger("seamless_node")


class StoreStats:
    def __init__(
        self, store: BufferStore, metrics: Metrics, *, writes: Callable[[], float], max_age: float = 60.0
    ) -> None:
        self.store = store
        #: a number that changes when buffers are stored (a counter of the buffers role)
        self.writes = writes
        self.max_age = max_age
        self.files = 0
        self.bytes = 0
        self._counted_at: float | None = None
        self._took = 0.0
        self._writes_seen: float | None = None
        #: set when the listing in progress ends (None: no listing in progress)
        self._counting: trio.Event | None = None
        metrics.gauge("seamless_node_store_bytes", lambda: self.bytes, "bytes in the buffer store's files")
        metrics.gauge("seamless_node_store_files", lambda: self.files, "files in the buffer store")
        metrics.gauge("seamless_node_store_free_bytes", self.free_bytes, "free disk space for the store")

    def free_bytes(self) -> float:
        st = os.statvfs(self.store.directory)
        return float(st.f_bavail * st.f_frsize)

    def stale(self, now: float) -> bool:
        if self._counted_at is None:
            return True
        age = now - self._counted_at
        if age >= self.max_age:
            return True
        return self.writes() != self._writes_seen and age >= 10 * self._took

    async def refresh(self, wait: float = 1.0) -> None:
        """Count the store again if the last count is stale (see the module's docstring);
        return when the count is done or after *wait* seconds."""
        if self._counting is None and self.stale(time.monotonic()):
            self._counting = trio.Event()
            # a task of its own: the listing outlives a scrape that stops waiting for it
            trio.lowlevel.spawn_system_task(self._recount, self._counting)
        if self._counting is not None:
            with trio.move_on_after(wait):
                await self._counting.wait()

    async def _recount(self, done: trio.Event) -> None:
        writes = self.writes()
        started = time.monotonic()
        try:
            files, size = await trio.to_thread.run_sync(self._count, abandon_on_cancel=True)
            self.files, self.bytes, self._writes_seen = files, size, writes
        except Exception as exc:  # a scrape must never fail, nor the node
            log.warning("cannot count the buffer store: %s", exc)
        finally:
            self._took = time.monotonic() - started
            self._counted_at = time.monotonic()
            self._counting = None
            done.set()

    def _count(self) -> tuple[int, int]:
        files = size = 0
        for _checksum, location in self.store.iter_files():
            try:
                size += os.lstat(location.path).st_size
            except FileNotFoundError:
                continue  # removed meanwhile
            files += 1
        return files, size

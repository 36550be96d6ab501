"""Where checksums live: a pluggable list of sources, a presence cache, marks for bad peers.

A *source* answers "which of these buffers do you hold, and how long are they?" in one
batch, and opens a stream of one buffer's bytes. Sources are tried in their order: the
local store first (``LocalSource``), then each peer that grants this node ``buffers:read``
and has fetching enabled (``PeerSource``); later, download indexes from FAIR catalogs
(``Source`` is all they need to implement).

Presence answers from remote sources are cached per (source, checksum): positive answers
for ``presence_ttl`` seconds, negative ones for ``absence_ttl`` (shorter: a buffer may be
uploaded there any moment). A source that served wrong, truncated or too slow bytes is
*marked* bad for ``cooldown`` seconds (doubling with each strike, up to a day) and is not
asked meanwhile; its cached "I have it" answers are dropped.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncContextManager, AsyncIterator, Protocol, Sequence

import trio

from ..store.service import BufferService

log = logging.getLogger("seamless_node.federation")


@dataclass
class OpenedBuffer:
    """A buffer being received from a source."""

    length: int | None  # as announced (Content-Length), if any
    chunks: AsyncIterator[bytes]


class Source(Protocol):
    #: a stable name: "local", or the peer's node id
    name: str
    remote: bool

    async def lengths(self, checksums: list[str]) -> list[int | None]:
        """Length of each buffer this source holds, None for the others (raises on failure)."""

    def open(self, checksum: str) -> AsyncContextManager[OpenedBuffer]:
        """Stream one buffer's bytes (raises on refusal or failure)."""


class LocalSource:
    name = "local"
    remote = False

    def __init__(self, buffers: BufferService) -> None:
        self.buffers = buffers

    async def lengths(self, checksums: list[str]) -> list[int | None]:
        present = await self.buffers.has(checksums, include_pending=False)
        sizes = await self.buffers.lengths(checksums)
        return [size if here else None for here, size in zip(present, sizes, strict=True)]

    def open(self, checksum: str) -> AsyncContextManager[OpenedBuffer]:
        raise NotImplementedError("the local store is read through BufferService")


@dataclass
class Holder:
    source: Source
    length: int


class PresenceCache:
    """(source, checksum) -> length or None, with expiry; bounded (least recently set go)."""

    def __init__(self, presence_ttl: float, absence_ttl: float, max_entries: int = 200_000) -> None:
        self.presence_ttl = presence_ttl
        self.absence_ttl = absence_ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[int | None, float]] = OrderedDict()

    def get(self, source: str, checksum: str, now: float) -> tuple[bool, int | None]:
        """(known, length): known is False when nothing valid is cached."""
        entry = self._entries.get((source, checksum))
        if entry is None or entry[1] <= now:
            return False, None
        return True, entry[0]

    def put(self, source: str, checksum: str, length: int | None, now: float) -> None:
        ttl = self.presence_ttl if length is not None else self.absence_ttl
        key = (source, checksum)
        self._entries[key] = (length, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget_source(self, source: str) -> None:
        for key in [k for k in self._entries if k[0] == source]:
            del self._entries[key]

    def forget(self, source: str, checksum: str) -> None:
        self._entries.pop((source, checksum), None)


@dataclass
class Mark:
    reason: str
    until: float
    strikes: int


class BadSources:
    """Sources that misbehaved, skipped until their mark expires."""

    MAX_COOLDOWN = 86400.0

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self.marks: dict[str, Mark] = {}

    def mark(self, source: str, reason: str, now: float) -> Mark:
        previous = self.marks.get(source)
        strikes = previous.strikes + 1 if previous else 1
        until = now + min(self.cooldown * 2 ** (strikes - 1), self.MAX_COOLDOWN)
        mark = self.marks[source] = Mark(reason, until, strikes)
        return mark

    def is_bad(self, source: str, now: float) -> bool:
        mark = self.marks.get(source)
        return mark is not None and mark.until > now


class Locator:
    """Finds holders of checksums among remote sources (batched, cached, concurrent)."""

    def __init__(self, cache: PresenceCache, bad: BadSources, *, timeout: float = 10.0) -> None:
        self.cache = cache
        self.bad = bad
        self.timeout = timeout

    async def holders(self, checksums: list[str], sources: Sequence[Source]) -> dict[str, list[Holder]]:
        """For each checksum, the remote sources holding it, in the order of *sources*."""
        now = trio.current_time()
        usable = [s for s in sources if s.remote and not self.bad.is_bad(s.name, now)]
        answers: dict[str, dict[str, int | None]] = {s.name: {} for s in usable}
        to_ask: dict[str, list[str]] = {}
        for source in usable:
            for cs in checksums:
                known, length = self.cache.get(source.name, cs, now)
                if known:
                    answers[source.name][cs] = length
                else:
                    to_ask.setdefault(source.name, []).append(cs)

        async def ask(source: Source, batch: list[str]) -> None:
            with trio.move_on_after(self.timeout):
                try:
                    lengths = await source.lengths(batch)
                except Exception as exc:  # a failing source holds nothing, this time
                    log.info("presence query to %s failed: %s", source.name[:12], exc)
                    return
                stamp = trio.current_time()
                for cs, length in zip(batch, lengths, strict=True):
                    self.cache.put(source.name, cs, length, stamp)
                    answers[source.name][cs] = length

        async with trio.open_nursery() as nursery:
            for source in usable:
                if source.name in to_ask:
                    nursery.start_soon(ask, source, to_ask[source.name])
        return {
            cs: [Holder(s, length) for s in usable if (length := answers[s.name].get(cs)) is not None]
            for cs in checksums
        }

    def mark_bad(self, source: str, reason: str) -> Mark:
        self.cache.forget_source(source)
        mark = self.bad.mark(source, reason, trio.current_time())
        log.warning(
            "source %s marked bad (%s) for %.0f s", source[:12], reason, mark.until - trio.current_time()
        )
        return mark

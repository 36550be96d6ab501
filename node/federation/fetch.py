"""Fetch-on-miss: get a buffer this node lacks from a peer that holds it.

``BufferFetcher.fetch_missing(cs)`` asks the Locator which peers hold the buffer, then
tries them in turn. Bytes go straight into ``BufferService.put_stream`` (the node's one
ingress path, which hashes while writing and stores nothing that does not match its
name), through ``guarded``, which refuses a peer that

* announces or sends more bytes than the buffer's length (endless bytes): ``too-long``;
* ends early or breaks the connection mid-body: ``truncated``;
* sends nothing for ``idle_timeout`` s (stopped answering): ``stalled``;
* sends slower than ``min_rate`` on average once ``grace`` has passed (slow drip): ``too-slow``.

Wrong bytes surface as ChecksumMismatch from the store (``wrong-bytes``). In every case
nothing is stored, the peer is marked bad (locate.BadSources) and the next holder is tried.

Concurrent requests for the same checksum share one fetch, which runs in the federation
service's nursery: a client that goes away does not abort a fetch others wait for.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Sequence

import h11
import httpx
import trio

from ..checksum import EMPTY_CHECKSUM, parse_checksum
from ..errors import ChecksumMismatch, NodeError, StoreError
from ..metrics import Metrics
from ..store.service import BufferService, PutOutcome
from .locate import Locator, OpenedBuffer, Source
from .peers import PeerClient, PeerError, PeerRefused

log = logging.getLogger("seamless_node.federation")


class FetchFailed(NodeError):
    """A peer's bytes were refused; ``reason`` is a short label (see the module docstring)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PeerSource:
    """A peer as a buffer source (``/federation/buffers/...``)."""

    remote = True

    def __init__(self, client: PeerClient, peer: str, *, timeout: float) -> None:
        self.client = client
        self.name = peer
        self.timeout = timeout

    async def lengths(self, checksums: list[str]) -> list[int | None]:
        return await self.client.has(self.name, checksums)

    @asynccontextmanager
    async def open(self, checksum: str) -> AsyncIterator[OpenedBuffer]:
        target = f"/federation/buffers/{checksum}"
        async with self.client.download(self.name, target, time_limit=self.timeout) as (headers, body):
            declared = headers.get("content-length")
            length = int(declared) if declared is not None and declared.isdigit() else None
            if headers.get("content-encoding", "identity") != "identity":
                raise FetchFailed("wrong-bytes", "the peer sent an encoding that was not asked for")
            yield OpenedBuffer(length, body)


async def guarded(
    chunks: AsyncIterator[bytes],
    *,
    length: int,
    idle_timeout: float,
    min_rate: float,
    grace: float,
) -> AsyncIterator[bytes]:
    """Pass *chunks* on, refusing endless, short, stalled and dripping streams."""
    started = trio.current_time()
    total = 0
    iterator = chunks.__aiter__()
    while True:
        with trio.move_on_after(idle_timeout) as scope:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                break
            except (httpx.TransportError, httpx.TimeoutException, h11.ProtocolError, OSError) as exc:
                raise FetchFailed(
                    "truncated", f"connection broke after {total} of {length} bytes: {exc}"
                ) from None
        if scope.cancelled_caught:
            raise FetchFailed("stalled", f"no data for {idle_timeout:g} s after {total} of {length} bytes")
        total += len(chunk)
        if total > length:
            raise FetchFailed("too-long", f"more than the {length} bytes the buffer has")
        elapsed = trio.current_time() - started
        if min_rate and elapsed > grace and total < min_rate * elapsed:
            raise FetchFailed("too-slow", f"{total} bytes in {elapsed:.1f} s, below {min_rate:.0f} bytes/s")
        yield chunk
    if total != length:
        raise FetchFailed("truncated", f"the stream ended after {total} of {length} bytes")


class BufferFetcher:
    def __init__(
        self,
        buffers: BufferService,
        locator: Locator,
        sources: Callable[[], Sequence[Source]],
        metrics: Metrics,
        *,
        max_size: int,
        idle_timeout: float,
        min_rate: float,
        grace: float,
        label: Callable[[str], str] = lambda name: name[:12],
    ) -> None:
        self.buffers = buffers
        self.locator = locator
        self.sources = sources
        self.metrics = metrics
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.min_rate = min_rate
        self.grace = grace
        self.label = label
        self.nursery: trio.Nursery | None = None
        self._inflight: dict[str, tuple[trio.Event, list[bool]]] = {}
        metrics.describe("seamless_node_federation_bytes_fetched_total", "buffer bytes fetched from peers")
        metrics.describe("seamless_node_federation_fetches_total", "buffer fetches from peers, by outcome")

    async def fetch_missing(self, checksum: str) -> bool:
        """Make sure the buffer is in the local store; True if it is (now)."""
        parse_checksum(checksum)
        if (await self.buffers.has([checksum]))[0]:
            return True
        if checksum == EMPTY_CHECKSUM:
            await self.buffers.put_bytes(checksum, b"")
            return True
        entry = self._inflight.get(checksum)
        if entry is None:
            entry = (trio.Event(), [])
            self._inflight[checksum] = entry
            if self.nursery is None:
                await self._run(checksum, entry)
            else:
                self.nursery.start_soon(self._run, checksum, entry)
        await entry[0].wait()
        return bool(entry[1] and entry[1][0])

    async def _run(self, checksum: str, entry: tuple[trio.Event, list[bool]]) -> None:
        ok = False
        try:
            ok = await self._fetch(checksum)
        except Exception:
            log.exception("fetch of %s failed", checksum)
        finally:
            entry[1].append(ok)
            del self._inflight[checksum]
            entry[0].set()

    async def _fetch(self, checksum: str) -> bool:
        holders = (await self.locator.holders([checksum], self.sources()))[checksum]
        if not holders:
            return False
        for holder in holders:
            source, label = holder.source, self.label(holder.source.name)
            if holder.length > self.max_size:
                self._count(label, "too-large")
                continue
            try:
                outcome = await self._fetch_from(source, checksum, holder.length)
            except FetchFailed as exc:
                self._failed(source, label, exc.reason, str(exc))
                continue
            except ChecksumMismatch as exc:
                self._failed(source, label, "wrong-bytes", str(exc))
                continue
            except PeerRefused as exc:
                self.locator.cache.forget(source.name, checksum)
                self._count(label, "absent" if exc.status == 404 else f"refused-{exc.status}")
                if exc.status != 404:
                    log.warning("fetch of %s from %s refused (%d): %s", checksum, label, exc.status, exc)
                continue
            except (PeerError, httpx.TransportError, httpx.TimeoutException) as exc:
                self._failed(source, label, "unreachable", str(exc))
                continue
            except StoreError as exc:  # our own store refused (full, read-only): no peer's fault
                log.warning("cannot store %s fetched from %s: %s", checksum, label, exc)
                self._count(label, "store-error")
                return False
            self._count(label, "ok")
            log.info(
                "fetched %s (%d bytes) from peer %s", checksum, holder.length, label,
                extra={"fields": {"event": "peer-fetch", "peer": label, "checksum": checksum,
                                  "bytes": holder.length}},
            )
            if outcome is PutOutcome.CREATED:
                self.metrics.inc("seamless_node_federation_bytes_fetched_total", holder.length, peer=label)
            return True
        return False

    async def _fetch_from(self, source: Source, checksum: str, length: int) -> PutOutcome:
        async with source.open(checksum) as opened:
            if opened.length is not None and opened.length != length:
                raise FetchFailed(
                    "too-long" if opened.length > length else "truncated",
                    f"announced {opened.length} bytes for a buffer of {length}",
                )
            chunks = guarded(
                opened.chunks,
                length=length,
                idle_timeout=self.idle_timeout,
                min_rate=self.min_rate,
                grace=self.grace,
            )
            try:
                return await self.buffers.put_stream(checksum, chunks, expected_size=length)
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]

    def _failed(self, source: Source, label: str, reason: str, message: str) -> None:
        log.warning("fetch from %s refused (%s): %s", label, reason, message)
        self._count(label, reason)
        self.locator.mark_bad(source.name, reason)

    def _count(self, label: str, outcome: str) -> None:
        self.metrics.inc("seamless_node_federation_fetches_total", peer=label, outcome=outcome)

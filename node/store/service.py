"""BufferService: the one async API through which buffers enter and leave the node.

Every ingress path (the buffer server's PUT, peer fetches, download indexes, job outputs)
calls ``put_stream`` or ``put_bytes``; every egress path calls ``get``. Blocking work runs in
worker threads, one hop per logical operation (a small buffer is written or read whole in a
single hop; a large one is read in hops of about 1 MiB, and written through the store's
hashing and writing threads, see writer.py), under a CapacityLimiter so that a burst of
requests cannot start unbounded threads.
"""

from __future__ import annotations

import enum
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Callable, TypeVar

import trio

from ..checksum import parse_checksum
from ..errors import CorruptBuffer, StoreError
from .buffers import BufferStore
from .locks import POLL_INTERVAL
from .promises import PendingBuffers
from .reader import CHUNK, VerifiedReader

log = logging.getLogger("seamless_node.store")

T = TypeVar("T")

#: pieces of an upload waiting for the writer thread (bounds memory per upload)
WRITE_QUEUE = 1
#: Buffers up to this size are read whole, verified, and sent with a definite answer.
SMALL_READ = 4 * CHUNK


class _Locked:
    """Another tool holds a lock on the buffer: look again shortly."""


LOCKED = _Locked()


class PutOutcome(enum.Enum):
    CREATED = "created"  # stored now (HTTP 200)
    EXISTED = "existed"  # was already present, or stored meanwhile by another upload (201)


@dataclass
class SmallBuffer:
    data: bytes
    encoding: str | None


class StreamedBuffer:
    """A large buffer being sent: verified as it goes, and the last piece is held back
    until the whole has hashed correctly. On a mismatch the file is quarantined and the
    iterator raises, so the response is cut short and no client ever receives a complete,
    wrong buffer.

    Reading runs one piece ahead of sending: a producer task in the service's nursery
    reads and hashes the next piece in a worker thread while the current one is written to
    the socket. If the client goes away, closing the iterator stops the producer.
    """

    def __init__(self, service: "BufferService", reader: VerifiedReader) -> None:
        self._service = service
        self._reader = reader
        self.content_length = reader.content_length
        self.encoding = reader.send_encoding

    async def _produce(self, send: trio.MemorySendChannel[tuple[bytes, bool] | BaseException]) -> None:
        service = self._service
        async with send:
            try:
                while True:
                    try:
                        item = await service.run_sync(self._reader.read_chunk)
                    except CorruptBuffer as exc:  # the reader had the file quarantined
                        await send.send(exc)
                        return
                    await send.send(item)
                    if item[1]:
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client went away
            finally:
                if not self._reader.finished:
                    self._reader.close()

    def file_for_sendfile(self) -> tuple[int, int] | None:
        """(fd, length) when the file can go out unchanged by ``sendfile`` (a trusted
        plain file, not iterated yet); the caller then calls ``close``."""
        return self._reader.file_for_sendfile()

    def close(self) -> None:
        if not self._reader.finished:
            self._reader.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        send, receive = trio.open_memory_channel[tuple[bytes, bool] | BaseException](1)
        self._service.nursery.start_soon(self._produce, send)
        held: bytes | None = None
        async with receive:
            async for item in receive:
                if isinstance(item, BaseException):
                    raise item
                data, at_end = item
                if held is not None:
                    yield held
                held = data
                if at_end:
                    break
        if held:
            yield held


class BufferService:
    def __init__(self, store: BufferStore, *, threads: int = 8, promise_ttl: float = 600.0) -> None:
        self.store = store
        self.limiter = trio.CapacityLimiter(threads)
        self.pending = PendingBuffers(promise_ttl)

    async def run_sync(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def open(self, nursery: trio.Nursery) -> None:
        """Open the store; background work (read-ahead) runs in *nursery*."""
        self.nursery = nursery
        await self.run_sync(self.store.open)

    @property
    def readonly(self) -> bool:
        return self.store.readonly

    # -- queries ----------------------------------------------------------------------

    async def has(self, checksums: list[str], *, include_pending: bool = True) -> list[bool]:
        found = await self.run_sync(self.store.has_many, checksums)
        if include_pending:
            found = [f or self.pending.is_pending(cs) for f, cs in zip(found, checksums)]
        return found

    async def lengths(self, checksums: list[str]) -> list[int]:
        return await self.run_sync(self.store.lengths, checksums)

    # -- reading ----------------------------------------------------------------------

    def _open_for_get(
        self, checksum: str, accept: set[str], honour_locks: bool, whole: bool = False
    ) -> SmallBuffer | VerifiedReader | _Locked | None:
        """Open (and, if small or *whole*, read and verify) a buffer; LOCKED while another
        tool's lock is in force and the buffer is missing, does not verify yet, or would
        be streamed (a streamed answer cannot be taken back). See locks.py."""
        store = self.store
        reader = store.open_reader(checksum, accept)
        if reader is None:
            return LOCKED if honour_locks and store.locked(checksum) else None
        location = reader.opened.location
        size = reader.content_length
        if whole or (size is not None and size <= SMALL_READ):
            try:
                return SmallBuffer(reader.read_all(), reader.send_encoding)
            except CorruptBuffer:
                # a file under a lock, or changed while it was read, was left in place (its
                # writer may not be done): look again
                if (
                    honour_locks
                    and not reader.quarantined
                    and (
                        store.locked(checksum, location)
                        or store.changed_since(location, reader.opened.stamp)
                    )
                ):
                    return LOCKED
                raise
        if honour_locks and store.locked(checksum, location):
            reader.close()
            return LOCKED
        return reader

    async def _open_waiting_for_locks(
        self, checksum: str, accept: set[str], whole: bool = False
    ) -> SmallBuffer | VerifiedReader | None:
        deadline = trio.current_time() + self.store.lock_timeout
        while True:
            honour = trio.current_time() < deadline
            result = await self.run_sync(self._open_for_get, checksum, accept, honour, whole)
            if not isinstance(result, _Locked):
                return result
            await trio.sleep(POLL_INTERVAL)

    async def get(
        self, checksum: str, accept: set[str] = frozenset(), *, wait_pending: bool = True  # type: ignore[assignment]
    ) -> SmallBuffer | StreamedBuffer | None:
        """Open a buffer for sending; waits for a promised or in-progress upload first,
        and for another tool's lock on it (up to the lock timeout)."""
        parse_checksum(checksum)
        result = await self._open_waiting_for_locks(checksum, accept)
        # uploads that keep failing (one after another) hold a waiter no longer than a promise
        deadline = trio.current_time() + self.pending.promise_ttl
        while result is None and wait_pending and self.pending.is_pending(checksum):
            if trio.current_time() >= deadline:
                break
            with trio.move_on_at(deadline):
                await self.pending.wait(checksum)
            result = await self._open_waiting_for_locks(checksum, accept)
        if isinstance(result, VerifiedReader):
            return StreamedBuffer(self, result)
        return result

    async def read(self, checksum: str) -> bytes | None:
        """The whole decompressed buffer in memory (for small buffers: inputs, records);
        waits for another tool's lock on it as ``get`` does."""
        parse_checksum(checksum)
        result = await self._open_waiting_for_locks(checksum, set(), whole=True)
        assert not isinstance(result, VerifiedReader)
        return None if result is None else result.data

    # -- writing ----------------------------------------------------------------------

    async def put_bytes(self, checksum: str, data: bytes, encoding: str | None = None) -> PutOutcome:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(checksum, one(), encoding=encoding, expected_size=len(data))

    async def put_stream(
        self,
        checksum: str,
        chunks: AsyncIterable[bytes],
        *,
        encoding: str | None = None,
        expected_size: int | None = None,
    ) -> PutOutcome:
        """Store a buffer from a stream of chunks, verified against *checksum*.

        Returns only once the buffer is in the store (an acknowledgement means stored).
        Concurrent uploads of one checksum do not wait for each other: each writes and
        verifies its own bytes in its own temp file, and the first verified one to be
        committed wins (CREATED); the others find it there (EXISTED). A slow or lying
        uploader thus never makes an honest one's bytes be dropped.

        Raises ChecksumMismatch, BufferTooLarge, StoreFull, InvalidBody, UploadTimeout...;
        in every such case nothing is stored."""
        parse_checksum(checksum)
        if self.store.readonly:
            from ..errors import StoreReadOnly

            raise StoreReadOnly("this node's buffer store is read-only")
        small = expected_size is not None and expected_size < CHUNK
        # A large body is not read at all when the buffer is already here. A small one is
        # written in a single hop that makes the same check (see BufferStore.put).
        if not small and (await self.run_sync(self.store.has_many, [checksum]))[0]:
            self.pending.resolve(checksum)
            return PutOutcome.EXISTED
        self.pending.start_upload(checksum)
        stored = False
        try:
            created = await self._write(checksum, chunks, encoding, expected_size)
            stored = True
        finally:
            self.pending.end_upload(checksum, stored)
        return PutOutcome.CREATED if created else PutOutcome.EXISTED

    async def _write(
        self,
        checksum: str,
        chunks: AsyncIterable[bytes],
        encoding: str | None,
        expected_size: int | None,
    ) -> bool:
        """Receive and write at once: pieces of CHUNK bytes or more are hashed and written
        by worker threads while the next ones arrive (at most WRITE_QUEUE pieces wait
        here, and PendingWrite bounds those in flight). Large plain pieces are handed over
        from the event loop itself; others (compressed bodies) in a thread hop each."""
        iterator = chunks.__aiter__()
        first = await _gather_piece(iterator)
        if first is None or len(first) < CHUNK:
            # The whole body fitted in one piece: write it in a single hop.
            return await self.run_sync(self.store.put, checksum, first or b"", encoding)
        pending = await self.run_sync(self.store.begin_write, checksum, encoding, expected_size)
        send, receive = trio.open_memory_channel[bytes](WRITE_QUEUE)
        failure: list[BaseException] = []
        done = False
        try:
            async with trio.open_nursery() as nursery:

                async def write_pieces() -> None:
                    try:
                        async for piece in receive:
                            if not pending.pipelined(piece):
                                await self.run_sync(pending.feed, piece)
                                continue
                            while (busy := pending.busy()) is not None:
                                await _completion(busy)
                            pending.feed(piece)  # hands it to the hashing and writing threads
                    except Exception as exc:
                        failure.append(exc)
                        nursery.cancel_scope.cancel()

                nursery.start_soon(write_pieces)
                try:
                    async with send:
                        piece: bytes | None = first
                        while piece is not None:
                            await send.send(piece)
                            piece = await _gather_piece(iterator)
                except Exception as exc:
                    failure.append(exc)
                    nursery.cancel_scope.cancel()
            if failure:
                raise failure[0]
            created = await self.run_sync(self.store.finish_write, pending)
            done = True
            return created
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(pending.abort)


async def _completion(future: Future[object]) -> None:
    """Wait until *future* (work in a worker thread) is done, without a thread of our own."""
    if future.done():
        return
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: Future[object]) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass  # the node is shutting down; nobody waits any more

    future.add_done_callback(wake)
    await done.wait()


async def _gather_piece(iterator: AsyncIterator[bytes]) -> bytes | None:
    """The next CHUNK bytes or more of a body (less at its end); None once it has ended."""
    parts: list[bytes] = []
    size = 0
    while size < CHUNK:
        try:
            chunk = await iterator.__anext__()
        except StopAsyncIteration:
            break
        parts.append(chunk)
        size += len(chunk)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else b"".join(parts)


__all__ = ["BufferService", "PutOutcome", "SmallBuffer", "StreamedBuffer", "StoreError"]

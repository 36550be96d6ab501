"""Large uploads go from page-aligned receive buffers straight to the disk (O_DIRECT).

The pool hands out aligned buffers and reuses one only when nothing refers to it any
more; pieces that qualify are written directly, the others (first bytes, odd tails)
through the page cache, and the result is the same file either way, verified as before.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from node.errors import ChecksumMismatch, StoreFull
from node.store import direct_io, writer
from node.store.buffers import BufferStore
from node.store.direct_io import ALIGN, PIECE_SIZE, AlignedPool, DirectSupport, aligned_buffer, qualifies
from node.store.writer import SerialLane

MiB = 1 << 20


def address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_aligned_buffers_start_on_a_page():
    for size in (1, 4096, MiB + 17):
        view = aligned_buffer(size)
        assert len(view) == size and address(view) % ALIGN == 0


def test_pool_reuses_a_buffer_only_once_nothing_refers_to_it():
    pool = AlignedPool(MiB, keep=4)
    first = pool.take()
    assert len(first) == MiB and address(first) % ALIGN == 0
    first_address = address(first)
    piece = first[:1000]  # a slice handed on (to a writer thread, say) keeps it busy
    del first
    second = pool.take()
    assert address(second) != first_address
    assert pool.in_use() == 2
    del piece
    third = pool.take(4096)  # now free again: the same memory comes back
    assert address(third) == first_address and len(third) == 4096
    del second, third
    assert pool.in_use() == 0


def test_pool_makes_transient_buffers_when_all_are_busy():
    pool = AlignedPool(MiB, keep=2)
    held = [pool.take() for _ in range(2)]
    extra = pool.take()
    assert address(extra) % ALIGN == 0 and len(extra) == MiB
    assert len(pool._buffers) == 2  # not pooled
    big = pool.take(3 * MiB)  # larger than the pool's buffers: a transient one too
    assert len(big) == 3 * MiB and address(big) % ALIGN == 0
    del held


def test_what_qualifies_for_a_direct_write():
    view = aligned_buffer(2 * ALIGN)
    assert qualifies(view, 0) and qualifies(view, 5 * ALIGN)
    assert not qualifies(view, 100)  # offset off the boundary
    assert not qualifies(view[: ALIGN + 1], 0)  # length off the boundary
    assert not qualifies(view[1 : ALIGN + 1], 0)  # address off the boundary
    assert not qualifies(bytes(view), 0)  # read-only memory: address unknown
    assert not qualifies(view[:0], 0)


def test_serial_lane_keeps_order_and_hands_on_errors():
    seen: list[int] = []
    lane = SerialLane(writer._HASHERS)
    futures = [lane.submit(seen.append, i) for i in range(200)]
    for future in futures:
        future.result()
    assert seen == list(range(200))

    def fail() -> None:
        raise ValueError("boom")

    failed = lane.submit(fail)
    after = lane.submit(seen.append, 200)
    with pytest.raises(ValueError, match="boom"):
        failed.result()
    after.result()  # a failure does not stop the lane
    assert seen[-1] == 200


def count_direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the real direct writes (they still happen): the offsets written."""
    offsets: list[int] = []
    real = writer.write_direct

    def spy(fd, data, offset, support):
        done = real(fd, data, offset, support)
        if done:
            offsets.append(offset)
        return done

    monkeypatch.setattr(writer, "write_direct", spy)
    return offsets


def pieces_as_received(data: bytes, head_bytes: int) -> list[bytes | memoryview]:
    """*data* cut as the front receives it: some bytes with the head, then pool pieces
    ending on PIECE_SIZE boundaries, the last one short."""
    from node.web.bulk import piece_sizes

    pieces: list[bytes | memoryview] = [data[:head_bytes]]
    offset = head_bytes
    while offset < len(data):
        for size in piece_sizes(offset, len(data) - offset):
            piece = direct_io.PIECES.take(size)
            piece[:] = data[offset : offset + size]
            pieces.append(piece)
            offset += size
    return pieces


def store_as_received(store: BufferStore, data: bytes, head_bytes: int = 0, expected_size: int | None = -1) -> None:
    """Write *data* as the front would hand it over, then check it reads back."""
    checksum = hashlib.sha256(data).hexdigest()
    pending = store.begin_write(checksum, None, len(data) if expected_size == -1 else expected_size)
    for piece in pieces_as_received(data, head_bytes):
        pending.feed(piece)
    assert store.finish_write(pending)
    assert store.read(checksum) == data


def test_large_upload_is_written_directly_and_reads_back(tmp_path, monkeypatch):
    direct = count_direct_writes(monkeypatch)
    store = BufferStore(tmp_path / "store", direct_io_min_size=4 * MiB)
    store.open()
    store_as_received(store, os.urandom(4 * PIECE_SIZE + PIECE_SIZE // 2 + 12345), head_bytes=1000)
    # the first piece (with the head's bytes) and the last 12345 % 4096 bytes went
    # through the page cache; everything between them straight to the disk
    assert sorted(direct) == [i * PIECE_SIZE for i in range(1, 5)]
    assert os.listdir(store.tmp_dir) == []


def test_wrong_bytes_written_directly_are_refused_and_leave_nothing(tmp_path, monkeypatch):
    direct = count_direct_writes(monkeypatch)
    store = BufferStore(tmp_path / "store", direct_io_min_size=4 * MiB)
    store.open()
    data = bytearray(os.urandom(8 * MiB))
    checksum = hashlib.sha256(data).hexdigest()
    data[5 * MiB] ^= 1
    pending = store.begin_write(checksum, None, len(data))
    for piece in pieces_as_received(bytes(data), head_bytes=0):
        pending.feed(piece)
    with pytest.raises(ChecksumMismatch):
        store.finish_write(pending)
    assert direct  # the bytes did go to the disk directly...
    assert not store.has_many([checksum])[0]  # ...and never under the buffer's name
    assert os.listdir(store.tmp_dir) == []


def test_small_compressed_or_disabled_uploads_are_buffered(tmp_path, monkeypatch):
    direct = count_direct_writes(monkeypatch)
    data = os.urandom(6 * MiB)
    for store_dir, min_size, expected_size in (
        ("off", None, len(data)),  # buffers.direct_io = false
        ("unknown-size", 4 * MiB, None),  # size not announced: may be small
        ("below-the-minimum", 8 * MiB, len(data)),  # smaller than direct_io_min_size
    ):
        store = BufferStore(tmp_path / store_dir, direct_io_min_size=min_size)
        store.open()
        store_as_received(store, data, expected_size=expected_size)
    assert direct == []


def test_a_refusing_filesystem_is_remembered(tmp_path, monkeypatch):
    direct = count_direct_writes(monkeypatch)
    store = BufferStore(tmp_path / "store", direct_io_min_size=4 * MiB)
    store.open()
    store.direct_io.refused("test: this filesystem takes no O_DIRECT")
    assert store.direct_io.open(str(tmp_path / "x")) is None
    store_as_received(store, os.urandom(5 * MiB))
    assert direct == []


def test_direct_support_follows_the_settings():
    support = DirectSupport(256 * MiB)
    assert support.usable == bool(getattr(os, "O_DIRECT", 0))
    if support.usable:
        assert support.applies(256 * MiB) and support.applies(300 * MiB)
    assert not support.applies(255 * MiB) and not support.applies(None)
    assert DirectSupport(0).min_size == 4 * MiB  # never below the bulk-body size
    assert not DirectSupport(None).usable and not DirectSupport(None).applies(300 * MiB)


@pytest.fixture
def small_disk(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_filling_up_during_direct_writes_is_store_full(small_disk, monkeypatch):
    direct = count_direct_writes(monkeypatch)
    store = BufferStore(small_disk / "store", direct_io_min_size=4 * MiB)
    store.open()
    data = os.urandom(8 * MiB)
    checksum = hashlib.sha256(data).hexdigest()
    pending = store.begin_write(checksum, None, len(data))  # room for it now...
    (small_disk / "filler").write_bytes(b"\0" * (6 * MiB))  # ...taken by someone else
    with pytest.raises(StoreFull):
        for piece in pieces_as_received(data, head_bytes=0):
            pending.feed(piece)
        store.finish_write(pending)
    pending.abort()
    assert direct  # some pieces were written directly before the disk was full
    assert not store.has_many([checksum])[0]
    assert os.listdir(store.tmp_dir) == []
    # with the space back, the same upload succeeds
    (small_disk / "filler").unlink()
    store_as_received(store, data)


async def test_a_full_disk_ends_a_pipelined_upload_through_the_service(small_disk):
    """The event loop hands pieces over without blocking and waits for busy ones by a
    callback: a failure in a writer thread still ends the upload, with nothing left."""
    import trio

    from node.store.service import BufferService

    service = BufferService(BufferStore(small_disk / "store", direct_io_min_size=4 * MiB))
    data = os.urandom(16 * MiB)  # the disk has 12 MiB
    checksum = hashlib.sha256(data).hexdigest()

    async def body():
        for piece in pieces_as_received(data, head_bytes=0):
            yield piece
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        await service.open(nursery)
        with pytest.raises(StoreFull):
            await service.put_stream(checksum, body(), expected_size=8 * MiB)  # fits, it says
        assert os.listdir(service.store.tmp_dir) == []
        assert not (await service.has([checksum]))[0]
        smaller = data[: 9 * MiB]
        outcome = await service.put_stream(
            hashlib.sha256(smaller).hexdigest(), body_of(smaller), expected_size=len(smaller)
        )
        assert outcome.value == "created"
        nursery.cancel_scope.cancel()


async def body_of(data: bytes):
    for piece in pieces_as_received(data, head_bytes=0):
        yield piece


def test_writes_through_the_page_cache_go_in_calls_of_at_most_1_mib(tmp_path, monkeypatch):
    """2 MiB page-cache writes fell into spells of 10x the kernel CPU (writer.py)."""
    sizes: list[int] = []
    real = os.pwrite

    def spy(fd, data, offset):
        sizes.append(len(data))
        return real(fd, data, offset)

    monkeypatch.setattr(writer.os, "pwrite", spy)
    store = BufferStore(tmp_path / "store")  # no O_DIRECT: the store's default
    store.open()
    data = os.urandom(3 * PIECE_SIZE + 5)
    store_as_received(store, data)
    assert sum(sizes) == len(data) and max(sizes) <= writer.BUFFERED_WRITE_MAX

"""Point reads answered on the event loop (MappingService.read) and their fallback."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import trio

from node.store.mapping_requests import parse_query, parse_update
from node.store.mapping_service import MappingService
from node.store.mappings import MappingStore, ReadWouldWait
from tests.helpers import checksum_of

TF, R = checksum_of(b"tf"), checksum_of(b"r")
QUERY = parse_query({"type": "transformation", "checksum": TF})


@pytest.fixture
def store(tmp_path):
    s = MappingStore(str(tmp_path / "seamless.db"), readers=2)
    s.open()
    s.write_batch([parse_update({"type": "transformation", "checksum": TF, "value": R})])
    yield s
    s.close()


def test_point_reads_only(store):
    assert store.can_read_now(QUERY)
    assert not store.can_read_now(parse_query({"type": "rev_transformations", "checksum": R}))
    assert store.read_now(QUERY) == R
    assert store.read_now(parse_query({"type": "transformation", "checksum": R})) is None


@pytest.fixture
def shared(tmp_path):
    """A store whose extra (shared, read-only) file holds the answer: a file in rollback
    journal mode, as seamless-database leaves it, which a writer can lock."""
    extra = str(tmp_path / "colleague.db")
    other = MappingStore(extra)
    other.open()
    other.write_batch([parse_update({"type": "transformation", "checksum": TF, "value": R})])
    other.close()  # back to journal_mode DELETE
    s = MappingStore(str(tmp_path / "own.db"), extra_files=[extra], readers=1)
    s.open()
    yield s, extra
    s.close()


def hold_exclusive_lock(path: str, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    locked.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


async def test_a_locked_database_never_blocks_the_loop(shared):
    store, extra = shared
    assert store.read_now(QUERY) == R
    locked = threading.Event()
    holder = threading.Thread(target=hold_exclusive_lock, args=(extra, 0.5, locked))
    holder.start()
    assert locked.wait(5)
    try:
        with pytest.raises(ReadWouldWait):
            store.read_now(QUERY)
        service = MappingService(store)
        started = time.monotonic()
        ticks = 0
        async with trio.open_nursery() as nursery:

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await trio.sleep(0.01)

            nursery.start_soon(ticker)
            # waits in a thread for the lock to go, while the loop keeps running
            assert await service.read(QUERY) == R
            nursery.cancel_scope.cancel()
        assert time.monotonic() - started >= 0.3
        assert ticks >= 10
    finally:
        holder.join()
    assert store.read_now(QUERY) == R


async def test_loop_reads_can_be_turned_off(store, monkeypatch):
    def refuse(query):
        raise AssertionError("read on the loop although loop_reads is off")

    monkeypatch.setattr(store, "read_now", refuse)
    assert await MappingService(store, loop_reads=False).read(QUERY) == R
    with pytest.raises(AssertionError):
        await MappingService(store).read(QUERY)

"""A buffer directory shared with other tools: hashserver's lock files and stored encodings.

A tool writing buffer files in place holds ``.LOCK`` (the whole directory),
``<shard>/.LOCK`` or ``<checksum>.LOCK`` (one file). While a lock is in force a read of
a missing or not yet verifying buffer waits (up to ``buffers.lock_timeout``), then
proceeds; a file under a lock is never judged corrupt nor quarantined. A client that
accepts gzip gets an existing ``.gz`` as stored.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
import zstandard

from tests.reliability.support import place_compressed, sha256

MiB = 1024 * 1024
IDENTITY = {"Accept-Encoding": "identity"}


def shard(node, cs: str) -> Path:  # type: ignore[no-untyped-def]
    path = node.buffer_dir / cs[:2]
    path.mkdir(exist_ok=True)
    return path


def quarantined(node) -> list[str]:  # type: ignore[no-untyped-def]
    q = node.buffer_dir / ".quarantine"
    return sorted(p.name for p in q.iterdir()) if q.exists() else []


class Get:
    """A GET running in the background; ``result`` once it answered."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or IDENTITY
        self.result: tuple[int, bytes] | None = None

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.get(self.url, headers=self.headers)
        self.result = (r.status_code, r.content)


@pytest.mark.parametrize("lock", ["file", "shard", "global"])
async def test_read_of_a_missing_buffer_waits_for_the_lock(node, lock):
    data = os.urandom(100_000)
    cs = sha256(data)
    lock_path = {
        "file": shard(node, cs) / (cs + ".LOCK"),
        "shard": shard(node, cs) / ".LOCK",
        "global": node.buffer_dir / ".LOCK",
    }[lock]
    lock_path.write_bytes(b"")
    get = Get(f"{node.buffers_url}/{cs}")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(get.run)
        await trio.sleep(0.5)
        assert get.result is None, "the read did not wait for the lock"
        # the other tool writes the file in place, in two steps, then lets go
        target = shard(node, cs) / cs
        with open(target, "wb") as f:
            f.write(data[:50_000])
            f.flush()
            await trio.sleep(0.3)
            f.write(data[50_000:])
        lock_path.unlink()
    assert get.result == (200, data)
    assert quarantined(node) == []


@pytest.mark.parametrize("size", [100_000, 6 * MiB])
async def test_file_written_under_a_lock_is_never_quarantined(node, size):
    """An early read finds a partial file: it waits instead of quarantining it (small
    answers are verified first; large ones wait before streaming)."""
    data = os.urandom(size)
    cs = sha256(data)
    lock_path = shard(node, cs) / (cs + ".LOCK")
    lock_path.write_bytes(b"")
    target = shard(node, cs) / cs
    f = open(target, "wb")
    f.write(data[: size // 3])
    f.flush()
    get = Get(f"{node.buffers_url}/{cs}")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(get.run)
            await trio.sleep(0.5)
            assert get.result is None
            assert target.exists() and quarantined(node) == []
            # /buffer-length does not judge it either
            async with httpx.AsyncClient() as http:
                await http.request("GET", node.buffers_url + "/buffer-length", json=[cs])
            assert target.exists() and quarantined(node) == []
            f.write(data[size // 3 :])
            f.close()
            lock_path.unlink()
    finally:
        f.close()
    assert get.result == (200, data)
    assert quarantined(node) == []


async def test_fsck_leaves_a_locked_file_alone(node):
    data = os.urandom(100_000)
    cs = sha256(data)
    (shard(node, cs) / (cs + ".LOCK")).write_bytes(b"")
    target = shard(node, cs) / cs
    target.write_bytes(data[:1000])  # still being written
    args = [sys.executable, "-m", "node", "fsck", "--data-dir", str(node.config.node.data_dir)]
    run = await trio.to_thread.run_sync(
        lambda: subprocess.run(args, capture_output=True, text=True, timeout=60)
    )
    assert f"LOCKED  {target}" in run.stdout, run.stdout
    assert "CORRUPT" not in run.stdout and target.exists()


async def test_stale_lock_is_ignored(node, http):
    data = os.urandom(1000)
    cs = sha256(data)
    lock_path = node.buffer_dir / ".LOCK"
    lock_path.write_bytes(b"")
    old = time.time() - 3600  # a writer that died an hour ago
    os.utime(lock_path, (old, old))
    with trio.fail_after(5):
        r = await http.get(f"{node.buffers_url}/{cs}")
    assert r.status_code == 404
    target = shard(node, cs) / cs
    target.write_bytes(data[:500])
    r = await http.get(f"{node.buffers_url}/{cs}")
    assert r.status_code == 500 and not target.exists()
    assert [name.rsplit(".", 1)[0] for name in quarantined(node)] == [cs]


async def test_a_read_proceeds_after_the_lock_timeout(start_node, http):
    node = await start_node(buffers={"lock_timeout": 1.0})
    data = os.urandom(1000)
    cs = sha256(data)
    target = shard(node, cs) / cs
    target.write_bytes(data[:500])
    (shard(node, cs) / (cs + ".LOCK")).write_bytes(b"")  # never released
    started = time.monotonic()
    r = await http.get(f"{node.buffers_url}/{cs}")
    assert r.status_code == 500
    assert time.monotonic() - started >= 0.9  # it waited for the lock first
    assert not target.exists()  # the lock is no longer in force: judged and quarantined


async def test_gzip_client_gets_an_existing_gz_as_stored(node, http):
    data = b"compressible " * 20_000
    cs = sha256(data)
    gz = place_compressed(node.buffer_dir, data, "gzip", body=gzip.compress(data, 9))
    r = await http.get(f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert int(r.headers["content-length"]) == gz.stat().st_size
    async with http.stream("GET", f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": "gzip"}) as s:
        raw = b"".join([piece async for piece in s.aiter_raw()])
    assert raw == gz.read_bytes()
    # with a .zst beside it, a client that accepts only gzip still gets the .gz
    place_compressed(node.buffer_dir, data, "zstd", body=zstandard.ZstdCompressor().compress(data))
    async with http.stream("GET", f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": "gzip"}) as s:
        assert s.headers["content-encoding"] == "gzip"
        raw = b"".join([piece async for piece in s.aiter_raw()])
    assert raw == gz.read_bytes()
    # one that accepts neither gets the plain bytes
    r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
    assert r.status_code == 200 and r.content == data and "content-encoding" not in r.headers


async def test_service_read_waits_for_the_lock_too(tmp_path):
    """The whole-buffer read that jobs and the database role use honours locks as GET does."""
    from node.store.buffers import BufferStore
    from node.store.service import BufferService

    data = os.urandom(200_000)
    cs = sha256(data)
    service = BufferService(BufferStore(tmp_path / "buffers"))
    async with trio.open_nursery() as nursery:
        await service.open(nursery)
        shard_dir = tmp_path / "buffers" / cs[:2]
        shard_dir.mkdir()
        lock_path = shard_dir / (cs + ".LOCK")
        lock_path.write_bytes(b"")
        target = shard_dir / cs
        target.write_bytes(data[:1000])  # still being written
        result: list[bytes | None] = []

        async def read() -> None:
            result.append(await service.read(cs))

        nursery.start_soon(read)
        await trio.sleep(0.5)
        assert result == [] and target.exists()
        with open(target, "ab") as f:
            f.write(data[1000:])
        lock_path.unlink()
        with trio.fail_after(10):
            while not result:
                await trio.sleep(0.05)
    assert result == [data]
    assert not any((tmp_path / "buffers" / ".quarantine").iterdir())

"""Many concurrent clients: every buffer comes back exactly, and the queries agree."""

from __future__ import annotations

import gzip
import os
import random
import time

import httpx
import trio
import zstandard

from tests.reliability.support import scan_store, sha256

N_BUFFERS = 1000
N_CLIENTS = 16
MAX_SIZE = 200 * 1024
IDENTITY = {"Accept-Encoding": "identity"}


def make_buffers(rng: random.Random) -> dict[str, bytes]:
    """1000 distinct buffers, 0 B to 200 KiB, most of them small (as real workloads are)."""
    buffers = {sha256(b""): b""}
    while len(buffers) < N_BUFFERS:
        kind = rng.random()
        if kind < 0.3:
            size = rng.randint(1, 1024)
        elif kind < 0.7:
            size = rng.randint(1024, 32 * 1024)
        else:
            size = rng.randint(32 * 1024, MAX_SIZE)
        data = os.urandom(size)
        buffers[sha256(data)] = data
    return buffers


async def run_workers(jobs: list, worker) -> None:  # type: ignore[type-arg]
    """Run *worker(client, job)* over *jobs* with N_CLIENTS clients, each its own
    connection pool, pulling from one shared queue."""
    send, receive = trio.open_memory_channel(len(jobs))
    for job in jobs:
        send.send_nowait(job)
    send.close()

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            async for job in receive:
                await worker(client, job)

    async with trio.open_nursery() as nursery:
        for _ in range(N_CLIENTS):
            nursery.start_soon(client_loop)


async def test_1000_random_buffers_from_16_concurrent_clients(node):
    rng = random.Random(20261128)
    buffers = make_buffers(rng)
    checksums = list(buffers)
    rng.shuffle(checksums)
    # every eighth buffer travels compressed: the checksum is over the decompressed bytes,
    # and the node stores those (a plain file, like every other)
    encodings = {cs: rng.choice(["zstd", "gzip"]) if i % 8 == 0 else None for i, cs in enumerate(checksums)}
    base = node.buffers_url
    statuses: dict[str, int] = {}

    async def put(client: httpx.AsyncClient, cs: str) -> None:
        data = buffers[cs]
        headers = {}
        if encodings[cs] == "zstd":
            data, headers = zstandard.ZstdCompressor().compress(data), {"Content-Encoding": "zstd"}
        elif encodings[cs] == "gzip":
            data, headers = gzip.compress(data), {"Content-Encoding": "gzip"}
        r = await client.put(f"{base}/{cs}", content=data, headers=headers)
        statuses[cs] = r.status_code

    started = time.monotonic()
    await run_workers(checksums, put)
    put_seconds = time.monotonic() - started
    assert len(statuses) == N_BUFFERS
    assert {cs: s for cs, s in statuses.items() if s != 200} == {}

    mismatches: list[str] = []

    async def get(client: httpx.AsyncClient, cs: str) -> None:
        r = await client.get(f"{base}/{cs}", headers=IDENTITY)
        if r.status_code != 200 or r.content != buffers[cs]:
            mismatches.append(
                f"{cs}: status {r.status_code}, {len(r.content)} bytes, expected {len(buffers[cs])}"
            )

    rng.shuffle(checksums)
    started = time.monotonic()
    await run_workers(checksums, get)
    get_seconds = time.monotonic() - started
    assert mismatches == []

    # queries: all present, lengths exact; a few absent checksums mixed in answer false / 0
    absent = [sha256(os.urandom(16)) for _ in range(20)]
    query = checksums + absent
    rng.shuffle(query)
    async with httpx.AsyncClient(timeout=60) as client:
        for path in ("/has", "/has-now"):
            r = await client.request("GET", base + path, json=query)
            assert r.status_code == 200
            assert r.json() == [cs in buffers for cs in query], path
        r = await client.request("GET", base + "/buffer-length", json=query)
        assert r.status_code == 200
        assert r.json() == [len(buffers[cs]) if cs in buffers else 0 for cs in query]
        r = await client.post(node.url + "/api/v1/buffers/lengths", json=query)
        assert r.status_code == 200
        assert r.json() == [len(buffers[cs]) if cs in buffers else 0 for cs in query]

    # on disk: exactly these buffers, every file hashes to its name, nothing left in .tmp
    scan = scan_store(node.buffer_dir)
    assert scan.problems == []
    assert set(scan.buffers) == set(buffers)
    assert scan.tmp_entries == []
    assert scan.quarantine_entries == []
    assert scan.compressed == [] and scan.sidecars == []
    assert all(scan.lengths[cs] == len(data) for cs, data in buffers.items())
    print(f"\n1000 PUTs in {put_seconds:.2f} s, 1000 GETs in {get_seconds:.2f} s")


async def test_same_buffer_uploaded_by_16_clients_at_once(node):
    """Concurrent identical uploads: exactly one stores it (200), the others are told it
    exists (201), each only once it does; a GET right after gets the whole buffer."""
    data = os.urandom(3 * 1024 * 1024 + 17)  # large enough to be streamed in several hops
    cs = sha256(data)
    statuses: list[int] = []

    async def put(client: httpx.AsyncClient, _: int) -> None:
        r = await client.put(f"{node.buffers_url}/{cs}", content=data)
        statuses.append(r.status_code)

    await run_workers(list(range(N_CLIENTS)), put)
    assert sorted(statuses).count(200) == 1, statuses
    assert set(statuses) <= {200, 201}, statuses
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
    assert r.status_code == 200 and r.content == data
    scan = scan_store(node.buffer_dir)
    assert scan.problems == [] and set(scan.buffers) == {cs} and scan.tmp_entries == []

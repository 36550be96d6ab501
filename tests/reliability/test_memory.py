"""Memory stays flat under many large uploads (security.md rule 4: streaming everywhere).

Eight 512 MiB buffers are uploaded at once to a node subprocess; the node's resident set
is sampled every 100 ms and must stay under 200 MB. The buffers are generated from a seeded
PRNG in 1 MiB chunks, twice (once to compute the checksum, once to upload), so the test
itself never holds a buffer either.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from typing import AsyncIterator, Iterator

import httpx
import numpy as np
import psutil
import pytest
import trio

N_UPLOADS = 8
SIZE = 512 * 1024 * 1024
CHUNK = 1024 * 1024
RSS_LIMIT = 200 * 1000 * 1000  # 200 MB


def chunks(seed: int) -> Iterator[bytes]:
    rng = np.random.default_rng(seed)
    for _ in range(SIZE // CHUNK):
        yield rng.bytes(CHUNK)


def checksum_of(seed: int) -> str:
    h = hashlib.sha256()
    for chunk in chunks(seed):
        h.update(chunk)
    return h.hexdigest()


class RssSampler:
    """Samples a process's resident set size every *interval* seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples)


@pytest.mark.slow
async def test_eight_concurrent_512mib_uploads_keep_rss_under_200mb(node_process, tmp_path):
    data_dir = tmp_path / "memory-node"
    proc = await trio.to_thread.run_sync(lambda: node_process("--roles", "buffers", data_dir=data_dir))
    url = proc.url + "/buffers"
    try:
        seeds = list(range(1000, 1000 + N_UPLOADS))
        t0 = time.monotonic()
        checksums = [await trio.to_thread.run_sync(checksum_of, seed) for seed in seeds]
        hashing_seconds = time.monotonic() - t0
        assert len(set(checksums)) == N_UPLOADS
        baseline = psutil.Process(proc.pid).memory_info().rss
        statuses: dict[int, int] = {}

        async def upload(seed: int, cs: str) -> None:
            async def body() -> AsyncIterator[bytes]:
                for chunk in chunks(seed):
                    yield chunk
                    await trio.sleep(0)  # let the other uploads (and their reads) run

            async with httpx.AsyncClient(timeout=httpx.Timeout(120)) as http:
                r = await http.put(f"{url}/{cs}", content=body(), headers={"Content-Length": str(SIZE)})
                statuses[seed] = r.status_code

        t0 = time.monotonic()
        with RssSampler(proc.pid) as sampler:
            async with trio.open_nursery() as nursery:
                for seed, cs in zip(seeds, checksums):
                    nursery.start_soon(upload, seed, cs)
            upload_seconds = time.monotonic() - t0
            # and one of them read back, streamed and verified, while still sampling
            h = hashlib.sha256()
            async with httpx.AsyncClient(timeout=httpx.Timeout(120)) as http:
                identity = {"Accept-Encoding": "identity"}
                async with http.stream("GET", f"{url}/{checksums[0]}", headers=identity) as r:
                    assert r.status_code == 200
                    async for piece in r.aiter_raw():
                        h.update(piece)
            assert h.hexdigest() == checksums[0]

        assert statuses == {seed: 200 for seed in seeds}
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.request("GET", url + "/buffer-length", json=checksums)
        assert r.json() == [SIZE] * N_UPLOADS
        for cs in checksums:
            assert (data_dir / "buffers" / cs[:2] / cs).stat().st_size == SIZE

        print(
            f"\nnode RSS: baseline {baseline / 1e6:.1f} MB, peak {sampler.peak / 1e6:.1f} MB over "
            f"{len(sampler.samples)} samples; checksums {hashing_seconds:.1f} s; "
            f"{N_UPLOADS} x 512 MiB uploaded in {upload_seconds:.1f} s "
            f"({N_UPLOADS * SIZE / upload_seconds / 2**20:.0f} MiB/s)"
        )
        assert len(sampler.samples) >= 10
        assert sampler.peak < RSS_LIMIT, f"peak RSS {sampler.peak / 1e6:.1f} MB"
    finally:
        proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)

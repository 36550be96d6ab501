"""The free-space reserve counts bytes as they land (docs/security.md, "The store keeps its word").

On a small real tmpfs holding both the buffer store and the result database: compression
bombs (a few KiB of zstd or gzip that decompress to more than the disk), chunked bodies
without a length and plain uploads never push free space below
``buffers.reserve_free_bytes``; they are refused with 507 and leave nothing behind; and
database writes running alongside never fail for lack of space.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess

import httpx
import pytest
import trio
import zstandard

from tests.helpers import checksum_of
from tests.reliability.support import chunked, raw_request, request_head, scan_store, sha256

MiB = 1024 * 1024
RESERVE = 10 * MiB
IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture
def tmpfs_32m(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def free_bytes(path) -> int:  # type: ignore[no-untyped-def]
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class FreeSpaceWatch:
    """Samples free space while uploads run; remembers the lowest reading."""

    def __init__(self, path) -> None:  # type: ignore[no-untyped-def]
        self.path = path
        self.lowest = free_bytes(path)

    async def run(self) -> None:
        while True:
            self.lowest = min(self.lowest, free_bytes(self.path))
            await trio.sleep(0.002)


def zstd_bomb(size: int) -> tuple[str, bytes]:
    data = bytes(size)
    return sha256(data), zstandard.ZstdCompressor(level=19).compress(data)


@pytest.mark.root
async def test_bombs_and_chunked_uploads_never_eat_the_reserve(start_node, tmpfs_32m):
    node = await start_node(
        node={"roles": "buffers,database"},
        buffers={"directory": str(tmpfs_32m / "buffers"), "reserve_free_bytes": RESERVE},
        database={"path": str(tmpfs_32m / "seamless.db")},
    )
    url = node.buffers_url
    stored: dict[str, bytes] = {}
    watch = FreeSpaceWatch(tmpfs_32m)

    def check_store() -> None:
        scan = scan_store(tmpfs_32m / "buffers")
        assert scan.problems == []
        assert scan.tmp_entries == [], "an unfinished write stayed behind"
        assert set(scan.buffers) == set(stored), "a refused upload became visible"

    try:
        async with httpx.AsyncClient(timeout=60) as http, trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            # a zstd bomb: 2 KiB that decompress to 64 MiB, twice the whole disk
            cs, bomb = zstd_bomb(64 * MiB)
            assert len(bomb) < 8192
            r = await http.put(f"{url}/{cs}", content=bomb, headers={"Content-Encoding": "zstd"})
            assert r.status_code == 507, r.text
            assert "reserve" in r.text
            check_store()
            # the same bomb chunked (no Content-Length at all), over a raw socket
            head = request_head(
                "PUT", f"/buffers/{cs}", {"Transfer-Encoding": "chunked", "Content-Encoding": "zstd"}
            )
            raw = await raw_request(node.url, head, chunked([bomb[:1000], bomb[1000:]]), timeout=30)
            assert raw.status == 507, raw
            check_store()
            # a gzip bomb
            data = bytes(48 * MiB)
            r = await http.put(
                f"{url}/{sha256(data)}", content=gzip.compress(data, 9), headers={"Content-Encoding": "gzip"}
            )
            assert r.status_code == 507, r.text
            check_store()
            # a plain chunked body larger than the room left
            big = os.urandom(30 * MiB)

            async def stream(data: bytes):  # type: ignore[no-untyped-def]
                for i in range(0, len(data), 256 * 1024):
                    yield data[i : i + 256 * 1024]

            r = await http.put(f"{url}/{sha256(big)}", content=stream(big))
            assert r.status_code == 507, r.text
            check_store()
            assert watch.lowest >= RESERVE, (watch.lowest, RESERVE)
            r = await http.request("GET", url + "/has-now", json=[cs, sha256(big)])
            assert r.json() == [False, False]
            nursery.cancel_scope.cancel()
    finally:
        node.stop()
        await trio.sleep(0.2)  # let the node close its files before the unmount


@pytest.mark.root
async def test_database_writes_never_fail_for_space_buffers_took(start_node, tmpfs_32m):
    node = await start_node(
        node={"roles": "buffers,database"},
        buffers={"directory": str(tmpfs_32m / "buffers"), "reserve_free_bytes": RESERVE},
        database={"path": str(tmpfs_32m / "seamless.db")},
    )
    url = node.buffers_url
    db_statuses: list[tuple[int, str]] = []
    buffer_statuses: list[int] = []
    stored: list[str] = []

    async def database_writer(http: httpx.AsyncClient, first: int, count: int) -> None:
        padding = "x" * 60_000
        for i in range(first, first + count):
            tf, result = checksum_of(b"tf%d" % i), checksum_of(b"r%d" % i)
            record = {"schema_version": 1, "tf_checksum": tf, "result_checksum": result, "pad": padding}
            body = {"type": "metadata", "checksum": tf, "result": result, "value": record}
            r = await http.put(
                node.url + "/database", content=json.dumps(body), headers={"Content-Type": "application/json"}
            )
            db_statuses.append((r.status_code, r.text))

    async def bombs(http: httpx.AsyncClient) -> None:
        for size in (40, 64, 96):
            cs, bomb = zstd_bomb(size * MiB)
            r = await http.put(f"{url}/{cs}", content=bomb, headers={"Content-Encoding": "zstd"})
            buffer_statuses.append(r.status_code)

    async def filler(http: httpx.AsyncClient) -> None:
        # fill the store with honest 1 MiB buffers until the reserve refuses one
        for _ in range(40):
            data = os.urandom(MiB)
            r = await http.put(f"{url}/{sha256(data)}", content=data)
            buffer_statuses.append(r.status_code)
            if r.status_code == 200:
                stored.append(sha256(data))
            else:
                assert r.status_code == 507, r.text
                break

    try:
        async with httpx.AsyncClient(timeout=60) as http:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(database_writer, http, 0, 30)
                nursery.start_soon(bombs, http)
                nursery.start_soon(filler, http)
            assert 507 in buffer_statuses, "the disk never filled up"
            # the buffers are at the reserve: the database still has its headroom
            await database_writer(http, 30, 30)
            assert all(status == 200 for status, _ in db_statuses), [s for s in db_statuses if s[0] != 200][:3]
            assert len(db_statuses) == 60
            r = await http.request(
                "GET", node.url + "/database", content=json.dumps({"type": "metadata", "checksum": checksum_of(b"tf59")}),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 200 and json.loads(r.text)["tf_checksum"] == checksum_of(b"tf59")
            # every acknowledged buffer is readable; nothing partial is left
            scan = scan_store(tmpfs_32m / "buffers")
            assert scan.problems == [] and scan.tmp_entries == [] and set(scan.buffers) == set(stored)
            for cs in stored[:3]:
                r = await http.get(f"{url}/{cs}", headers=IDENTITY)
                assert r.status_code == 200 and sha256(r.content) == cs
    finally:
        node.stop()
        await trio.sleep(0.2)

"""SIGKILL the node mid-upload, again and again: acknowledged buffers survive, nothing partial
or corrupt ever becomes visible, and start-up clears the unfinished writes.

security.md rule 2: temp file in ``.tmp``, hash while streaming, fsync, rename, fsync the
directory, *then* acknowledge; clear ``.tmp`` at start-up.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio
import zstandard

from tests.reliability.support import scan_store, sha256

ITERATIONS = 20
CHUNK = 128 * 1024
#: pause between body chunks of a large upload: about 12 MiB/s, so a 3-8 MiB upload lasts
#: long enough for the kill to land in the middle of it
CHUNK_PAUSE = 0.01
IDENTITY = {"Accept-Encoding": "identity"}


class Uploads:
    """What the clients did during one node lifetime."""

    def __init__(self) -> None:
        self.acked: dict[str, int] = {}  # checksum -> length, acknowledged with 200/201
        self.large_in_body = 0  # large uploads that have sent part, not all, of their body
        self.other_statuses: list[int] = []


async def upload(client: httpx.AsyncClient, url: str, cs: str, body: bytes, length: int,
                 uploads: Uploads, *, encoding: str | None = None, slow: bool = False) -> None:
    headers = {"Content-Length": str(len(body))}
    if encoding:
        headers["Content-Encoding"] = encoding

    async def stream():  # type: ignore[no-untyped-def]
        uploads.large_in_body += 1
        try:
            for i in range(0, len(body), CHUNK):
                yield body[i : i + CHUNK]
                await trio.sleep(CHUNK_PAUSE)
        finally:
            uploads.large_in_body -= 1

    r = await client.put(f"{url}/{cs}", content=stream() if slow else body, headers=headers)
    if r.status_code in (200, 201):
        uploads.acked[cs] = length
    else:
        uploads.other_statuses.append(r.status_code)


async def uploader(url: str, uploads: Uploads, rng: random.Random, kind: str) -> None:
    """Upload fresh random buffers one after another until the node dies."""
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            if kind == "large":
                data = os.urandom(rng.randint(3 << 20, 8 << 20))
                body, encoding, slow = data, None, True
            elif kind == "zstd":
                # half random, half zeros: compresses to about half, streamed slowly
                data = os.urandom(1 << 20) + bytes(rng.randint(1 << 20, 2 << 20))
                body, encoding, slow = zstandard.ZstdCompressor().compress(data), "zstd", True
            else:
                data = os.urandom(rng.randint(0, 100 * 1024))
                body, encoding, slow = data, None, False
            try:
                await upload(
                    client, url, sha256(data), body, len(data), uploads, encoding=encoding, slow=slow
                )
            except httpx.TransportError:
                return


def check_store_after_restart(buffer_dir: Path, acked: dict[str, int]) -> None:
    scan = scan_store(buffer_dir)
    assert scan.problems == [], "corrupt or partial files visible after a crash"
    # zstd uploads included, every buffer is a plain file (decompressed on the way in)
    assert scan.compressed == [] and scan.sidecars == []
    assert scan.tmp_entries == [], ".tmp was not cleared at start-up"
    assert scan.quarantine_entries == []
    missing = {cs for cs in acked if cs not in scan.buffers}
    assert not missing, f"{len(missing)} acknowledged buffer(s) lost in the crash"
    wrong = {cs for cs, n in acked.items() if scan.lengths[cs] != n}
    assert not wrong


async def check_served(url: str, checksums: dict[str, int]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.request("GET", url + "/has", json=list(checksums))
        assert r.status_code == 200 and all(r.json())
        r = await client.request("GET", url + "/buffer-length", json=list(checksums))
        assert r.status_code == 200 and r.json() == list(checksums.values())
        for cs, n in checksums.items():
            h = hashlib.sha256()
            async with client.stream("GET", f"{url}/{cs}", headers=IDENTITY) as r:
                assert r.status_code == 200
                async for piece in r.aiter_bytes():
                    h.update(piece)
            assert h.hexdigest() == cs


@pytest.mark.slow
async def test_sigkill_mid_upload_loop(node_process, tmp_path):
    rng = random.Random(4242)
    data_dir = tmp_path / "crash-node"
    buffer_dir = data_dir / "buffers"
    acked: dict[str, int] = {}
    kills_mid_upload = 0
    leftovers_seen = 0
    unacked_statuses: list[int] = []
    started = time.monotonic()

    async def start():  # type: ignore[no-untyped-def]
        return await trio.to_thread.run_sync(lambda: node_process("--roles", "buffers", data_dir=data_dir))

    for iteration in range(ITERATIONS):
        proc = await start()
        url = proc.url + "/buffers"
        if iteration:
            check_store_after_restart(buffer_dir, acked)
        uploads = Uploads()
        async with trio.open_nursery() as nursery:
            for kind in ("large", "large", "zstd", "small", "small", "small"):
                nursery.start_soon(uploader, url, uploads, random.Random(rng.random()), kind)
            if iteration % 7 == 3:
                # now and then, kill while the clients are still connecting
                await trio.sleep(rng.uniform(0, 0.05))
            else:
                # otherwise at a random moment once a large body is on its way
                with trio.move_on_after(3):
                    while not uploads.large_in_body:
                        await trio.sleep(0.005)
                await trio.sleep(rng.uniform(0, 0.6))
            if uploads.large_in_body:
                kills_mid_upload += 1
            os.kill(proc.pid, signal.SIGKILL)
            await trio.to_thread.run_sync(proc.proc.wait)
            nursery.cancel_scope.cancel()
        if scan_store(buffer_dir).tmp_entries:
            leftovers_seen += 1
        unacked_statuses += uploads.other_statuses
        acked.update(uploads.acked)
        # what was acknowledged in this lifetime is checked over HTTP after the restart
        last = uploads.acked

    proc = await start()
    check_store_after_restart(buffer_dir, acked)
    await check_served(proc.url + "/buffers", last)
    await check_served(proc.url + "/buffers", acked)
    assert proc.stop() == 0

    fsck = subprocess.run(
        [sys.executable, "-m", "node", "fsck", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert f"checked {len(scan_store(buffer_dir).buffers)} buffers" in fsck.stdout

    # the test is only meaningful if kills landed mid-upload and left unfinished writes
    assert kills_mid_upload >= ITERATIONS // 2, kills_mid_upload
    assert leftovers_seen >= 1
    assert len(acked) > ITERATIONS
    assert unacked_statuses == []  # no upload was refused while the node was up
    print(
        f"\n{ITERATIONS} kills ({kills_mid_upload} mid-way through a large upload, "
        f"{leftovers_seen} left files in .tmp), {len(acked)} acknowledged buffers intact, "
        f"{time.monotonic() - started:.1f} s"
    )

"""A length sidecar is a hint: a compressed file with a wrong ``<cs>.BUFFERLENGTH``.

Upstream hashserver stores a compressed upload as ``<cs>.zst`` (or ``.gz``) beside a
sidecar holding the decompressed length. A wrong sidecar never yields a wrong or
over-long answer: what is sent is counted against it, an answer that cannot be completed
correctly is cut short (the connection closes, nothing extra lands on it), the pair is
quarantined, ``/buffer-length`` never reports the sidecar unverified, and fsck finds it.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.reliability.support import place_compressed, sha256

MiB = 1024 * 1024
SMALL_READ = 4 * MiB  # up to this, an answer is read whole and verified before it goes out


def payload(seed: int, size: int) -> bytes:
    # half random, half zeros: compressible, but not to nothing
    rng = random.Random(seed)
    return b"".join(rng.randbytes(512) + bytes(512) for _ in range(size // 1024)) + bytes(size % 1024)


def write_sidecar(path: Path, value: int) -> None:
    cs = path.name.split(".")[0]
    (path.parent / (cs + ".BUFFERLENGTH")).write_text(str(value))


async def raw_get(url: str, target: str, headers: dict[str, str]) -> tuple[int, int | None, bytes, bool]:
    """GET on a keep-alive connection, reading every byte the server sends until it
    closes (or goes quiet): (status, declared length, body bytes, closed)."""
    host, port = url.split("//", 1)[1].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    closed = False
    raw = b""
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        with trio.move_on_after(10):
            while True:
                try:
                    data = await stream.receive_some(1 << 16)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    closed = True
                    break
                raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    declared = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            declared = int(value)
    return status, declared, body, closed


CASES = [
    # (stored, size, sidecar value, client accepts)
    ("zstd", 100_000, 1_000, "identity"),  # says less: read whole, refused
    ("zstd", 100_000, 200_000, "identity"),  # says more
    ("gzip", 100_000, 99_999, "identity"),
    ("zstd", 100_000, 1_000, "zstd"),  # sent as stored: still checked
    ("zstd", 6 * MiB, 5 * MiB, "identity"),  # streamed: says less than the bytes
    ("zstd", 6 * MiB, 7 * MiB, "identity"),  # streamed: says more
    ("zstd", 6 * MiB, 1_000, "identity"),  # says small, is large
]


@pytest.mark.parametrize("stored,size,sidecar,accept", CASES)
async def test_wrong_sidecar_never_yields_a_wrong_or_overlong_answer(node, http, stored, size, sidecar, accept):
    data = payload(size, size)
    cs = sha256(data)
    path = place_compressed(node.buffer_dir, data, stored)
    write_sidecar(path, sidecar)
    streamed = sidecar > SMALL_READ and accept == "identity"
    headers = {"Accept-Encoding": accept}
    if not streamed:
        # a refusal keeps the connection open: have it closed, to see every byte sent
        headers["Connection"] = "close"
    status, declared, body, closed = await raw_get(node.url, f"/buffers/{cs}", headers)
    assert status == (200 if streamed else 500), (status, body[:200])
    if status == 200:
        # the answer started before the lie showed: it was cut short and the connection closed
        assert declared is not None and len(body) < declared, (declared, len(body))
        assert closed
        assert len(body) <= min(sidecar, len(data))
    else:
        assert status == 500, (status, body[:200])
        assert data not in body
    # the pair is in quarantine, and the buffer is absent now
    assert not path.exists()
    quarantined = sorted(p.name.rsplit(".", 1)[0] for p in (node.buffer_dir / ".quarantine").iterdir())
    assert quarantined == sorted([path.name, cs + ".BUFFERLENGTH"])
    r = await http.request("GET", node.buffers_url + "/has-now", json=[cs])
    assert r.json() == [False]


async def test_right_sidecar_is_served(node, http):
    data = payload(1, 6 * MiB)
    cs = sha256(data)
    place_compressed(node.buffer_dir, data, "zstd")
    status, declared, body, _ = await raw_get(node.url, f"/buffers/{cs}", {"Accept-Encoding": "identity", "Connection": "close"})
    assert (status, declared, body == data) == (200, len(data), True)


async def test_buffer_length_never_reports_an_unverified_sidecar(node, http):
    good, lying, bare, rotten = (payload(i, 100_000 + i) for i in range(4))
    place_compressed(node.buffer_dir, good, "zstd")
    write_sidecar(place_compressed(node.buffer_dir, lying, "gzip"), 5_000_000)
    place_compressed(node.buffer_dir, bare, "zstd", sidecar=False)
    rotten_path = place_compressed(node.buffer_dir, rotten, "zstd")
    # same length, wrong bytes: a sidecar cannot vouch for them
    import zstandard

    rotten_path.chmod(0o644)
    rotten_path.write_bytes(zstandard.ZstdCompressor().compress(bytes(len(rotten))))
    checksums = [sha256(x) for x in (good, lying, bare, rotten)]
    for _ in range(2):  # the second time from the remembered verification
        r = await http.request("GET", node.buffers_url + "/buffer-length", json=checksums)
        assert r.json() == [len(good), 0, len(bare), 0]
    r = await http.request("GET", node.buffers_url + "/has-now", json=checksums)
    assert r.json() == [True, False, True, False]  # the lying and the rotten were quarantined


async def test_fsck_checks_compressed_files_and_their_sidecars(node, http):
    good, lying = payload(1, 50_000), payload(2, 60_000)
    good_path = place_compressed(node.buffer_dir, good, "gzip")
    lying_path = place_compressed(node.buffer_dir, lying, "zstd")
    write_sidecar(lying_path, 59_999)
    orphan = node.buffer_dir / "ab" / ("ab" + "0" * 62 + ".BUFFERLENGTH")
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_text("12")
    data_dir = node.config.node.data_dir
    node.stop()
    run = subprocess.run(
        [sys.executable, "-m", "node", "fsck", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"CORRUPT {lying_path}" in run.stdout
    assert f"STRAY   {orphan}" in run.stdout  # a sidecar without its compressed file
    assert good_path.exists() and not lying_path.exists()
    assert not (lying_path.parent / (sha256(lying) + ".BUFFERLENGTH")).exists()
    assert not orphan.exists()  # moved to quarantine

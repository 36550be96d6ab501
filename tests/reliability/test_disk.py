"""The disk misbehaves: it fills up, someone plants symlinks in the store, bytes rot.

security.md rules 2-4: disk full -> 507 with nothing partial visible and reads still
working; reads open with O_NOFOLLOW and never serve bytes that do not match their name;
damaged files go to ``.quarantine/``; ``seamless-node fsck`` finds what reads have not.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import zstandard

from tests.reliability.support import (
    chunked,
    flip_byte,
    place_compressed,
    raw_request,
    request_head,
    scan_store,
    sha256,
    tree_snapshot,
)

MiB = 1024 * 1024
IDENTITY = {"Accept-Encoding": "identity"}


def run_fsck(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "fsck", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def data_dir_of(node) -> Path:  # type: ignore[no-untyped-def]
    return Path(node.config.node.data_dir)


async def get_all(
    http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> tuple[int | None, bytes, int | None, Exception | None]:
    """GET, reading the raw body as far as it goes: (status, body, declared length, error)."""
    body = b""
    error = None
    status = None
    declared = None
    try:
        async with http.stream("GET", url, headers=headers or IDENTITY) as r:
            status = r.status_code
            declared = r.headers.get("content-length")
            async for piece in r.aiter_raw():
                body += piece
    except httpx.TransportError as exc:  # cut short by the server
        error = exc
    return status, body, int(declared) if declared else None, error


# -- disk full -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.root
async def test_disk_full_is_507_and_nothing_partial(start_node, small_disk):
    node = await start_node(buffers={"directory": str(small_disk), "reserve_free_bytes": 0})
    url = node.buffers_url
    stored: dict[str, bytes] = {}

    def check_store() -> None:
        scan = scan_store(small_disk)
        assert scan.problems == []
        assert scan.compressed == [] and scan.sidecars == []
        assert scan.tmp_entries == [], "an unfinished write stayed behind"
        assert set(scan.buffers) == set(stored), "a refused upload became visible"

    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(3):
                data = os.urandom(2 * MiB)
                r = await http.put(f"{url}/{sha256(data)}", content=data)
                assert r.status_code == 200
                stored[sha256(data)] = data
            check_store()

            # no room for 3 MiB: refused up front (Content-Length) ...
            big = os.urandom(3 * MiB)
            r = await http.put(f"{url}/{sha256(big)}", content=big)
            assert r.status_code == 507, r.text
            check_store()

            # ... or when the disk fills up mid-write (no Content-Length)
            async def stream(data: bytes):  # type: ignore[no-untyped-def]
                for i in range(0, len(data), 64 * 1024):
                    yield data[i : i + 64 * 1024]

            r = await http.put(f"{url}/{sha256(big)}", content=stream(big))
            assert r.status_code == 507, r.text
            check_store()
            # the same over a raw chunked request
            head = request_head("PUT", f"/buffers/{sha256(big)}", {"Transfer-Encoding": "chunked"})
            pieces = [big[i : i + 65536] for i in range(0, len(big), 65536)]
            raw = await raw_request(node.url, head, chunked(pieces))
            assert raw.status == 507, raw
            check_store()
            # compressed bodies too (decompressed on the way in, so the full 3 MiB is written)
            r = await http.put(
                f"{url}/{sha256(big)}", content=zstandard.ZstdCompressor().compress(big),
                headers={"Content-Encoding": "zstd"},
            )
            assert r.status_code == 507, r.text
            check_store()

            # fill the disk to the brim with small buffers: each either stored whole or 507
            refused = 0
            for _ in range(40):
                data = os.urandom(100 * 1024)
                r = await http.put(f"{url}/{sha256(data)}", content=data)
                assert r.status_code in (200, 507), r.text
                if r.status_code == 200:
                    stored[sha256(data)] = data
                else:
                    refused += 1
                    r = await http.request("GET", url + "/has-now", json=[sha256(data)])
                    assert r.json() == [False]
            assert refused > 0, "the disk never filled up"
            check_store()

            # reads keep working on a full disk
            for cs, data in stored.items():
                r = await http.get(f"{url}/{cs}", headers=IDENTITY)
                assert r.status_code == 200 and r.content == data
            r = await http.request("GET", url + "/has", json=list(stored))
            assert all(r.json())

            # free space (remove buffers behind the node's back): uploads work again
            keep = next(iter(stored))
            for cs in list(stored):
                if cs != keep:
                    os.unlink(small_disk / cs[:2] / cs)
                    del stored[cs]
            r = await http.put(f"{url}/{sha256(big)}", content=big)
            assert r.status_code == 200, r.text
            stored[sha256(big)] = big
            more = os.urandom(2 * MiB)
            r = await http.put(f"{url}/{sha256(more)}", content=stream(more))
            assert r.status_code == 200, r.text
            stored[sha256(more)] = more
            for cs, data in stored.items():
                r = await http.get(f"{url}/{cs}", headers=IDENTITY)
                assert r.status_code == 200 and r.content == data
            check_store()
    finally:
        node.stop()
        await trio.sleep(0.2)  # let the node close its files before the unmount


# -- planted symlinks -------------------------------------------------------------------


def _content_with_prefix(prefix_taken: set[str]) -> tuple[str, bytes]:
    """Some bytes whose checksum's shard directory does not exist yet."""
    rng = random.Random(7)
    while True:
        data = rng.randbytes(1000)
        cs = sha256(data)
        if cs[:2] not in prefix_taken:
            return cs, data


async def test_planted_symlinks_are_never_followed(start_node, node, http, tmp_path):
    store = node.buffer_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    # 1. a symlink named as a checksum, pointing at a file (outside) that hashes to it
    x = b"content outside the store\n" * 100
    cs_x = sha256(x)
    target_x = outside / "x.bin"
    target_x.write_bytes(x)
    (store / cs_x[:2]).mkdir(exist_ok=True)
    (store / cs_x[:2] / cs_x).symlink_to(target_x)
    # 2. the same for a compressed variant
    z = b"zstd content outside the store\n" * 100
    cs_z = sha256(z)
    target_z = outside / "z.zst"
    target_z.write_bytes(zstandard.ZstdCompressor().compress(z))
    (store / cs_z[:2]).mkdir(exist_ok=True)
    (store / cs_z[:2] / (cs_z + ".zst")).symlink_to(target_z)
    (store / cs_z[:2] / (cs_z + ".BUFFERLENGTH")).write_text(str(len(z)))
    # 3. a symlinked shard directory holding a correctly named, correct file
    taken = {p.name for p in store.iterdir()}
    cs_y, y = _content_with_prefix(taken)
    shard_target = outside / "shard"
    shard_target.mkdir()
    (shard_target / cs_y).write_bytes(y)
    (store / cs_y[:2]).symlink_to(shard_target, target_is_directory=True)
    outside_before = tree_snapshot(outside)

    planted = {cs_x: x, cs_z: z, cs_y: y}
    for cs, data in planted.items():
        for accept in ("identity", "zstd"):
            r = await http.get(f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": accept})
            assert r.status_code == 404, (cs, r.status_code)
            assert data not in r.content
    r = await http.request("GET", node.buffers_url + "/has", json=list(planted))
    assert r.json() == [False, False, False]
    r = await http.request("GET", node.buffers_url + "/buffer-length", json=list(planted))
    assert r.json() == [0, 0, 0]
    r = await http.post(node.url + "/api/v1/buffers/get", json=list(planted))
    assert r.status_code == 200
    for data in planted.values():
        assert data not in r.content

    # uploading the real bytes replaces the planted symlink, never writes through it
    r = await http.put(f"{node.buffers_url}/{cs_x}", content=x)
    assert r.status_code == 200
    assert not (store / cs_x[:2] / cs_x).is_symlink()
    r = await http.get(f"{node.buffers_url}/{cs_x}", headers=IDENTITY)
    assert r.status_code == 200 and r.content == x
    # an upload into the symlinked shard is refused (500: the store is damaged), with a
    # message that points the operator to fsck and reveals no filesystem path
    r = await http.put(f"{node.buffers_url}/{cs_y}", content=y)
    assert r.status_code == 500, (r.status_code, r.text)
    assert "seamless-node fsck" in r.text
    for path in (store, outside, shard_target, tmp_path):
        assert str(path) not in r.text
    assert "/" not in r.text, r.text
    assert (store / cs_y[:2]).is_symlink()
    r = await http.request("GET", node.buffers_url + "/has-now", json=[cs_y])
    assert r.json() == [False]
    assert tree_snapshot(outside) == outside_before
    assert target_x.read_bytes() == x

    # fsck reports the strays and removes the symlinks, not what they point to
    node.stop()
    result = run_fsck(data_dir_of(node))
    assert result.returncode == 1, result.stdout + result.stderr
    strays = [line.split(None, 1)[1] for line in result.stdout.splitlines() if line.startswith("STRAY")]
    planted_links = [store / cs_y[:2], store / cs_z[:2] / (cs_z + ".zst")]
    assert sorted(strays) == sorted(map(str, planted_links)), result.stdout
    assert not any(map(os.path.lexists, planted_links)), "a planted symlink was not removed"
    assert (store / cs_x[:2] / cs_x).read_bytes() == x  # the real upload stays
    assert tree_snapshot(outside) == outside_before
    assert (shard_target / cs_y).read_bytes() == y
    # repaired: a second fsck finds nothing, and the upload into that shard now works
    again = run_fsck(data_dir_of(node))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 corrupt, 0 stray" in again.stdout
    node2 = await start_node(data_dir=data_dir_of(node))
    r = await http.put(f"{node2.buffers_url}/{cs_y}", content=y)
    assert r.status_code == 200, r.text
    assert (store / cs_y[:2]).is_dir() and not (store / cs_y[:2]).is_symlink()
    assert (store / cs_y[:2] / cs_y).read_bytes() == y
    assert tree_snapshot(outside) == outside_before
    node2.stop()


def _victim(tmp_path: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "precious.txt").write_text("do not delete")
    (victim / "sub" / "more.txt").write_text("nor this")
    return victim, tree_snapshot(victim)


def _store_with_planted(tmp_path: Path, name: str, victim: Path) -> tuple[Path, Path]:
    """A data directory whose buffer store has *name* (.tmp or .quarantine) as a symlink
    to *victim*; returns (data_dir, store)."""
    data_dir = tmp_path / f"node-with-planted{name}"
    store = data_dir / "buffers"
    store.mkdir(parents=True)
    (store / ".HASHSERVER_PREFIX").write_text("1\n")
    (store / name).symlink_to(victim, target_is_directory=True)
    return data_dir, store


@pytest.mark.parametrize("name", [".tmp", ".quarantine"])
async def test_private_directory_symlink_makes_startup_refuse(start_node, tmp_path, name):
    """A symlink planted as .tmp (which start-up empties) or .quarantine: the node refuses
    to start and deletes nothing, neither in the target nor the symlink itself."""
    from node.errors import StoreError

    victim, before = _victim(tmp_path)
    data_dir, store = _store_with_planted(tmp_path, name, victim)
    # (the StoreError reaches the test inside the node's nursery's ExceptionGroup)
    refused = pytest.RaisesExc(StoreError, match=re.escape(f"/{name} must be a plain directory"))
    with pytest.RaisesGroup(refused, flatten_subgroups=True, allow_unwrapped=True):
        node = await start_node(data_dir=data_dir)
        node.stop()  # not reached when start-up refuses
    assert tree_snapshot(victim) == before, "start-up deleted files outside the store"
    assert (store / name).is_symlink()

    # fsck refuses the same store too (exit 2), deleting nothing
    result = run_fsck(data_dir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "must be a plain directory" in result.stderr
    assert tree_snapshot(victim) == before
    assert (store / name).is_symlink()


async def test_tmp_symlink_makes_the_node_process_exit(tmp_path):
    victim, before = _victim(tmp_path)
    data_dir, store = _store_with_planted(tmp_path, ".tmp", victim)
    args = [sys.executable, "-m", "node", "run", "--host", "127.0.0.1", "--port", "0"]
    args += ["--data-dir", str(data_dir), "--roles", "buffers"]
    result = await trio.to_thread.run_sync(
        lambda: subprocess.run(args, capture_output=True, text=True, timeout=60)
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "must be a plain directory" in result.stderr
    assert "listening" not in result.stdout
    assert tree_snapshot(victim) == before
    assert (store / ".tmp").is_symlink()


# -- bytes rotting on disk ----------------------------------------------------------------


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


SIZES = [1024, 200 * 1024, 3 * MiB, 6 * MiB, 9 * MiB + 123]
LARGE = 4 * MiB  # over this a buffer is streamed, verified as it goes


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{s}B" for s in SIZES])
async def test_flipped_byte_is_never_served_and_quarantined(node, http, size, where):
    data = payload(size, size)
    cs = sha256(data)
    r = await http.put(f"{node.buffers_url}/{cs}", content=data)
    assert r.status_code == 200
    path = node.buffer_dir / cs[:2] / cs
    assert path.stat().st_mode & 0o777 == 0o444
    flip_byte(path, {"first": 0, "middle": size // 2, "last": size - 1}[where])
    damaged = path.read_bytes()

    status, body, declared, error = await get_all(http, f"{node.buffers_url}/{cs}")
    assert body != damaged, "the damaged bytes were served whole"
    if size <= LARGE:
        assert status is not None and status >= 400, status
    else:
        # streamed: the answer started before the damage showed; it must be cut short
        assert status != 200 or error is not None or (declared is not None and len(body) < declared)
        assert status != 200 or len(body) < size
    # the file was moved out of the store, into .quarantine/
    assert not path.exists()
    quarantined = [p.name for p in (node.buffer_dir / ".quarantine").iterdir()]
    assert any(name.startswith(cs) for name in quarantined), quarantined
    r = await http.request("GET", node.buffers_url + "/has-now", json=[cs])
    assert r.json() == [False]
    r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
    assert r.status_code == 404
    # uploading the right bytes again heals it
    r = await http.put(f"{node.buffers_url}/{cs}", content=data)
    assert r.status_code == 200
    r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
    assert r.status_code == 200 and r.content == data


@pytest.mark.parametrize(
    "encoding, accept, size, sidecar",
    [
        ("zstd", "identity", 100_000, True),
        ("zstd", "identity", 6 * MiB, True),
        ("zstd", "zstd", 100_000, True),
        ("zstd", "zstd", 6 * MiB, True),
        ("gzip", "identity", 100_000, True),
        ("gzip", "identity", 6 * MiB, True),
        ("gzip", "gzip", 100_000, True),
        ("gzip", "gzip", 6 * MiB, True),
        ("zstd-checksummed", "zstd", 100_000, True),
        ("zstd-checksummed", "identity", 100_000, True),
        # no sidecar: the decompressed length is unknown, so even a small one is streamed
        ("zstd", "identity", 100_000, False),
        ("gzip", "identity", 100_000, False),
    ],
)
async def test_flipped_byte_in_compressed_file(node, http, encoding, accept, size, sidecar):
    """A compressed file as hashserver leaves one (the node itself stores plain files),
    damaged on disk: never served whole, whether decompressed or sent as stored, and
    quarantined. Small answers are verified before they go out (500); large ones are
    streamed and cut short."""
    data = payload(size, size)
    cs = sha256(data)
    stored = "gzip" if encoding == "gzip" else "zstd"
    body = None
    if encoding == "zstd-checksummed":
        body = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    path = place_compressed(node.buffer_dir, data, stored, body=body, sidecar=sidecar)
    # intact, it is served (the control): as stored when the client accepts the encoding
    status, raw, declared, error = await get_all(
        http, f"{node.buffers_url}/{cs}", {"Accept-Encoding": accept}
    )
    assert (status, error) == (200, None)
    assert raw == (path.read_bytes() if accept == stored else data)
    flip_byte(path, path.stat().st_size // 2)

    if accept == stored:
        expected_length: int | None = path.stat().st_size  # sent as stored
    else:
        expected_length = size if sidecar else None
    status, raw, declared, error = await get_all(
        http, f"{node.buffers_url}/{cs}", {"Accept-Encoding": accept}
    )
    if expected_length is not None and expected_length <= LARGE:
        # read whole and verified before answering
        assert status == 500, (status, raw[:200])
        assert cs in raw.decode(errors="replace")
    else:
        # streamed: the answer started before the damage showed; it is cut short
        assert status == 200
        assert declared == expected_length
        assert error is not None, "a damaged buffer's answer ended normally"
        assert declared is None or len(raw) < declared
    assert not path.exists(), "the damaged file was not quarantined"
    quarantined = sorted(p.name.rsplit(".", 1)[0] for p in (node.buffer_dir / ".quarantine").iterdir())
    # the length sidecar goes with its file
    expected = sorted([path.name] + ([cs + ".BUFFERLENGTH"] if sidecar else []))
    assert quarantined == expected, quarantined
    r = await http.request("GET", node.buffers_url + "/has-now", json=[cs])
    assert r.json() == [False]
    r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
    assert r.status_code == 404
    # uploading the right bytes again (compressed) heals it, as a plain file
    r = await http.put(
        f"{node.buffers_url}/{cs}", content=gzip.compress(data), headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 200, r.text
    assert (node.buffer_dir / cs[:2] / cs).read_bytes() == data
    r = await http.get(f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": accept})
    assert r.status_code == 200 and r.content == data and "content-encoding" not in r.headers


async def test_fsck_lists_damage_and_exits_1_then_0(node, http):
    buffers = {}
    for seed, size in enumerate([10, 5000, 300_000, 5 * MiB]):
        data = payload(seed, size)
        buffers[sha256(data)] = data
        r = await http.put(f"{node.buffers_url}/{sha256(data)}", content=data)
        assert r.status_code == 200
    # compressed files as hashserver leaves them: one intact, one damaged
    z = b"compressible " * 10_000
    place_compressed(node.buffer_dir, z, "gzip")
    rotten = payload(99, 200_000) + b"zstd " * 20_000
    rotten_path = place_compressed(node.buffer_dir, rotten, "zstd")
    flip_byte(rotten_path, rotten_path.stat().st_size // 2)
    damaged = [cs for cs in buffers if len(buffers[cs]) in (5000, 5 * MiB)]
    for cs in damaged:
        flip_byte(node.buffer_dir / cs[:2] / cs, len(buffers[cs]) // 3)
    node.stop()

    first = run_fsck(data_dir_of(node))
    assert first.returncode == 1, first.stdout + first.stderr
    listed = [line for line in first.stdout.splitlines() if line.startswith("CORRUPT")]
    assert sorted(line.split()[1] for line in listed) == sorted(
        [str(node.buffer_dir / cs[:2] / cs) for cs in damaged] + [str(rotten_path)]
    )
    for cs in damaged:
        assert not (node.buffer_dir / cs[:2] / cs).exists()
    assert not rotten_path.exists()
    assert "checked 6 buffers" in first.stdout
    quarantine = list((node.buffer_dir / ".quarantine").iterdir())
    rotten_cs = rotten_path.name.split(".")[0]
    assert sorted(p.name.rsplit(".", 1)[0] for p in quarantine) == sorted(
        damaged + [rotten_path.name, rotten_cs + ".BUFFERLENGTH"]  # the sidecar goes with its file
    )

    second = run_fsck(data_dir_of(node))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "checked 3 buffers" in second.stdout and "0 corrupt, 0 stray" in second.stdout
    scan = scan_store(node.buffer_dir)
    assert scan.problems == [] and len(scan.buffers) == 3
    assert scan.buffers[sha256(z)].name == sha256(z) + ".gz"


async def test_fsck_on_a_live_node_leaves_uploads_in_progress_alone(node):
    data = os.urandom(3 * MiB)
    cs = sha256(data)
    head = request_head("PUT", f"/buffers/{cs}", {"Content-Length": str(len(data))})
    fsck_result: list[subprocess.CompletedProcess[str]] = []

    async def body_parts():  # type: ignore[no-untyped-def]
        yield data[: 2 * MiB]
        # wait until the node has started writing its temp file, run fsck, then finish
        with trio.move_on_after(10):
            while not os.listdir(node.buffer_dir / ".tmp"):
                await trio.sleep(0.05)
        fsck_result.append(await trio.to_thread.run_sync(run_fsck, data_dir_of(node)))
        yield data[2 * MiB :]

    r = await raw_request(node.url, head, body_parts(), timeout=30)
    assert len(fsck_result) == 1 and fsck_result[0].returncode == 0, fsck_result
    assert r.status == 200, r
    async with httpx.AsyncClient() as http:
        r2 = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
    assert r2.status_code == 200 and r2.content == data
    # and fsck counted the write in progress rather than removed it
    assert "1 unfinished writes in .tmp" in fsck_result[0].stdout
    scan = scan_store(node.buffer_dir)
    assert set(scan.buffers) == {cs} and scan.tmp_entries == []

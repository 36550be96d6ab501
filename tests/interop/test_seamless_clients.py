"""Unmodified Seamless 1.x clients against the node's buffers role (``<node>/buffers``).

* ``seamless_remote.buffer_client.BufferClient`` (seamless-remote 0.4.0), the class every
  Seamless buffer read/write goes through, configured as ``define_extern_client`` does it:
  ``client = BufferClient(readonly=False); client.url = "<node>/buffers"``.
* The Python configuration route: ``seamless.config.set_remote_clients({"buffer": [{"url":
  ..., "readonly": False}]})`` then ``Buffer.write()`` / ``Checksum.resolve()``.
* The ``seamless-upload`` / ``seamless-download`` commands (seamless-transformer 0.6.1),
  pointed at the node with the environment variable ``SEAMLESS_REMOTE_CLIENTS`` (see
  ``support.seamless_env``). They need no database: a buffer server is enough.

The clients run in subprocesses (see buffer_client_driver.py); the node runs in-process.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import zstandard

from tests.helpers import checksum_of, random_buffer

from .support import drive_buffer_client, place_compressed, run_tool, seamless_env, stored_path, venv_script

#: plain 42 serialized by Seamless (its plain celltype)
PLAIN_42 = b"42\n"
PLAIN_42_CHECKSUM = "084c799cd551dd1d8d5c5f9a5d593b2e931f5e36122ee5c793c1d08a19839cc0"


def absent_checksum() -> str:
    return checksum_of(os.urandom(32))


async def node_has(http, node, checksums: list[str], route: str = "has-now") -> list:
    r = await http.request("GET", f"{node.buffers_url}/{route}", json=checksums)
    assert r.status_code == 200, r.text
    return r.json()


async def assert_node_stores(http, node, checksum: str, data: bytes) -> None:
    """The node serves *data* under *checksum* and keeps it as a plain sha256-named file."""
    assert hashlib.sha256(data).hexdigest() == checksum
    r = await http.get(f"{node.buffers_url}/{checksum}", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.content == data
    path = stored_path(node.buffer_dir, checksum, "prefix")
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o444


# -- BufferClient ----------------------------------------------------------------------


async def test_buffer_client_write_get_has(node, http, tmp_path):
    assert checksum_of(PLAIN_42) == PLAIN_42_CHECKSUM
    buffers = [
        (PLAIN_42_CHECKSUM, PLAIN_42),
        (checksum_of(b""), b""),
        random_buffer(1000),
        random_buffer(5 * 1024 * 1024 + 17),  # larger than one read: streamed by the node
    ]
    missing = absent_checksum()
    all_cs = [cs for cs, _ in buffers]
    steps = (
        [{"op": "buffer_lengths", "checksums": all_cs + [missing]}]
        + [{"op": "write", "checksum": cs, "data": data.hex()} for cs, data in buffers]
        + [{"op": "write", "checksum": buffers[0][0], "data": buffers[0][1].hex()}]  # again: 201
        + [{"op": "get", "checksum": cs} for cs in all_cs]
        + [
            {"op": "get", "checksum": missing},
            {"op": "buffer_lengths", "checksums": all_cs + [missing]},
            {"op": "buffer_length", "checksum": all_cs[2]},
            {"op": "buffer_length", "checksum": missing},
        ]
    )
    results = await drive_buffer_client("client", node.buffers_url, steps, home=tmp_path / "home")
    it = iter(results)
    assert next(it) == {"result": [False] * (len(buffers) + 1)}
    for _ in range(len(buffers) + 1):
        assert next(it) == {"result": True}
    for _, data in buffers:
        got = next(it)
        assert "error" not in got, got
        assert bytes.fromhex(got["result"]) == data
    assert next(it) == {"result": None}  # 404 is "absent", not an error
    # BufferClient.buffer_lengths asks /has, so it gets booleans (as with hashserver)
    assert next(it) == {"result": [True] * len(buffers) + [False]}
    assert next(it) == {"result": True}
    assert next(it) == {"result": False}

    for cs, data in buffers:
        await assert_node_stores(http, node, cs, data)
    assert await node_has(http, node, [missing]) == [False]


async def test_buffer_client_promise(node, http, tmp_path):
    cs, data = random_buffer(3000)
    promised_only = absent_checksum()
    steps = [
        {"op": "promise_write_get", "checksum": cs, "data": data.hex(), "delay": 0.5},
        {"op": "promise", "checksum": promised_only},
        {"op": "buffer_lengths", "checksums": [promised_only]},
    ]
    results = await drive_buffer_client("client", node.buffers_url, steps, home=tmp_path / "home")
    assert "error" not in results[0], results[0]
    outcome = results[0]["result"]
    assert outcome["has_after_promise"] == [True]
    assert outcome["reader_waited"] is True  # the GET waited for the upload, no early 404
    assert outcome["got"] is not None and bytes.fromhex(outcome["got"]) == data
    assert results[1] == {"result": None}
    assert results[2] == {"result": [True]}  # a promised buffer counts as present

    await assert_node_stores(http, node, cs, data)
    # the promise is still open on the node: /has counts it, /has-now does not
    assert await node_has(http, node, [promised_only], "has") == [True]
    assert await node_has(http, node, [promised_only], "has-now") == [False]


async def test_buffer_client_wrong_checksum_is_refused(node, http, tmp_path):
    _, data = random_buffer(500)
    wrong = absent_checksum()
    steps = [{"op": "write", "checksum": wrong, "data": data.hex()}, {"op": "get", "checksum": wrong}]
    results = await drive_buffer_client("client", node.buffers_url, steps, home=tmp_path / "home")
    assert "error" in results[0], results[0]
    assert "400" in results[0]["error"] and "Incorrect checksum" in results[0]["error"]
    assert results[1] == {"result": None}
    assert await node_has(http, node, [wrong]) == [False]
    assert not stored_path(node.buffer_dir, wrong, "prefix").exists()


async def test_buffer_client_reads_buffers_stored_compressed(node, http, tmp_path):
    """Compressed files in the node's directory (as hashserver leaves them; the node itself
    stores plain files): aiohttp accepts only gzip and deflate, so the node must send the
    zstd one decompressed, and may send the gzip one as stored."""
    stored = {}
    for encoding, sidecar in (("zstd", True), ("gzip", False)):
        data = os.urandom(2000) + b"x" * 50_000
        cs = checksum_of(data)
        place_compressed(node.buffer_dir, data, encoding, sidecar=sidecar)
        stored[cs] = data
        # what the node sends for aiohttp's Accept-Encoding
        async with http.stream(
            "GET", f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": "gzip, deflate"}
        ) as r:
            raw = b"".join([piece async for piece in r.aiter_raw()])
        assert r.status_code == 200
        assert r.headers.get("content-encoding") == ("gzip" if encoding == "gzip" else None)
        assert (gzip.decompress(raw) if encoding == "gzip" else raw) == data
    steps = [{"op": "get", "checksum": cs} for cs in stored]
    steps.append({"op": "buffer_lengths", "checksums": list(stored)})
    results = await drive_buffer_client("client", node.buffers_url, steps, home=tmp_path / "home")
    for (cs, data), got in zip(stored.items(), results):
        assert "error" not in got, got
        assert bytes.fromhex(got["result"]) == data
    assert results[-1] == {"result": [True, True]}


async def test_seamless_config_remote_clients(node, http, tmp_path):
    """The Python API route: seamless.config.set_remote_clients, Buffer.write, Checksum.resolve."""
    served_cs, served = random_buffer(4000)
    r = await http.put(f"{node.buffers_url}/{served_cs}", content=served)
    assert r.status_code == 200
    written_cs, written = random_buffer(4000)
    steps = [
        {"op": "buffer_write", "data": written.hex()},
        {"op": "resolve", "checksum": served_cs},
        {"op": "resolve", "checksum": absent_checksum()},
    ]
    results = await drive_buffer_client("config", node.buffers_url, steps, home=tmp_path / "home")
    assert results[0] == {"result": {"written": True, "checksum": written_cs}}
    assert bytes.fromhex(results[1]["result"]) == served
    assert results[2]["error"].startswith("CacheMissError")
    await assert_node_stores(http, node, written_cs, written)


# -- seamless-upload / seamless-download -------------------------------------------------


def make_files(src: Path) -> dict[str, bytes]:
    """Files to upload, by name, with the buffer each must become."""
    src.mkdir(parents=True)
    contents = {
        "random.bin": os.urandom(200_000),
        "text.txt": "héllo\nworld\n".encode(),
        "plain42.json": PLAIN_42,
    }
    for name, data in contents.items():
        (src / name).write_bytes(data)
    # seamless-upload decompresses *.gz / *.zst files and uploads the decompressed buffer
    compressed = b"compressed payload\n" * 1000
    (src / "packed.txt.gz").write_bytes(gzip.compress(compressed))
    contents["packed.txt"] = compressed
    return contents


async def test_seamless_upload_then_download(node, http, tmp_path):
    src = tmp_path / "src"
    contents = make_files(src)
    upload_args = ["random.bin", "text.txt", "plain42.json", "packed.txt.gz"]
    env = seamless_env(tmp_path / "home", node.buffers_url)

    up = await run_tool([venv_script("seamless-upload"), "-y", *upload_args], env=env, cwd=src)
    assert up.returncode == 0, up.stderr
    assert "Upload 4 files" in up.stderr

    for name, data in contents.items():
        checksum_file = src / (name + ".CHECKSUM")
        assert checksum_file.read_text().strip() == checksum_of(data), name
        await assert_node_stores(http, node, checksum_of(data), data)
    assert (src / "plain42.json.CHECKSUM").read_text().strip() == PLAIN_42_CHECKSUM

    # download into an empty directory that holds only the .CHECKSUM files
    dst = tmp_path / "dst"
    dst.mkdir()
    for name in contents:
        shutil.copy(src / (name + ".CHECKSUM"), dst / (name + ".CHECKSUM"))
    env_ro = seamless_env(tmp_path / "home", node.buffers_url, readonly=True)
    down = await run_tool([venv_script("seamless-download"), "-y", *contents], env=env_ro, cwd=dst)
    assert down.returncode == 0, down.stderr
    assert "Cannot download" not in down.stderr, down.stderr
    for name, data in contents.items():
        assert (dst / name).read_bytes() == data, name

    # --stdout: the exact bytes of one buffer, by checksum
    out = await run_tool(
        [venv_script("seamless-download"), "--stdout", checksum_of(contents["random.bin"])],
        env=env_ro,
        cwd=dst,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == contents["random.bin"]


async def test_seamless_upload_then_download_directory(node, http, tmp_path):
    src = tmp_path / "src"
    tree = src / "tree"
    files = {
        "a.txt": b"alpha\n",
        "sub/b.bin": os.urandom(30_000),
        "sub/deeper/c.txt": b"gamma\n",
        "dup.txt": b"alpha\n",  # same buffer as a.txt
    }
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    env = seamless_env(tmp_path / "home", node.buffers_url)
    up = await run_tool([venv_script("seamless-upload"), "-y", "tree"], env=env, cwd=src)
    assert up.returncode == 0, up.stderr

    # the deep folder index: a plain buffer {relative path: checksum}, uploaded too
    index_bytes = (src / "tree.INDEX").read_bytes()
    index_cs = (src / "tree.CHECKSUM").read_text().strip()
    assert checksum_of(index_bytes) == index_cs
    assert json.loads(index_bytes) == {rel: checksum_of(data) for rel, data in files.items()}
    await assert_node_stores(http, node, index_cs, index_bytes)
    for data in files.values():
        await assert_node_stores(http, node, checksum_of(data), data)

    # restore the whole tree from the node, given only the index checksum
    dst = tmp_path / "dst"
    dst.mkdir()
    env_ro = seamless_env(tmp_path / "home", node.buffers_url, readonly=True)
    down = await run_tool(
        [venv_script("seamless-download"), "-y", "--directory", "-o", "restored", index_cs],
        env=env_ro,
        cwd=dst,
    )
    assert down.returncode == 0, down.stderr
    assert "Cannot download" not in down.stderr, down.stderr
    for rel, data in files.items():
        assert (dst / "restored" / rel).read_bytes() == data, rel
    assert (dst / "restored.INDEX").read_bytes() == index_bytes


async def test_seamless_download_with_buffer_folder_and_url(node, http, tmp_path):
    """The "local" configuration: the node's buffer directory is read directly, the URL
    serves what the folder reader cannot (Seamless's folder reader knows only plain files,
    so a zstd file left there by hashserver must come decompressed over HTTP). A buffer
    uploaded to the node with Content-Encoding is a plain file, readable from the folder."""
    plain = os.urandom(12_000)
    uploaded_zstd = b"uploaded as zstd, stored plain by the node\n" * 2000
    packed = b"stored as zstd by hashserver\n" * 3000
    r = await http.put(f"{node.buffers_url}/{checksum_of(plain)}", content=plain)
    assert r.status_code == 200
    r = await http.put(
        f"{node.buffers_url}/{checksum_of(uploaded_zstd)}",
        content=zstandard.ZstdCompressor().compress(uploaded_zstd),
        headers={"Content-Encoding": "zstd"},
    )
    assert r.status_code == 200
    assert stored_path(node.buffer_dir, checksum_of(uploaded_zstd), "prefix").read_bytes() == uploaded_zstd
    assert not stored_path(node.buffer_dir, checksum_of(uploaded_zstd), "prefix", "zstd").exists()
    place_compressed(node.buffer_dir, packed, "zstd")
    assert not stored_path(node.buffer_dir, checksum_of(packed), "prefix").exists()
    work = tmp_path / "work"
    work.mkdir()
    names = {"plain.bin": plain, "uploaded.txt": uploaded_zstd, "packed.txt": packed}
    for name, data in names.items():
        (work / (name + ".CHECKSUM")).write_text(checksum_of(data) + "\n")
    env = seamless_env(tmp_path / "home", node.buffers_url, readonly=True, directory=node.buffer_dir)
    download = [venv_script("seamless-download"), "-y", *names]
    down = await run_tool(download, env=env, cwd=work)
    assert down.returncode == 0, down.stderr
    assert "Cannot download" not in down.stderr, down.stderr
    for name, data in names.items():
        assert (work / name).read_bytes() == data, name


async def test_seamless_download_of_absent_buffer(node, tmp_path):
    """404 means absent: the tool reports it (no retries, no file) instead of failing oddly."""
    missing = absent_checksum()
    work = tmp_path / "work"
    work.mkdir()
    (work / "gone.bin.CHECKSUM").write_text(missing + "\n")
    env = seamless_env(tmp_path / "home", node.buffers_url, readonly=True)
    down = await run_tool([venv_script("seamless-download"), "-y", "gone.bin"], env=env, cwd=work, timeout=30)
    assert "Cannot download contents of file 'gone.bin" in down.stderr, down.stderr
    assert not (work / "gone.bin").exists()


async def test_seamless_upload_skips_buffers_already_on_node(node, http, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(10_000)
    (src / "f.bin").write_bytes(data)
    r = await http.put(f"{node.buffers_url}/{checksum_of(data)}", content=data)
    assert r.status_code == 200
    env = seamless_env(tmp_path / "home", node.buffers_url)
    up = await run_tool([venv_script("seamless-upload"), "-vv", "-y", "f.bin"], env=env, cwd=src)
    assert up.returncode == 0, up.stderr
    assert "Already in remote storage: 'f.bin'" in up.stderr, up.stderr


# -- direct-write mode: the Seamless tools and the node's buffer directory -------------------


async def test_seamless_tools_share_the_node_buffer_directory(node, http, tmp_path):
    """``seamless-upload --destination DIR`` writes buffers straight into a hashserver-style
    directory (copies, hard links, compressed files with their .BUFFERLENGTH sidecar), and
    ``seamless-download --destination DIR`` reads one. DIR here is the running node's own
    buffer directory: the node serves what the tool wrote, and the tool reads what the node
    stored."""
    buffer_dir = node.buffer_dir
    assert (buffer_dir / ".HASHSERVER_PREFIX").exists()
    src = tmp_path / "src"
    src.mkdir()
    copied = os.urandom(20_000)
    linked = os.urandom(30_000)
    packed = b"zstd packed file\n" * 2000
    (src / "copied.bin").write_bytes(copied)
    (src / "linked.bin").write_bytes(linked)
    (src / "packed.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(packed))
    env = seamless_env(tmp_path / "home", None)
    upload = [venv_script("seamless-upload"), "-y", "--destination", str(buffer_dir)]
    up = await run_tool([*upload, "--copy", "copied.bin"], env=env, cwd=src)
    assert up.returncode == 0, up.stderr
    up = await run_tool([*upload, "--hardlink", "linked.bin", "packed.txt.zst"], env=env, cwd=src)
    assert up.returncode == 0, up.stderr
    assert stored_path(buffer_dir, checksum_of(packed), "prefix", "zstd").exists()
    assert (src / "linked.bin").stat().st_nlink == 2

    for data in (copied, linked, packed):
        cs = checksum_of(data)
        r = await http.get(f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": "identity"})
        assert r.status_code == 200 and r.content == data
    lengths = await http.request(
        "GET", f"{node.buffers_url}/buffer-length", json=[checksum_of(d) for d in (copied, linked, packed)]
    )
    assert lengths.json() == [len(copied), len(linked), len(packed)]

    # the other way: buffers the node stored (one uploaded compressed, stored plain), read
    # by the tool
    plain = os.urandom(7000)
    squeezed = b"gzip upload " * 5000
    r = await http.put(f"{node.buffers_url}/{checksum_of(plain)}", content=plain)
    assert r.status_code == 200
    r = await http.put(
        f"{node.buffers_url}/{checksum_of(squeezed)}",
        content=gzip.compress(squeezed),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 200
    assert stored_path(buffer_dir, checksum_of(squeezed), "prefix").read_bytes() == squeezed
    assert not stored_path(buffer_dir, checksum_of(squeezed), "prefix", "gzip").exists()
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "plain.bin.CHECKSUM").write_text(checksum_of(plain) + "\n")
    (dst / "squeezed.txt.CHECKSUM").write_text(checksum_of(squeezed) + "\n")
    download = [venv_script("seamless-download"), "-y", "--destination", str(buffer_dir)]
    down = await run_tool(
        [*download, "plain.bin", "squeezed.txt"],
        env=env,
        cwd=dst,
    )
    assert down.returncode == 0, down.stderr
    assert (dst / "plain.bin").read_bytes() == plain
    assert (dst / "squeezed.txt").read_bytes() == squeezed

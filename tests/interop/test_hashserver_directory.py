"""Buffer directories shared with the real upstream hashserver 1.1, both ways, both layouts.

(a) hashserver writes a directory (plain uploads and uploads with Content-Encoding zstd or
gzip, which it stores as ``.zst`` / ``.gz`` files with a ``.BUFFERLENGTH`` sidecar); it is
stopped; a node opened on that directory serves every buffer byte-exactly: decompressed for
a client that does not accept the stored encoding, as stored (with Content-Encoding) for
one that does.

(b) a node writes a directory; it is stopped; hashserver serves every buffer from it. The
node decompresses a compressed upload on the way in, so its directory holds only plain
files (no ``.zst`` / ``.gz``, no sidecars), which hashserver serves plain.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import zstandard

from tests.helpers import checksum_of

from .support import BUFFERS_ONLY, stored_path


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    encoding: str | None  # Content-Encoding of the upload (hashserver stores it so; the node plain)

    @property
    def checksum(self) -> str:
        return checksum_of(self.data)

    def body(self) -> bytes:
        if self.encoding == "zstd":
            return zstandard.ZstdCompressor().compress(self.data)
        if self.encoding == "gzip":
            return gzip.compress(self.data)
        return self.data

    def headers(self) -> dict[str, str]:
        return {"Content-Encoding": self.encoding} if self.encoding else {}


def samples() -> list[Sample]:
    compressible = os.urandom(3000) + b"seamless " * 30_000
    return [
        Sample("small", b"42\n", None),
        Sample("empty", b"", None),
        Sample("large", os.urandom(5 * 1024 * 1024 + 3), None),  # more than one read chunk
        Sample("zstd", compressible + b"z", "zstd"),
        Sample("gzip", compressible + b"g", "gzip"),
        # decompressed on the way out in several pieces
        Sample("zstd-large", os.urandom(1000) + b"0123456789abcdef" * 400_000, "zstd"),
    ]


def decode(body: bytes, encoding: str | None) -> bytes:
    if encoding is None:
        return body
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    raise AssertionError(f"unexpected Content-Encoding {encoding!r}")


async def raw_get(http: httpx.AsyncClient, url: str, accept: str) -> tuple[int, str | None, bytes]:
    """GET without any client-side decoding: (status, Content-Encoding, raw body)."""
    async with http.stream("GET", url, headers={"Accept-Encoding": accept}) as r:
        body = b"".join([chunk async for chunk in r.aiter_raw()])
        return r.status_code, r.headers.get("content-encoding"), body


async def query(http: httpx.AsyncClient, base: str, route: str, checksums: list[str]) -> list:
    r = await http.request("GET", f"{base}/{route}", json=checksums)
    assert r.status_code == 200, (route, r.text)
    return r.json()


async def upload_all(http: httpx.AsyncClient, base: str, items: list[Sample]) -> None:
    for s in items:
        r = await http.put(f"{base}/{s.checksum}", content=s.body(), headers=s.headers())
        assert r.status_code == 200, (s.name, r.status_code, r.text)


def assert_stored_as_uploaded(directory: Path, layout: str, items: list[Sample]) -> None:
    """The files are where hashserver 1.1 puts them: compressed uploads stay compressed,
    with the decompressed length in a sidecar."""
    assert (directory / ".HASHSERVER_PREFIX").exists() == (layout == "prefix")
    for s in items:
        path = stored_path(directory, s.checksum, layout, s.encoding)
        assert path.is_file(), (s.name, path)
        if s.encoding is None:
            assert path.read_bytes() == s.data, s.name
        else:
            assert decode(path.read_bytes(), s.encoding) == s.data, s.name
            assert not stored_path(directory, s.checksum, layout).exists(), s.name
            sidecar = stored_path(directory, s.checksum, layout).with_name(s.checksum + ".BUFFERLENGTH")
            assert int(sidecar.read_text().strip()) == len(s.data), s.name


def assert_stored_plain(directory: Path, layout: str, items: list[Sample]) -> None:
    """The files are where hashserver 1.1 puts them, every one plain (compressed uploads
    decompressed by the node), read-only, and nothing compressed or sidecar anywhere."""
    assert (directory / ".HASHSERVER_PREFIX").exists() == (layout == "prefix")
    for s in items:
        path = stored_path(directory, s.checksum, layout)
        assert path.is_file(), (s.name, path)
        assert path.read_bytes() == s.data, s.name
        assert path.stat().st_mode & 0o777 == 0o444, s.name
    leftovers = [
        p.relative_to(directory)
        for p in directory.rglob("*")
        if p.name.endswith((".zst", ".gz", ".BUFFERLENGTH")) and ".tmp" not in p.parts
    ]
    assert leftovers == []


async def wait_until_down(url: str) -> None:
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                try:
                    await client.get(url + "/healthcheck")
                except httpx.TransportError:
                    return
                await trio.sleep(0.05)


# -- (a) hashserver directory -> node ------------------------------------------------------


@pytest.mark.parametrize("layout", ["prefix", "flat"])
async def test_node_serves_hashserver_directory(layout, hashserver, start_node, http, tmp_path):
    directory = tmp_path / f"hashserver-{layout}"
    directory.mkdir()
    items = samples()
    hs = await hashserver(directory, layout=layout)
    await upload_all(http, hs.url, items)
    assert await query(http, hs.url, "has-now", [s.checksum for s in items]) == [True] * len(items)
    await hs.stop()
    assert hs.proc.returncode is not None
    assert_stored_as_uploaded(directory, layout, items)

    # no layout in the node's configuration: it recognizes the directory's own
    node = await start_node(node=BUFFERS_ONLY, buffers={"directory": str(directory)})
    base = node.buffers_url
    checksums = [s.checksum for s in items]
    for s in items:
        url = f"{base}/{s.checksum}"
        # a client that accepts no compression gets the exact buffer
        status, enc, body = await raw_get(http, url, "identity")
        assert (status, enc) == (200, None), s.name
        assert body == s.data, s.name
        # what aiohttp (the Seamless client) sends: a gzip file goes out as stored
        status, enc, body = await raw_get(http, url, "gzip, deflate")
        expected = "gzip" if s.encoding == "gzip" else None
        assert (status, enc) == (200, expected), (s.name, enc)
        assert decode(body, enc) == s.data, s.name
        if s.encoding is not None:
            # a client that accepts the stored encoding gets the stored bytes as they are
            status, enc, body = await raw_get(http, url, s.encoding)
            assert (status, enc) == (200, s.encoding), (s.name, enc)
            assert body == stored_path(directory, s.checksum, layout, s.encoding).read_bytes()
            assert decode(body, enc) == s.data, s.name

    missing = checksum_of(b"not stored anywhere")
    assert await query(http, base, "has", checksums + [missing]) == [True] * len(items) + [False]
    assert await query(http, base, "has-now", checksums + [missing]) == [True] * len(items) + [False]
    lengths = await query(http, base, "buffer-length", checksums + [missing])
    assert lengths == [len(s.data) for s in items] + [0]
    r = await http.get(f"{base}/{missing}")
    assert r.status_code == 404

    # the node adds to the directory in the same layout (a compressed upload as a plain
    # file); hashserver serves both afterwards
    extra = Sample("added-by-node", os.urandom(777), None)
    extra_zstd = Sample("added-by-node-zstd", os.urandom(300) + b"e" * 30_000, "zstd")
    await upload_all(http, base, [extra, extra_zstd])
    for s in (extra, extra_zstd):
        assert stored_path(directory, s.checksum, layout).read_bytes() == s.data
    assert not stored_path(directory, extra_zstd.checksum, layout, "zstd").exists()
    node.stop()
    await wait_until_down(node.url)
    hs2 = await hashserver(directory, layout=layout, writable=False)
    for s in (extra, extra_zstd):
        status, enc, body = await raw_get(http, f"{hs2.url}/{s.checksum}", "identity")
        assert (status, enc, body) == (200, None, s.data), s.name


# -- (b) node directory -> hashserver --------------------------------------------------------


@pytest.mark.parametrize("layout", ["prefix", "flat"])
async def test_hashserver_serves_node_directory(layout, hashserver, start_node, http, tmp_path):
    directory = tmp_path / f"node-{layout}"
    items = samples()
    node = await start_node(node=BUFFERS_ONLY, buffers={"directory": str(directory), "layout": layout})
    await upload_all(http, node.buffers_url, items)
    node.stop()
    await wait_until_down(node.url)
    assert_stored_plain(directory, layout, items)

    hs = await hashserver(directory, layout=layout, writable=False)
    checksums = [s.checksum for s in items]
    for s in items:
        # hashserver re-hashes plain files before sending them (400 "File corruption"
        # otherwise); every file is plain, so every buffer goes out plain
        status, enc, body = await raw_get(http, f"{hs.url}/{s.checksum}", "zstd, gzip")
        assert status == 200, (s.name, status, body[:200])
        assert (enc, body) == (None, s.data), s.name
    missing = checksum_of(b"not stored anywhere")
    assert await query(http, hs.url, "has", checksums + [missing]) == [True] * len(items) + [False]
    lengths = await query(http, hs.url, "buffer-length", checksums + [missing])
    assert lengths == [len(s.data) for s in items] + [0]


async def test_flat_hashserver_directory_is_detected(hashserver, start_node, http, tmp_path):
    """A flat hashserver directory has no sentinel file: the node must not treat it as a
    new prefix-layout store (it would not find the buffers and would shard new ones)."""
    directory = tmp_path / "flat"
    directory.mkdir()
    item = Sample("one", os.urandom(1234), None)
    hs = await hashserver(directory, layout="flat")
    await upload_all(http, hs.url, [item])
    await hs.stop()
    node = await start_node(node=BUFFERS_ONLY, buffers={"directory": str(directory)})
    r = await http.get(f"{node.buffers_url}/{item.checksum}", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200 and r.content == item.data
    new = Sample("new", os.urandom(99), None)
    await upload_all(http, node.buffers_url, [new])
    assert (directory / new.checksum).read_bytes() == new.data
    assert not (directory / ".HASHSERVER_PREFIX").exists()


@pytest.mark.parametrize("layout", ["prefix", "flat"])
async def test_node_extra_dir_is_a_hashserver_directory(layout, hashserver, start_node, http, tmp_path):
    """A hashserver directory as a read-only extra directory of a node with its own store."""
    shared = tmp_path / f"shared-{layout}"
    shared.mkdir()
    items = [s for s in samples() if s.name in ("small", "zstd", "gzip")]
    hs = await hashserver(shared, layout=layout)
    await upload_all(http, hs.url, items)
    await hs.stop()
    before = sorted(p.relative_to(shared) for p in shared.rglob("*"))

    node = await start_node(node=BUFFERS_ONLY, buffers={"extra_dirs": [str(shared)]})
    base = node.buffers_url
    for s in items:
        status, enc, body = await raw_get(http, f"{base}/{s.checksum}", "identity")
        assert (status, enc, body) == (200, None, s.data), s.name
    checksums = [s.checksum for s in items]
    assert await query(http, base, "has-now", checksums) == [True] * len(items)
    assert await query(http, base, "buffer-length", checksums) == [len(s.data) for s in items]
    # the node's own store takes new buffers; the extra directory is left as it was
    new = Sample("new", os.urandom(321), None)
    await upload_all(http, base, [new])
    assert stored_path(node.buffer_dir, new.checksum, "prefix").read_bytes() == new.data
    assert sorted(p.relative_to(shared) for p in shared.rglob("*")) == before


async def test_node_and_hashserver_share_a_directory_live(hashserver, start_node, http, tmp_path):
    """Both servers running on one directory at the same time: what one stores, the other
    serves at once."""
    directory = tmp_path / "live"
    directory.mkdir()
    hs = await hashserver(directory, layout="prefix")
    node = await start_node(node=BUFFERS_ONLY, buffers={"directory": str(directory)})
    via_hs = Sample("via-hashserver", os.urandom(5000), None)
    via_hs_zstd = Sample("via-hashserver-zstd", b"h" * 40_000 + os.urandom(10), "zstd")
    via_node = Sample("via-node", os.urandom(6000), None)
    via_node_gzip = Sample("via-node-gzip", b"n" * 40_000 + os.urandom(10), "gzip")
    await upload_all(http, hs.url, [via_hs, via_hs_zstd])
    await upload_all(http, node.buffers_url, [via_node, via_node_gzip])

    for s in (via_hs, via_hs_zstd):
        status, enc, body = await raw_get(http, f"{node.buffers_url}/{s.checksum}", "identity")
        assert (status, enc, body) == (200, None, s.data), s.name
    # hashserver kept the zstd upload compressed; the node sends it as stored on request
    status, enc, body = await raw_get(http, f"{node.buffers_url}/{via_hs_zstd.checksum}", "zstd")
    assert (status, enc) == (200, "zstd")
    assert decode(body, enc) == via_hs_zstd.data
    # the node stored its gzip upload plain, so hashserver sends both plain
    for s in (via_node, via_node_gzip):
        assert stored_path(directory, s.checksum, "prefix").read_bytes() == s.data, s.name
        assert not stored_path(directory, s.checksum, "prefix", "gzip").exists(), s.name
        status, enc, body = await raw_get(http, f"{hs.url}/{s.checksum}", "zstd, gzip")
        assert (status, enc, body) == (200, None, s.data), s.name
    all_cs = [s.checksum for s in (via_hs, via_hs_zstd, via_node, via_node_gzip)]
    assert await query(http, node.buffers_url, "has-now", all_cs) == [True] * 4
    assert await query(http, hs.url, "has-now", all_cs) == [True] * 4
    # an upload of a buffer the other server stored is recognised as already present
    r = await http.put(f"{node.buffers_url}/{via_hs.checksum}", content=via_hs.data)
    assert r.status_code == 201
    r = await http.put(f"{hs.url}/{via_node.checksum}", content=via_node.data)
    assert r.status_code == 201


# -- compressed files without a length sidecar -----------------------------------------------
#
# hashserver renames a compressed upload into place first and writes its .BUFFERLENGTH
# sidecar afterwards, so a crash in between (or a .zst/.gz file copied in by hand) leaves a
# compressed buffer without a sidecar. hashserver then works the length out by
# decompressing the file.


async def _hashserver_dir_without_sidecar(hashserver, http, directory: Path) -> Sample:
    directory.mkdir()
    item = Sample("zstd", os.urandom(500) + b"n" * 100_000, "zstd")
    hs = await hashserver(directory, layout="prefix")
    await upload_all(http, hs.url, [item])
    sidecar = directory / item.checksum[:2] / (item.checksum + ".BUFFERLENGTH")
    sidecar.unlink()
    # upstream still answers the real length
    assert await query(http, hs.url, "buffer-length", [item.checksum]) == [len(item.data)]
    await hs.stop()
    return item


async def test_node_serves_compressed_file_without_sidecar(hashserver, start_node, http, tmp_path):
    directory = tmp_path / "nosidecar"
    item = await _hashserver_dir_without_sidecar(hashserver, http, directory)
    node = await start_node(node=BUFFERS_ONLY, buffers={"directory": str(directory)})
    status, enc, body = await raw_get(http, f"{node.buffers_url}/{item.checksum}", "identity")
    assert (status, enc) == (200, None)
    assert body == item.data
    assert await query(http, node.buffers_url, "has-now", [item.checksum]) == [True]


async def test_node_buffer_length_without_sidecar(hashserver, start_node, http, tmp_path):
    directory = tmp_path / "nosidecar"
    item = await _hashserver_dir_without_sidecar(hashserver, http, directory)
    node = await start_node(node=BUFFERS_ONLY, buffers={"directory": str(directory)})
    assert await query(http, node.buffers_url, "buffer-length", [item.checksum]) == [len(item.data)]

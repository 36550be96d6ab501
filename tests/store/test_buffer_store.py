import os
import stat

import pytest

from node.errors import BufferTooLarge, ChecksumMismatch, CorruptBuffer, InvalidBody, InvalidChecksum, StoreReadOnly
from node.store.buffers import BufferStore
from node.store.compression import compress
from node.store.layout import PREFIX_SENTINEL
from tests.helpers import checksum_of, random_buffer


@pytest.fixture
def store(tmp_path):
    s = BufferStore(tmp_path / "buffers")
    s.open()
    return s


def test_put_read_prefix_layout(store):
    cs, data = random_buffer(5000)
    assert store.put(cs, data) is True
    path = os.path.join(store.directory, cs[:2], cs)
    assert open(path, "rb").read() == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert open(os.path.join(store.directory, PREFIX_SENTINEL), "rb").read() == b"1\n"
    assert store.read(cs) == data
    assert store.put(cs, data) is False  # already there
    assert store.has_many([cs, "0" * 64]) == [True, False]
    assert store.lengths([cs, "0" * 64]) == [5000, 0]


def test_wrong_bytes_store_nothing(store):
    cs, data = random_buffer(100)
    with pytest.raises(ChecksumMismatch, match="Incorrect checksum"):
        store.put(cs, data + b"x")
    assert store.has_many([cs]) == [False]
    assert os.listdir(store.tmp_dir) == []


def test_invalid_checksum_opens_nothing(store):
    for bad in ("../" + "a" * 61, "A" * 64, "a" * 63, "a" * 64 + "\n"):
        with pytest.raises(InvalidChecksum):
            store.put(bad, b"")
        with pytest.raises(InvalidChecksum):
            store.open_buffer(bad)


def test_size_limit(tmp_path):
    s = BufferStore(tmp_path / "b", max_buffer_size=1000)
    s.open()
    cs, data = random_buffer(1001)
    with pytest.raises(BufferTooLarge):
        s.put(cs, data)
    assert s.has_many([cs]) == [False]
    assert os.listdir(s.tmp_dir) == []


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_compressed_upload_is_stored_decompressed(store, encoding):
    data = b"seamless " * 10000
    cs = checksum_of(data)
    assert store.put(cs, compress(data, encoding), encoding) is True
    assert open(os.path.join(store.directory, cs[:2], cs), "rb").read() == data
    assert store.read(cs) == data
    assert store.lengths([cs]) == [len(data)]


@pytest.mark.parametrize("encoding, suffix", [("zstd", ".zst"), ("gzip", ".gz")])
def test_compressed_file_from_hashserver_served_verified(store, encoding, suffix):
    data = b"seamless " * 10000
    cs = checksum_of(data)
    shard = os.path.join(store.directory, cs[:2])
    os.makedirs(shard, exist_ok=True)
    with open(os.path.join(shard, cs + suffix), "wb") as f:
        f.write(compress(data, encoding))
    assert store.read(cs) == data
    assert store.lengths([cs]) == [len(data)]  # no sidecar: decompressed and counted
    # a client that accepts the encoding gets the stored bytes, still verified
    reader = store.open_reader(cs, {encoding})
    assert reader.send_encoding == encoding
    raw = reader.read_all()
    assert raw == compress(data, encoding) or len(raw) < len(data)


def test_zstd_body_without_its_frame_end_is_refused(store):
    import zstandard

    data = os.urandom(5000)
    body = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    with pytest.raises(InvalidBody, match="truncated zstd"):
        store.put(checksum_of(data), body[:-4], "zstd")
    assert store.has_many([checksum_of(data)]) == [False]


def test_gzip_body_with_trailing_garbage_is_refused(store):
    data = os.urandom(5000)
    with pytest.raises(InvalidBody, match="after the end"):
        store.put(checksum_of(data), compress(data, "gzip") + b"garbage!", "gzip")
    assert store.has_many([checksum_of(data)]) == [False]


def test_tmp_symlink_refused_and_target_untouched(tmp_path):
    from node.errors import StoreError

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_bytes(b"keep me")
    root = tmp_path / "b"
    root.mkdir()
    os.symlink(victim, root / ".tmp")
    with pytest.raises(StoreError, match="plain directory"):
        BufferStore(root).open()
    assert (victim / "precious").read_bytes() == b"keep me"


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_compressed_body_of_wrong_content_rejected(store, encoding):
    data = b"abc" * 1000
    cs = checksum_of(b"other")
    with pytest.raises(ChecksumMismatch):
        store.put(cs, compress(data, encoding), encoding)
    assert store.has_many([cs]) == [False]


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_corrupt_compressed_body_rejected(store, encoding):
    data = os.urandom(5000)
    body = compress(data, encoding)
    with pytest.raises((InvalidBody, ChecksumMismatch)):
        store.put(checksum_of(data), body[: len(body) // 2], encoding)
    with pytest.raises((InvalidBody, ChecksumMismatch)):
        store.put(checksum_of(data), b"garbage" + body, encoding)
    assert store.has_many([checksum_of(data)]) == [False]


def test_compression_bomb_stopped_by_size_limit(tmp_path):
    s = BufferStore(tmp_path / "b", max_buffer_size=1 << 20)
    s.open()
    body = compress(b"\0" * (64 << 20), "zstd")
    assert len(body) < 1 << 16
    with pytest.raises(BufferTooLarge):
        s.put("0" * 64, body, "zstd")


def test_corrupt_file_is_never_served_and_is_quarantined(store):
    cs, data = random_buffer(3000)
    store.put(cs, data)
    path = os.path.join(store.directory, cs[:2], cs)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptBuffer):
        store.read(cs)
    assert not os.path.exists(path)
    assert len(os.listdir(store.quarantine_dir)) == 1
    assert store.read(cs) is None


def test_symlinks_are_never_followed(store, tmp_path):
    cs, data = random_buffer(100)
    outside = tmp_path / "outside"
    outside.write_bytes(data)
    shard = os.path.join(store.directory, cs[:2])
    os.makedirs(shard, exist_ok=True)
    os.symlink(outside, os.path.join(shard, cs))
    assert store.read(cs) is None
    assert store.has_many([cs]) == [False]
    # a symlinked shard directory
    cs2, data2 = random_buffer(100)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / cs2).write_bytes(data2)
    os.symlink(elsewhere, os.path.join(store.directory, cs2[:2])) if cs2[:2] != cs[:2] else None
    if cs2[:2] != cs[:2]:
        assert store.read(cs2) is None
        assert store.has_many([cs2]) == [False]


def test_fifo_is_not_read(store):
    cs = "ab" + "0" * 62
    shard = os.path.join(store.directory, "ab")
    os.makedirs(shard, exist_ok=True)
    os.mkfifo(os.path.join(shard, cs))
    assert store.read(cs) is None  # would block forever if opened as a file


def test_stale_temp_files_cleared_at_open(tmp_path):
    s = BufferStore(tmp_path / "b")
    s.open()
    (tmp_path / "b" / ".tmp" / "leftover").write_bytes(b"partial")
    s2 = BufferStore(tmp_path / "b")
    s2.open()
    assert os.listdir(s2.tmp_dir) == []


def test_readonly_store(tmp_path):
    s = BufferStore(tmp_path / "b")
    s.open()
    cs, data = random_buffer(10)
    s.put(cs, data)
    ro = BufferStore(tmp_path / "b", readonly=True)
    ro.open()
    assert ro.read(cs) == data
    with pytest.raises(StoreReadOnly):
        ro.put(*random_buffer(10))


def test_flat_layout_detected(tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    cs, data = random_buffer(10)
    (d / cs).write_bytes(data)
    s = BufferStore(d)
    s.open()
    assert s.layout == "flat"
    assert s.read(cs) == data
    cs2, data2 = random_buffer(10)
    s.put(cs2, data2)
    assert (d / cs2).read_bytes() == data2


def test_extra_dirs_are_consulted(tmp_path):
    extra = tmp_path / "extra"
    other = BufferStore(extra)
    other.open()
    cs, data = random_buffer(10)
    other.put(cs, data)
    s = BufferStore(tmp_path / "main", extra_dirs=[extra])
    s.open()
    assert s.has_many([cs]) == [True]
    assert s.read(cs) == data


def test_disk_reserve_refuses_writes(tmp_path):
    s = BufferStore(tmp_path / "b", reserve_free_bytes=1 << 60)
    s.open()
    from node.errors import StoreFull

    with pytest.raises(StoreFull):
        s.put(*random_buffer(10))


def test_shard_directory_removed_behind_the_nodes_back_is_made_again(store):
    import shutil

    cs, data = random_buffer(100)
    store.put(cs, data)
    shutil.rmtree(os.path.join(store.directory, cs[:2]))
    assert store.put(cs, data) is True
    assert store.read(cs) == data

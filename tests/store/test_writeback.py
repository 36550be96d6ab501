"""Early write-back and overlapped hashing keep large writes correct."""

from __future__ import annotations

import hashlib
import os

import pytest

from node.errors import ChecksumMismatch
from node.store import writeback
from node.store.buffers import BufferStore

MiB = 1 << 20


def test_start_writeback_on_a_real_file(tmp_path):
    assert writeback.available()  # Linux: sync_file_range exists
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * MiB)
        writeback.start_writeback(fd, 0, MiB)  # returns at once, raises nothing
        writeback.start_writeback(fd, 0, 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * MiB


@pytest.mark.parametrize("piece", [100_000, MiB, 3 * MiB + 7])
def test_large_writes_in_pieces(tmp_path, piece):
    store = BufferStore(tmp_path / "store")
    store.open()
    data = os.urandom(20 * MiB + 123)
    checksum = hashlib.sha256(data).hexdigest()
    pending = store.begin_write(checksum, None, len(data))
    for start in range(0, len(data), piece):
        pending.feed(data[start : start + piece])
    assert store.finish_write(pending)
    assert store.read(checksum) == data
    # a wrong body written the same way is refused and leaves nothing
    wrong = bytearray(data)
    wrong[15 * MiB] ^= 1
    pending = store.begin_write("0" * 64, None, len(wrong))
    for start in range(0, len(wrong), piece):
        pending.feed(bytes(wrong[start : start + piece]))
    with pytest.raises(ChecksumMismatch):
        store.finish_write(pending)
    assert not store.has_many(["0" * 64])[0]
    assert os.listdir(store.tmp_dir) == []

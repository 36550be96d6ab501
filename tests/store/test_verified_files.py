"""Recently verified files: read again without re-hashing, never once they change."""

from __future__ import annotations

import os

import pytest

from node.errors import CorruptBuffer
from node.store.buffers import BufferStore
from node.store.verified import FileStamp, VerifiedFiles
from tests.helpers import random_buffer

MiB = 1 << 20
STAMP = FileStamp(1, 2, 3, 4, 5)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_remembered_until_the_ttl_or_a_change():
    clock = Clock()
    files = VerifiedFiles(60, clock=clock)
    files.remember("a", STAMP)
    assert files.is_verified("a", STAMP)
    assert not files.is_verified("b", STAMP)
    clock.now += 59
    assert files.is_verified("a", STAMP)
    clock.now += 1
    assert not files.is_verified("a", STAMP)
    assert len(files) == 0  # expired entries are dropped
    files.remember("a", STAMP)
    changed = FileStamp(1, 2, 3, 4, 6)  # ctime moved: rewritten, chmod-ed, touched
    assert not files.is_verified("a", changed)
    assert not files.is_verified("a", STAMP)  # and forgotten


def test_bounded_and_off_when_ttl_is_zero():
    files = VerifiedFiles(60, max_entries=3)
    for name in "abcd":
        files.remember(name, STAMP)
    assert len(files) == 3 and not files.is_verified("a", STAMP)
    off = VerifiedFiles(0)
    off.remember("a", STAMP)
    assert not off.is_verified("a", STAMP)


@pytest.fixture
def make_store(tmp_path):
    stores = []

    def make(ttl: float = 600.0) -> BufferStore:
        store = BufferStore(tmp_path / "store", verified_ttl=ttl)
        store.open()
        stores.append(store)
        return store

    return make


def test_an_upload_is_trusted_and_sendable_as_is(make_store):
    store = make_store()
    cs, data = random_buffer(2 * MiB)
    assert store.put(cs, data)
    reader = store.open_reader(cs)
    assert reader.trusted
    fd, length = reader.file_for_sendfile()
    assert length == len(data) and os.pread(fd, 16, 0) == data[:16]
    assert reader.read_all() == data
    small_cs, small = random_buffer(1000)
    store.put(small_cs, small)
    assert not store.open_reader(small_cs).trusted  # small files are simply re-hashed


def test_a_full_verified_read_makes_a_file_trusted(make_store):
    cs, data = random_buffer(2 * MiB)
    make_store().put(cs, data)
    store = make_store()  # a fresh node process knows nothing yet
    first = store.open_reader(cs)
    assert not first.trusted and first.file_for_sendfile() is None
    assert first.read_all() == data
    assert store.open_reader(cs).trusted


def test_nothing_is_trusted_with_ttl_zero(make_store):
    store = make_store(ttl=0)
    cs, data = random_buffer(2 * MiB)
    store.put(cs, data)
    assert store.open_reader(cs).read_all() == data
    assert not store.open_reader(cs).trusted


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_a_changed_file_is_hashed_again(make_store, keep_mtime):
    store = make_store()
    cs, data = random_buffer(2 * MiB)
    store.put(cs, data)
    path = store.primary_location(cs).path
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(MiB)
        f.write(bytes([data[MiB] ^ 0xFF]))
    if keep_mtime:  # a careful tamperer: the change time still moves
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    reader = store.open_reader(cs)
    assert not reader.trusted and reader.file_for_sendfile() is None
    with pytest.raises(CorruptBuffer):
        reader.read_all()


def test_a_truncated_trusted_file_is_not_served_whole(make_store):
    store = make_store()
    cs, data = random_buffer(2 * MiB)
    store.put(cs, data)
    reader = store.open_reader(cs)
    assert reader.trusted
    os.truncate(store.primary_location(cs).path, MiB)  # after the open: the stamp was taken
    with pytest.raises(CorruptBuffer):
        reader.read_all()


def test_small_reads_are_not_remembered(make_store):
    store = make_store()
    cs, data = random_buffer(1000)
    store.put(cs, data)
    assert store.open_reader(cs).read_all() == data
    assert len(store.verified) == 0 and not store.open_reader(cs).trusted

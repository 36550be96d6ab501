import os

from node.store.buffers import BufferStore
from node.store.compression import compress
from node.store.fsck import fsck
from tests.helpers import checksum_of, random_buffer


def test_fsck_finds_and_quarantines_damage(tmp_path):
    store = BufferStore(tmp_path / "b")
    store.open()
    good = [random_buffer(1000) for _ in range(5)]
    for cs, data in good:
        store.put(cs, data)
    text = b"compressible " * 500
    store.put(checksum_of(text), compress(text, "zstd"), "zstd")
    bad_cs, bad_data = random_buffer(1000)
    store.put(bad_cs, bad_data)
    path = os.path.join(store.directory, bad_cs[:2], bad_cs)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(bytes([bad_data[0] ^ 0xFF]))  # a byte that differs, whatever the data
    report = fsck(store, repair=False)
    assert report.checked == 7
    assert report.corrupt == [path]
    assert os.path.exists(path)
    report = fsck(store)
    assert report.corrupt == [path] and len(report.quarantined) == 1
    assert not os.path.exists(path)
    report = fsck(store)
    assert not report.damaged and report.checked == 6

"""Which lock files cover a buffer, and when a lock is in force (hashserver's rules)."""

from __future__ import annotations

import os

from node.store.locks import lock_in_force, lock_paths

CS = "ab" + "c" * 62


def test_lock_paths_prefix_and_flat():
    assert lock_paths("/d", "prefix", CS, (CS + ".zst",)) == [
        "/d/.LOCK", "/d/ab/.LOCK", f"/d/ab/{CS}.LOCK", f"/d/ab/{CS}.zst.LOCK",
    ]
    assert lock_paths("/d", "flat", CS) == ["/d/.LOCK", f"/d/{CS}.LOCK"]


def test_lock_in_force_until_the_timeout(tmp_path):
    lock = tmp_path / ".LOCK"
    paths = [str(lock), str(tmp_path / "missing.LOCK")]
    assert not lock_in_force(paths, 120)
    lock.write_bytes(b"")
    now = os.stat(lock).st_mtime
    assert lock_in_force(paths, 120, clock=lambda: now + 119)
    assert not lock_in_force(paths, 120, clock=lambda: now + 121)  # a writer that died
    assert not lock_in_force(paths, 0)  # lock files ignored

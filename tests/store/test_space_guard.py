"""SpaceGuard: the reserve is charged as bytes land, and refusals rest on fresh readings."""

from __future__ import annotations

import os
import threading

import pytest

from node.errors import StoreFull
from node.store.space import SpaceGuard

MiB = 1 << 20


class FakeDisk:
    """A filesystem's free-space counter, as statvfs reports it."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.reads = 0

    def statvfs(self, _path: str) -> os.statvfs_result:
        self.reads += 1
        return os.statvfs_result((4096, 4096, 0, 0, self.free // 4096, 0, 0, 0, 0, 255))


def test_pieces_are_charged_until_the_reserve():
    disk = FakeDisk(20 * MiB)
    guard = SpaceGuard("/x", 8 * MiB, statvfs=disk.statvfs, clock=lambda: 0.0)
    landed = 0
    with pytest.raises(StoreFull, match="reserve"):
        for _ in range(100):
            charge = guard.charge(MiB)
            disk.free -= MiB  # the write lands
            guard.landed(charge)
            landed += 1
    assert landed == 12 and disk.free == 8 * MiB


def test_bytes_in_flight_count_against_a_fresh_reading():
    disk = FakeDisk(20 * MiB)
    guard = SpaceGuard("/x", 8 * MiB, statvfs=disk.statvfs, clock=lambda: 0.0)
    charges = [guard.charge(4 * MiB) for _ in range(3)]  # none has landed yet
    with pytest.raises(StoreFull):
        guard.charge(MiB)
    assert guard.in_flight == 12 * MiB
    for charge in charges:
        guard.landed(charge)
    assert guard.in_flight == 0


def test_check_charges_nothing_and_charges_round_up_to_blocks():
    disk = FakeDisk(20 * MiB)
    guard = SpaceGuard("/x", 8 * MiB, statvfs=disk.statvfs, clock=lambda: 0.0)
    guard.check(12 * MiB)
    with pytest.raises(StoreFull):
        guard.check(12 * MiB + 1)
    assert guard.charge(1) == 4096


def test_far_from_the_reserve_a_reading_is_reused():
    disk = FakeDisk(10_000 * MiB)
    now = [0.0]
    guard = SpaceGuard("/x", 8 * MiB, statvfs=disk.statvfs, clock=lambda: now[0], ttl=1.0)
    for _ in range(100):
        guard.landed(guard.charge(4096))
    assert disk.reads == 1
    now[0] = 2.0
    guard.landed(guard.charge(4096))
    assert disk.reads == 2


def test_concurrent_charges_never_pass_the_reserve():
    disk = FakeDisk(40 * MiB)
    lock = threading.Lock()
    guard = SpaceGuard("/x", 8 * MiB, statvfs=disk.statvfs)
    refused = []

    def writer() -> None:
        for _ in range(20):
            try:
                charge = guard.charge(256 * 1024)
            except StoreFull:
                refused.append(1)
                return
            with lock:
                disk.free -= 256 * 1024
            guard.landed(charge)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refused and disk.free >= 8 * MiB

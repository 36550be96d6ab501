"""fsck: re-hash every stored buffer, report and quarantine the damaged ones.

Also reports stray entries (symlinks, which repair removes, and other non-regular files) and
counts leftovers of interrupted writes in ``.tmp``, which the node removes at start-up (fsck
leaves them, since a running node may be writing them).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Callable

from ..errors import StoreError
from .buffers import BufferStore
from .reader import VerifiedReader, open_in_shard, open_shard


@dataclass
class FsckReport:
    checked: int = 0
    bytes_checked: int = 0
    corrupt: list[str] = field(default_factory=list)  # paths of damaged buffers
    strays: list[str] = field(default_factory=list)  # symlinks, non-regular files
    quarantined: list[str] = field(default_factory=list)
    stale_tmp: int = 0

    @property
    def damaged(self) -> bool:
        return bool(self.corrupt or self.strays)


def fsck(
    store: BufferStore,
    *,
    repair: bool = True,
    progress: Callable[[int], None] | None = None,
) -> FsckReport:
    """Check every buffer file in *store*; with *repair*, quarantine what is bad."""
    report = FsckReport()
    if os.path.isdir(store.tmp_dir) and not os.path.islink(store.tmp_dir):
        report.stale_tmp = len(os.listdir(store.tmp_dir))
    if store.layout == "prefix":
        for entry in os.scandir(store.directory):
            if len(entry.name) == 2 and not entry.is_dir(follow_symlinks=False):
                report.strays.append(entry.path)
                if repair and entry.is_symlink():
                    os.unlink(entry.path)
    for checksum, location in store.iter_files():
        try:
            st = os.lstat(location.path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            report.strays.append(location.path)
            if repair and stat.S_ISLNK(st.st_mode):
                os.unlink(location.path)
            continue
        dir_fd = open_shard(location.directory, nofollow=store.layout == "prefix")
        if dir_fd is None:
            report.strays.append(location.directory)
            continue
        try:
            opened = open_in_shard(dir_fd, location)
        finally:
            os.close(dir_fd)
        if opened is None:
            continue
        report.checked += 1
        report.bytes_checked += opened.stored_size
        try:
            VerifiedReader(opened, checksum, opened.location.encoding).read_all()
        except StoreError:
            report.corrupt.append(location.path)
            if repair:
                target = store.quarantine(location, "failed verification in fsck")
                if target:
                    report.quarantined.append(target)
        if progress is not None:
            progress(opened.stored_size)
    return report

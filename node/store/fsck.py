"""fsck: re-hash every stored buffer, report and quarantine the damaged ones.

Compressed files (as hashserver leaves them) are decoded, hashed and checked against their
length sidecar; a sidecar whose compressed file is gone is a stray, moved to quarantine. A file that
does not verify while another tool's lock covers it (locks.py) is reported as locked and
left alone: its writer may not be done.

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
from .layout import LENGTH_SIDECAR_SUFFIX, SUFFIX_ENCODINGS, BufferLocation
from .reader import VerifiedReader, open_in_shard, open_shard
from .verified import FileStamp


@dataclass
class FsckReport:
    checked: int = 0
    bytes_checked: int = 0
    corrupt: list[str] = field(default_factory=list)  # paths of damaged buffers
    strays: list[str] = field(default_factory=list)  # symlinks, non-regular files
    quarantined: list[str] = field(default_factory=list)
    #: files that failed verification under another tool's lock (left alone)
    locked: list[str] = field(default_factory=list)
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
    orphans = orphan_sidecars(store)  # before any repair removes a (stray) sibling
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

        def damaged(
            location: BufferLocation, reason: str, stamp: FileStamp | None, checksum: str = checksum
        ) -> None:
            if store.locked(checksum, location) or store.changed_since(location, stamp):
                report.locked.append(location.path)  # its writer may not be done
                return
            report.corrupt.append(location.path)
            if repair:
                target = store.quarantine(location, reason, stamp)
                if target:
                    report.quarantined.append(target)

        try:
            # a compressed file is decoded (hashed) and its length sidecar checked
            VerifiedReader(opened, checksum, opened.location.encoding, on_corrupt=damaged).read_all()
        except StoreError:
            pass
        if progress is not None:
            progress(opened.stored_size)
    report.strays.extend(orphans)
    if repair:  # sidecars left alone, and those of stray files removed above
        for path in orphan_sidecars(store):
            location = BufferLocation(os.path.dirname(path), os.path.basename(path), None)
            target = store.quarantine(location, "orphan length sidecar")
            if target and path in orphans:
                report.quarantined.append(target)
    return report


def orphan_sidecars(store: BufferStore) -> list[str]:
    """Length sidecars without a compressed file beside them (strays; repair moves them to
    quarantine)."""
    orphans = []
    for shard in store.shards():
        names = set(os.listdir(shard))
        for name in sorted(names):
            if not name.endswith(LENGTH_SIDECAR_SUFFIX):
                continue
            checksum = name[: -len(LENGTH_SIDECAR_SUFFIX)]
            if not any(checksum + suffix in names for suffix in SUFFIX_ENCODINGS):
                orphans.append(os.path.join(shard, name))
    return orphans

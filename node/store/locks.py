"""Lock files of other tools sharing the buffer directory, honoured as hashserver does.

A tool that writes buffer files in place (Seamless's vault writer, a hashserver beside
the node) announces it with a lock file: ``.LOCK`` at the top of the buffer directory
(held for a whole batch), ``<shard>/.LOCK`` in a prefix layout's shard directory, or
``<name>.LOCK`` beside the file being written (``<checksum>.LOCK``, or the compressed
file's name with ``.LOCK`` appended). A lock is in force while it exists and its
modification time is less than the lock timeout (``buffers.lock_timeout``, hashserver's
120 s by default) old; an older one was left by a writer that died, and is ignored.

What the node does with them (theory of operation):

* a read that finds the buffer missing, or a small read whose bytes do not hash to its
  name, waits while a lock is in force (up to the lock timeout) and looks again;
* a large read, whose answer is streamed and cannot be taken back, waits before it
  starts while a lock is in force for that buffer;
* a file is never judged corrupt nor moved to quarantine while a lock is in force for
  it: the writer may not have finished.

Pure path logic and one stat per lock file; no waiting here (see ``BufferService``).
"""

from __future__ import annotations

import os
import time
from typing import Callable

from .layout import Layout, shard_directory

#: hashserver's default lock timeout (seconds)
DEFAULT_LOCK_TIMEOUT = 120.0
LOCK_NAME = ".LOCK"
LOCK_SUFFIX = ".LOCK"
#: how often a waiting read looks at the lock files again (seconds)
POLL_INTERVAL = 0.1


def lock_paths(root: str, layout: Layout, checksum: str, filenames: tuple[str, ...] = ()) -> list[str]:
    """Every lock file that, if in force, covers *checksum* in the directory *root*."""
    paths = [os.path.join(root, LOCK_NAME)]
    shard = shard_directory(root, checksum, layout)
    if layout == "prefix":
        paths.append(os.path.join(shard, LOCK_NAME))
    names = dict.fromkeys((checksum, *filenames))
    paths.extend(os.path.join(shard, name + LOCK_SUFFIX) for name in names)
    return paths


def lock_in_force(
    paths: list[str], timeout: float, clock: Callable[[], float] = time.time
) -> bool:
    """Whether any of *paths* exists with a modification time within *timeout* seconds."""
    if timeout <= 0:
        return False
    now = clock()
    for path in paths:
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        if now - mtime <= timeout:
            return True
    return False

"""Where a buffer lives on disk: pure path logic, shared with upstream hashserver.

Two layouts exist, both readable by Seamless's hashserver 1.1:

* ``prefix`` (the default): ``DIR/ab/abcd...``, the first two hex characters as a shard
  directory, announced by the sentinel file ``DIR/.HASHSERVER_PREFIX`` containing ``1\\n``;
* ``flat``: ``DIR/abcd...``.

A buffer may be stored as sent by its uploader: plain, or compressed with zstd (``.zst``)
or gzip (``.gz``). A compressed file has a sidecar ``<name>.BUFFERLENGTH`` holding the
length of the decompressed buffer, as hashserver writes it.

Node-private state sits in dot-directories that hashserver ignores: ``.tmp`` for writes in
progress (cleared at start-up) and ``.quarantine`` for files that failed verification.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

Layout = Literal["prefix", "flat"]

PREFIX_SENTINEL = ".HASHSERVER_PREFIX"
PREFIX_SENTINEL_CONTENT = b"1\n"
TMP_DIR = ".tmp"
QUARANTINE_DIR = ".quarantine"
LENGTH_SIDECAR_SUFFIX = ".BUFFERLENGTH"

#: Stored encodings in order of preference when reading: plain first.
ENCODING_SUFFIXES: dict[str | None, str] = {None: "", "zstd": ".zst", "gzip": ".gz"}
SUFFIX_ENCODINGS = {suffix: enc for enc, suffix in ENCODING_SUFFIXES.items() if suffix}


@dataclass(frozen=True)
class BufferLocation:
    """Where one stored variant of a buffer would be: a directory and a file name.

    ``directory`` is the shard directory (or the store root for ``flat``); the file is
    opened relative to it so that a symlink planted as the final name is never followed.
    """

    directory: str
    filename: str
    encoding: str | None

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.filename)


def shard_directory(root: str, checksum: str, layout: Layout) -> str:
    """The directory that holds *checksum*'s files."""
    if layout == "prefix":
        return os.path.join(root, checksum[:2])
    return root


def candidate_locations(root: str, checksum: str, layout: Layout) -> list[BufferLocation]:
    """Every place *checksum* may be stored, plain first, then compressed variants."""
    directory = shard_directory(root, checksum, layout)
    return [
        BufferLocation(directory, checksum + suffix, encoding)
        for encoding, suffix in ENCODING_SUFFIXES.items()
    ]


def detect_layout(root: str) -> Layout:
    """Guess the layout of an existing directory.

    The sentinel decides ``prefix``. Without it, a directory that already holds
    checksum-named files at its top level is ``flat``; anything else (new or empty) gets
    the default ``prefix``.
    """
    if os.path.exists(os.path.join(root, PREFIX_SENTINEL)):
        return "prefix"
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                name = entry.name.split(".", 1)[0]
                if len(name) == 64 and entry.is_file(follow_symlinks=False):
                    return "flat"
    except FileNotFoundError:
        pass
    return "prefix"


def encoding_of_filename(name: str) -> tuple[str, str | None] | None:
    """Split a stored file name into (checksum, encoding); None if it is not a buffer file."""
    for suffix, encoding in SUFFIX_ENCODINGS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], encoding
    if name.endswith(LENGTH_SIDECAR_SUFFIX):
        return None
    return name, None

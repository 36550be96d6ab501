"""Checksums: the names of buffers.

A checksum is the SHA-256 digest of a buffer, written as 64 lowercase hexadecimal
characters. Every string that claims to be a checksum is validated with
``re.fullmatch(r"[0-9a-f]{64}", s)`` (ASCII only, no trailing newline) before it is used
for anything else: building a path, a database key, a log line.
"""

from __future__ import annotations

import hashlib
import re

from .errors import InvalidChecksum

_CHECKSUM_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)

#: The checksum of the empty buffer.
EMPTY_CHECKSUM = hashlib.sha256(b"").hexdigest()


def is_checksum(value: object) -> bool:
    """True when *value* is a str of exactly 64 lowercase ASCII hex characters."""
    return isinstance(value, str) and _CHECKSUM_RE.fullmatch(value) is not None


def parse_checksum(value: object) -> str:
    """Return *value* unchanged if it is a valid checksum, else raise InvalidChecksum.

    Nothing is normalised: uppercase hex, whitespace, a ``0x`` prefix are all rejected,
    because two spellings of one name would let one buffer hide behind another key.
    """
    if not is_checksum(value):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidChecksum(f"not a checksum (64 lowercase hex characters): {shown}")
    return value  # type: ignore[return-value]


def parse_checksum_list(value: object, *, max_items: int | None = None) -> list[str]:
    """Validate a JSON-decoded list of checksums (as sent to ``/has``)."""
    if not isinstance(value, list):
        raise InvalidChecksum("expected a JSON list of checksums")
    if max_items is not None and len(value) > max_items:
        raise InvalidChecksum(f"too many checksums in one request: {len(value)} > {max_items}")
    return [parse_checksum(item) for item in value]


def buffer_checksum(data: bytes | bytearray | memoryview) -> str:
    """The checksum of an in-memory buffer."""
    return hashlib.sha256(data).hexdigest()


def new_hasher() -> "hashlib._Hash":
    """A streaming hasher; feed it with ``update`` and read ``hexdigest()``."""
    return hashlib.sha256()

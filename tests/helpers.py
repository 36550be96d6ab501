"""Small helpers shared by tests."""

from __future__ import annotations

import hashlib
import os


def random_buffer(size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).hexdigest(), data


def checksum_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import os
import socket
import sys


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on *host* now (for servers that cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bin_path(name: str) -> str:
    """A console script of this virtual environment, else *name* on the PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name

"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import aiohttp


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on *host* now (for servers that cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bin_path(name: str) -> str:
    """A console script of this virtual environment, else *name* on the PATH."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.exists(candidate) else name


async def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None, attempts: int = 600) -> None:
    """Poll ``url/healthcheck`` until it answers 200 (RuntimeError if it never does, or
    as soon as *proc* has exited)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(attempts):
            if proc is not None and proc.poll() is not None:
                break
            try:
                async with session.get(url + "/healthcheck") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} never became healthy")

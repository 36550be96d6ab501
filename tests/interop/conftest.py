"""Fixtures for interoperability tests: a buffers-only node and the real upstream hashserver."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import trio

from .support import BUFFERS_ONLY, Hashserver, free_port, venv_script


@pytest.fixture
async def node(start_node):  # type: ignore[no-untyped-def]
    """A node running the buffers role (overrides the project-wide fixture)."""
    return await start_node(node=BUFFERS_ONLY)


@pytest.fixture
def hashserver(tmp_path: Path) -> Iterator[Callable[..., "trio.abc.Awaitable[Hashserver]"]]:
    """``hs = await hashserver(directory, layout="prefix")``: the real upstream hashserver
    (the ``hashserver`` console script), writable, on a free port of 127.0.0.1."""
    started: list[Hashserver] = []
    exe = venv_script("hashserver")

    async def start(directory: Path, layout: str = "prefix", writable: bool = True) -> Hashserver:
        last_error = ""
        for attempt in range(3):  # another process may grab the port between probe and bind
            port = free_port()
            log_path = tmp_path / f"hashserver{len(started)}-{attempt}.log"
            args = [exe, str(directory), "--port", str(port), "--host", "127.0.0.1", "--layout", layout]
            if writable:
                args.append("--writable")
            env = {k: v for k, v in os.environ.items() if not k.startswith("HASHSERVER_")}
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
            hs = Hashserver(directory, layout, f"http://127.0.0.1:{port}", proc, log_path)
            started.append(hs)
            async with httpx.AsyncClient(timeout=2) as client:
                with trio.move_on_after(30):
                    while proc.poll() is None:
                        try:
                            r = await client.get(hs.url + "/healthcheck")
                            if r.status_code == 200 and r.text == "OK":
                                return hs
                        except httpx.TransportError:
                            pass
                        await trio.sleep(0.05)
            hs.kill()
            last_error = hs.log()
        pytest.fail(f"upstream hashserver did not start:\n{last_error}")

    yield start  # type: ignore[misc]
    for hs in started:
        hs.kill()

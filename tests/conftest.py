"""Shared fixtures: real nodes on 127.0.0.1 with port 0, in-process or as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import httpx
import pytest
import trio

from node.app import serve_node
from node.config import NodeConfig, build_config

LISTEN_RE = re.compile(r"seamless-node listening on (https?://\S+) \(roles: ([^)]*)\)")


def make_config(data_dir: Path, **sections: dict[str, object]) -> NodeConfig:
    flags: dict[str, dict[str, object]] = {"node": {"host": "127.0.0.1", "port": 0, "data_dir": str(data_dir)}}
    for section, values in sections.items():
        flags.setdefault(section, {}).update(values)
    return build_config(environ={}, flags=flags)


@dataclass
class RunningNode:
    url: str
    config: NodeConfig
    cancel_scope: trio.CancelScope
    #: set to shut the node down gracefully (as SIGTERM does)
    stop_event: trio.Event
    #: set once the node has stopped
    stopped: trio.Event

    @property
    def buffers_url(self) -> str:
        return self.url + "/buffers"

    @property
    def buffer_dir(self) -> Path:
        return Path(self.config.buffer_directory)

    def stop(self) -> None:
        """Stop at once."""
        self.cancel_scope.cancel()

    def shut_down(self) -> None:
        """Begin a graceful shutdown (``await node.stopped.wait()`` for its end)."""
        self.stop_event.set()


@pytest.fixture
async def start_node(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Callable[..., "trio.abc.Awaitable[RunningNode]"]]:
    """``node = await start_node(buffers={...})``: an in-process node in the test's nursery."""
    counter = 0

    async def start(data_dir: Path | None = None, **sections: dict[str, object]) -> RunningNode:
        nonlocal counter
        counter += 1
        config = make_config(data_dir or tmp_path / f"node{counter}", **sections)
        scope = trio.CancelScope()
        stop, stopped = trio.Event(), trio.Event()

        async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await serve_node(config, stop=stop, task_status=task_status)
            finally:
                stopped.set()

        urls = await nursery.start(run)
        return RunningNode(urls[0], config, scope, stop, stopped)

    yield start  # type: ignore[misc]


@pytest.fixture
async def node(start_node: Callable[..., "trio.abc.Awaitable[RunningNode]"]) -> RunningNode:
    return await start_node()  # type: ignore[no-any-return]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


class NodeProcess:
    """A node started as its own process with the real CLI."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stderr_path: Path | None = None

    def start(self, log_path: Path, timeout: float = 30.0) -> "NodeProcess":
        self.stderr_path = log_path
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "run", *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = LISTEN_RE.search(line)
            if m:
                self.url = m.group(1)
                return self
        self.kill()
        raise RuntimeError(f"node did not start; see {log_path}:\n{log_path.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> int:
        """SIGTERM and wait; return the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """``proc = node_process("--roles", "buffers")``: a node subprocess on port 0."""
    started: list[NodeProcess] = []

    def start(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None) -> NodeProcess:
        data = data_dir or tmp_path / f"proc{len(started)}"
        proc = NodeProcess(["--host", "127.0.0.1", "--port", "0", "--data-dir", str(data), *args], env)
        started.append(proc)
        return proc.start(tmp_path / f"proc{len(started)}.log")

    yield start
    for proc in started:
        proc.kill()

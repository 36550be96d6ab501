"""Helpers for job tests: transformation dicts, uploads, job processes."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import psutil
import trio

from node import celltypes

JOBLESS = {"roles": ["buffers", "database", "jobless"]}


def buffer_of(value: Any, celltype: str) -> tuple[str, bytes]:
    data = celltypes.serialize(value, celltype)
    return hashlib.sha256(data).hexdigest(), data


class Transformations:
    """Builds transformation dicts and remembers the buffers they need."""

    def __init__(self) -> None:
        self.buffers: dict[str, bytes] = {}

    def add(self, value: Any, celltype: str) -> str:
        cs, data = buffer_of(value, celltype)
        self.buffers[cs] = data
        return cs

    def python(self, code: str, output: str = "mixed", **pins: Any) -> dict[str, Any]:
        tf: dict[str, Any] = {
            "__language__": "python",
            "__output__": ["result", output, None],
            "code": ["python", "transformer", self.add(code, "python")],
        }
        for name, value in pins.items():
            celltype = "mixed"
            if isinstance(value, tuple):
                value, celltype = value
            tf[name] = [celltype, None, self.add(value, celltype)]
        return tf

    def bash(self, script: str, output: str = "bytes", **pins: Any) -> dict[str, Any]:
        tf: dict[str, Any] = {
            "__language__": "bash",
            "__output__": ["result", output, None],
            "code": ["text", None, self.add(script, "text")],
        }
        for name, value in pins.items():
            celltype = "bytes" if isinstance(value, bytes) else "str"
            if isinstance(value, tuple):
                value, celltype = value
            tf[name] = [celltype, None, self.add(value, celltype)]
        return tf

    async def upload(self, client: httpx.AsyncClient, url: str) -> None:
        for cs, data in self.buffers.items():
            r = await client.put(f"{url}/buffers/{cs}", content=data)
            assert r.status_code in (200, 201), r.text


def workers() -> list[psutil.Process]:
    """The pool's worker processes started by this (test) process."""
    found = []
    for proc in psutil.Process().children():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "backends.worker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def is_waiting(proc: psutil.Process) -> bool:
    """The next job's process, waiting for its job (in the sandbox: also its shim, the
    process outside the job's PID namespace that waits for it)."""
    name = proc.name()
    if name == "seamless-ready":
        return True
    if name == "seamless-shim":
        return all(is_waiting(child) for child in proc.children())
    # forked by its worker a moment ago and not renamed yet: it still has the worker's name
    parent = proc.parent()
    if parent is None or name != parent.name():
        return False
    return "jobless.backends.worker" in " ".join(parent.cmdline())


def job_processes() -> list[psutil.Process]:
    """Job processes of the local pools started by this (test) process: every descendant
    of a pool worker, except the next job's process waiting in each worker."""
    found = []
    for worker in workers():
        try:
            descendants = worker.children(recursive=True)
        except psutil.Error:
            continue
        for proc in descendants:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE or is_waiting(proc):
                    continue
            except psutil.Error:
                continue
            found.append(proc)
    return found


def processes_matching(*words: str) -> list[psutil.Process]:
    """Live processes on this machine whose command line contains one of *words*."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if any(word in cmdline for word in words):
            found.append(proc)
    return found


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> float:  # noqa: ASYNC109
    """Poll *predicate* until true; return the seconds it took (fail after *timeout*)."""
    start = trio.current_time()
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling the OS, not a trio condition
            await trio.sleep(interval)
    return trio.current_time() - start

"""Helpers for interoperability tests: the real upstream hashserver and the real Seamless
1.x client programs, each in its own process, talking to nodes on 127.0.0.1.

Fixtures using these are in conftest.py."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import zstandard

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "buffer_client_driver.py"


def venv_script(name: str) -> str:
    """A console script installed next to this Python (the test virtualenv's bin/)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"console script {name!r} is not installed (pip install -e '.[test]')")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stored_path(directory: Path, checksum: str, layout: str, encoding: str | None = None) -> Path:
    """Where hashserver 1.1 (and the node) keep a buffer file."""
    suffix = {None: "", "zstd": ".zst", "gzip": ".gz"}[encoding]
    base = directory / checksum[:2] if layout == "prefix" else directory
    return base / (checksum + suffix)


def place_compressed(
    directory: Path, data: bytes, encoding: str, layout: str = "prefix", *, sidecar: bool = True
) -> Path:
    """Put *data* into a buffer directory compressed, as upstream hashserver leaves a
    compressed upload (the node itself stores every buffer plain): ``<checksum>.zst`` or
    ``.gz``, mode 0444, and a ``<checksum>.BUFFERLENGTH`` sidecar with the decompressed
    length, unless *sidecar* is false (a file copied in by hand). Returns its path."""
    checksum = hashlib.sha256(data).hexdigest()
    body = zstandard.ZstdCompressor().compress(data) if encoding == "zstd" else gzip.compress(data)
    path = stored_path(directory, checksum, layout, encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    path.chmod(0o444)
    if sidecar:
        sidecar_path = stored_path(directory, checksum, layout).with_name(checksum + ".BUFFERLENGTH")
        sidecar_path.write_text(str(len(data)))
    return path


#: Only the role under test: these tests must not depend on which other roles are built.
BUFFERS_ONLY = {"roles": ["buffers"]}


# -- upstream hashserver -------------------------------------------------------------


@dataclass
class Hashserver:
    """One running upstream ``hashserver`` process."""

    directory: Path
    layout: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    async def stop(self) -> None:
        """SIGTERM and wait for the process to exit (uvicorn shuts down cleanly)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await trio.to_thread.run_sync(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await trio.to_thread.run_sync(self.proc.wait)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- Seamless 1.x client programs ----------------------------------------------------


def seamless_env(
    home: Path, buffers_url: str | None, *, readonly: bool = False, directory: Path | None = None
) -> dict[str, str]:
    """Environment for the Seamless command-line tools, pointing them at *buffers_url*.

    ``SEAMLESS_REMOTE_CLIENTS`` is read by ``seamless_config.extern_clients.
    set_remote_clients_from_env`` (called by seamless-upload and seamless-download before
    any other configuration): a JSON dict ``{"buffer": [...], "database": [...]}``
    whose buffer entries give ``remote_url``, optionally ``remote_directory`` (a buffer
    directory the tools then read directly, falling back to the URL) and ``readonly``.
    It takes effect only when ``SEAMLESS_CACHE`` is unset, and a malformed value is
    silently ignored (the tools then upload nowhere and still exit 0), so every test
    checks the node's side. ``HOME`` points to an empty directory so that no
    ``~/.seamless/clusters.yaml`` of this machine is used.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    if buffers_url is not None:
        entry: dict[str, object] = {"readonly": readonly, "remote_url": buffers_url}
        if directory is not None:
            entry["remote_directory"] = str(directory)
        env["SEAMLESS_REMOTE_CLIENTS"] = json.dumps({"buffer": [entry], "database": []})
    return env


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: str


async def run_tool(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 60) -> Completed:
    """Run a program to completion without blocking the trio loop (the node keeps serving)."""
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            args, env=env, cwd=str(cwd), capture_stdout=True, capture_stderr=True, check=False
        )
    return Completed(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))


async def drive_buffer_client(
    mode: str,
    url: str,
    steps: list[dict],
    *,
    home: Path,
    timeout: float = 60,
    extra_env: dict[str, str] | None = None,
) -> list[dict]:
    """Run buffer_client_driver.py (the real Seamless client code) and return its results."""
    env = {**seamless_env(home, None), **(extra_env or {})}
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            [sys.executable, str(DRIVER), mode, url],
            stdin=json.dumps(steps).encode(),
            env=env,
            cwd=str(home),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")[-4000:]
        pytest.fail(f"client driver failed ({proc.returncode}):\n{stderr}")
    out = json.loads(proc.stdout)
    assert len(out["results"]) == len(steps)
    return out["results"]

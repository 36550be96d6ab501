"""Bash transformations, as Seamless 1.x runs them.

In a fresh, empty working directory: every input pin becomes a file named after the pin
(small scalar and text pins are also environment variables of that name; a directory pin
becomes a directory of files), the script runs as ``/bin/bash -c`` with the header
``set -u -e``, background processes still running when the script ends get SIGTERM (as
Seamless's ``trap 'jobs -p | xargs -r kill' EXIT`` does, without the extra processes:
the job process signals its own process group), and the result is read from
``RESULT``: a file becomes a value, a directory a dict ``{member path: value}``.

How a pin is written and how RESULT is read follow seamless-transformer's bash executor
byte for byte, so that the same transformation gives the same result checksum.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from typing import Any

import numpy as np

from .... import mixed
from ....celltypes import deserialize
from ..spec import JobSpec, PinInput

HEADER = "set -u -e\n"
#: output celltypes whose RESULT files are taken as raw bytes
RAW_OUTPUTS = ("bytes", "folder", "deepfolder")


class BashFailure(Exception):
    """The script failed; the message is meant for the user."""


def _write(path: str, data: bytes) -> None:
    if path.startswith("/") or ".." in path.split("/"):
        raise BashFailure(f"pin {path}: absolute paths and .. are not allowed")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _materialize(pin: PinInput, env: dict[str, str]) -> None:
    fs = (pin.format or {}).get("filesystem") or {}
    if pin.members is not None or fs.get("mode") == "directory":
        os.makedirs(pin.name, exist_ok=True)
        for path, data in sorted((pin.members or {}).items()):
            _write(os.path.join(pin.name, path), data)
        env[pin.name] = pin.name
        return
    value = deserialize(pin.data, pin.celltype or "mixed")
    if isinstance(value, bytes):
        _write(pin.name, value)
        return
    storage, form = mixed.get_form(value)
    if storage.startswith("mixed"):
        raise BashFailure(f"pin '{pin.name}' has '{storage}' data")
    if storage == "pure-plain":
        if isinstance(form, str):  # a scalar
            text = str(value)
            if not text.endswith("\n"):
                text += "\n"
            if "." not in pin.name and len(text) <= 1000:
                env[pin.name] = text.rstrip("\n")
        else:
            text = json.dumps(value)
        _write(pin.name, text.encode())
        return
    arr = np.asarray(value)
    if arr.dtype == np.uint8 and arr.ndim == 1:
        _write(pin.name, arr.tobytes())
    else:
        out = io.BytesIO()
        np.save(out, arr, allow_pickle=False)
        _write(pin.name, out.getvalue())


def read_result_file(data: bytes, output_celltype: str) -> Any:
    """A RESULT file as a value: raw for byte outputs, else .npy, JSON, or text."""
    if output_celltype in RAW_OUTPUTS:
        return data
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError):
        pass
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return json.loads(text)
    except ValueError:
        return text


def _terminate_background_jobs() -> None:
    """SIGTERM every other process of this job's process group (this process leads it),
    or, in the sandbox, where this process is the init of the job's PID namespace, every
    other process of the namespace (those that left the group with setsid included)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        if os.getpid() == 1:
            os.kill(-1, signal.SIGTERM)
        else:
            os.killpg(os.getpgrp(), signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    return ("...\n" if size > limit else "") + text


def _report(problem: str, code: str, stdout: str, stderr: str) -> str:
    parts = [
        "Bash transformer exception",
        "==========================",
        "",
        f"Error: {problem}",
        "",
        "*************************************************",
        "* Command",
        "*************************************************",
        code,
        "*************************************************",
    ]
    for title, text in (("Standard output", stdout), ("Standard error", stderr)):
        if text.strip():
            parts += [f"* {title}", "*************************************************", text.rstrip("\n"),
                      "*************************************************"]
    return "\n".join(parts)


def run_bash(spec: JobSpec, workdir: str, ctldir: str, environ: dict[str, str]) -> Any:
    """Run the script in *workdir* (the current directory); return the RESULT value."""
    env = dict(environ)
    for pin in sorted(spec.pins, key=lambda p: p.name):
        _materialize(pin, env)
    stdout_path = os.path.join(ctldir, "stdout")
    stderr_path = os.path.join(ctldir, "stderr")
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.run(
            HEADER + spec.code,
            shell=True,
            executable="/bin/bash",
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            check=False,
        )
    _terminate_background_jobs()
    if proc.returncode:
        code = proc.returncode if proc.returncode > 0 else f"killed by signal {-proc.returncode}"
        raise BashFailure(_report(f"Return code {code}", spec.code, _tail(stdout_path), _tail(stderr_path)))
    result_path = os.path.join(workdir, "RESULT")
    if os.path.isdir(result_path):
        result: dict[str, Any] = {}
        for dirpath, _, filenames in os.walk(result_path):
            for filename in filenames:
                full = os.path.join(dirpath, filename)
                member = os.path.relpath(full, result_path)
                with open(full, "rb") as f:
                    result[member] = read_result_file(f.read(), spec.output_celltype)
        if not result:
            raise BashFailure(_report("Result folder RESULT is empty", spec.code, _tail(stdout_path), ""))
        return result
    if not os.path.exists(result_path):
        raise BashFailure(
            _report(
                "Result file/folder RESULT does not exist", spec.code, _tail(stdout_path), _tail(stderr_path)
            )
        )
    with open(result_path, "rb") as f:
        return read_result_file(f.read(), spec.output_celltype)

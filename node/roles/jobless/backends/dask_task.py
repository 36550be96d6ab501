"""What runs on a Dask worker: one job, in a runner process of its own session.

``run_job`` is the task function. It writes the job spec to a fresh directory, starts
``python -m node.roles.jobless.runner`` there in a new session (so that the job's
processes can be killed without touching the Dask worker), waits, and returns the
packed outcome. ``kill_job`` is what the node sends to every worker with
``Client.run`` when it cancels a job: cancelling a Dask future does not stop a task
that is already running, so the runner is told to kill its job (SIGTERM: it kills the
job's process group and exits), and anything left of the runner's session is killed a
second later.

Both functions live in this module, without any import of Dask, so that the workers
find them by name (seamless-node must be installed where the workers run).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

#: job key -> the runner process, per worker process
_RUNNING: dict[str, subprocess.Popen[bytes]] = {}
_LOCK = threading.Lock()
_CANCELLED: set[str] = set()


def _job_root(preferred: str | None) -> str:
    if preferred:
        try:
            os.makedirs(preferred, mode=0o700, exist_ok=True)
            return preferred
        except OSError:
            pass
    return tempfile.gettempdir()


def run_job(spec_bytes: bytes, job_key: str, job_root: str | None = None) -> bytes:
    """Run one job (a packed JobSpec); return the packed JobOutcome."""
    from ..spec import JobOutcome

    workdir = tempfile.mkdtemp(prefix="dask-job-", dir=_job_root(job_root))
    try:
        spec_path = os.path.join(workdir, "spec")
        outcome_path = os.path.join(workdir, "outcome")
        with open(spec_path, "wb") as f:
            f.write(spec_bytes)
        with _LOCK:
            if job_key in _CANCELLED:
                return JobOutcome.failure("killed", "Transformation was canceled").to_bytes()
            proc = subprocess.Popen(
                [sys.executable, "-m", "node.roles.jobless.runner", spec_path, outcome_path, workdir],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
            _RUNNING[job_key] = proc
        try:
            proc.wait()
        finally:
            with _LOCK:
                _RUNNING.pop(job_key, None)
            _kill_session(proc.pid)
        try:
            with open(outcome_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            error = f"the job runner on the Dask worker ended with status {proc.returncode} and no outcome"
            return JobOutcome.failure("internal", error).to_bytes()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_session(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_job(job_key: str, grace: float = 1.0) -> bool:
    """Kill the job *job_key* if it runs in this worker process; True if it did."""
    with _LOCK:
        proc = _RUNNING.get(job_key)
        if proc is None:
            if len(_CANCELLED) > 10_000:
                _CANCELLED.clear()
            _CANCELLED.add(job_key)  # not started yet here (or elsewhere): never start it
            return False
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    _kill_session(proc.pid)
    return True

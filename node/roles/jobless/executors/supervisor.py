"""Run one job in a child process and bring back its outcome, whatever happens.

``supervise`` forks; the child (``child.child_main``) becomes the leader of a new session
(so the job and everything it starts share one process group) and runs the job in a
fresh directory ``<job_root>/job-<cs>-XXXX/work``. The supervisor waits on a pidfd, reads
the child's outcome from a pipe as it comes, and enforces the wall-time limit. On
timeout or cancellation it kills the whole process group with SIGKILL.

After the child has ended, whatever is left of the job is killed: the rest of its
process group, and (when the supervisor is a child subreaper, see ``become_subreaper``)
any process that escaped the group with setsid and was re-parented to the supervisor.
The job directory is then removed. The supervising process must be single-threaded
when it forks (the local pool's workers and the runner are).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import tempfile
import time
from typing import Any, Callable

from .. import spec as S
from ..spec import JobOutcome, JobSpec

_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory")


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (prctl PR_SET_CHILD_SUBREAPER)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _own_children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry))
    return found


def reap_leftovers(rounds: int = 5) -> None:
    """Kill and reap every remaining child of this process (escaped job processes)."""
    for _ in range(rounds):
        children = _own_children()
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _tail(path: str, limit: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _classify(outcome: JobOutcome, spec: JobSpec, stderr: str) -> JobOutcome:
    """Name the limit a failed job ran into, when the signs say so."""
    if outcome.ok or outcome.kind != S.ERROR:
        return outcome
    text = outcome.error + stderr
    if spec.limits.memory and any(sign in text for sign in _MEMORY_SIGNS):
        error = (
            f"memory limit exceeded: the job may use at most {spec.limits.memory} bytes of memory "
            f"(jobless.max_memory)\n\n{outcome.error}"
        )
        return JobOutcome.failure(S.MEMORY, error, outcome.stats)
    if spec.limits.output and ("File too large" in text or "File size limit exceeded" in text):
        error = f"output limit exceeded: a file grew over {spec.limits.output} bytes\n\n{outcome.error}"
        return JobOutcome.failure(S.OUTPUT, error, outcome.stats)
    return outcome


def supervise(
    spec: JobSpec,
    job_root: str,
    *,
    on_started: Callable[[int], None] | None = None,
    control_fd: int | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> JobOutcome:
    """Run *spec* to its end; never raises for anything the job does.

    When *control_fd* becomes readable, *should_cancel* is called; True kills the job."""
    from .child import child_main

    os.makedirs(job_root, exist_ok=True)
    jobdir = tempfile.mkdtemp(prefix=f"job-{spec.checksum[:12]}-", dir=job_root)
    workdir, ctldir = os.path.join(jobdir, "work"), os.path.join(jobdir, "ctl")
    os.mkdir(workdir, 0o700)
    os.mkdir(ctldir, 0o700)
    read_fd, write_fd = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(read_fd)
        child_main(spec, workdir, ctldir, write_fd)
    os.close(write_fd)
    try:
        if on_started is not None:
            on_started(pid)
        status, rusage, data, ended_by = _wait(pid, read_fd, spec, started, control_fd, should_cancel)
    finally:
        os.close(read_fd)
        kill_group(pid)
        reap_leftovers()
    stats = {
        "wall_time_seconds": round(time.monotonic() - started, 6),
        "cpu_user_seconds": round(rusage.ru_utime, 6) if rusage else 0.0,
        "cpu_system_seconds": round(rusage.ru_stime, 6) if rusage else 0.0,
        "memory_peak_bytes": rusage.ru_maxrss * 1024 if rusage else 0,
    }
    stderr = _tail(os.path.join(ctldir, "stderr"))
    shutil.rmtree(jobdir, ignore_errors=True)
    if ended_by == "cancel":
        return JobOutcome.failure(S.KILLED, "Transformation was canceled", stats)
    if ended_by == "timeout":
        limit = spec.limits.wall_time
        error = f"wall time limit exceeded: the job ran for more than {limit:g} s (jobless.max_wall_time)"
        return JobOutcome.failure(S.TIMEOUT, error, stats)
    if ended_by == "overflow":
        error = f"output limit exceeded: over {spec.limits.output} bytes of results"
        return JobOutcome.failure(S.OUTPUT, error, stats)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        try:
            outcome = JobOutcome.from_bytes(bytes(data))
        except (ValueError, KeyError, TypeError) as exc:
            return JobOutcome.failure(S.INTERNAL, f"the job process sent a malformed outcome: {exc}", stats)
        outcome = JobOutcome(outcome.ok, outcome.result, outcome.buffers, outcome.error, outcome.kind, stats)
        return _classify(outcome, spec, stderr)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        what = f"the job process was killed by signal {sig} ({signal.Signals(sig).name})"
        if sig == signal.SIGKILL and spec.limits.memory:
            what += "; it may have run out of memory"
    else:
        what = f"the job process exited with status {os.WEXITSTATUS(status)} without an outcome"
    failure = JobOutcome.failure(S.ERROR, what + (f"\n{stderr}" if stderr else ""), stats)
    return _classify(failure, spec, stderr)


def _wait(
    pid: int,
    read_fd: int,
    spec: JobSpec,
    started: float,
    control_fd: int | None,
    should_cancel: Callable[[], bool] | None,
) -> tuple[int, Any, bytearray, str]:
    """Wait for the child, collecting its outcome; returns (status, rusage, data, ended_by)."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(read_fd, select.POLLIN)
    if control_fd is not None:
        poller.register(control_fd, select.POLLIN)
    data = bytearray()
    cap = 4 * spec.limits.output + (1 << 20) if spec.limits.output else None
    ended_by = ""
    pipe_open = True
    exited = False
    try:
        while not (exited and not pipe_open):
            remaining = spec.limits.wall_time - (time.monotonic() - started)
            if remaining <= 0 and not ended_by:
                ended_by = "timeout"
                kill_group(pid)
            timeout_ms = None if ended_by else max(0, int(remaining * 1000) + 1)
            for fd, _event in poller.poll(timeout_ms):
                if fd == read_fd:
                    try:
                        chunk = os.read(read_fd, 1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        pipe_open = False
                        poller.unregister(read_fd)
                        continue
                    data += chunk
                    if cap is not None and len(data) > cap and not ended_by:
                        ended_by = "overflow"
                        kill_group(pid)
                elif fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    data += _drain(read_fd)  # a forked grandchild may hold the pipe open
                    pipe_open = False
                elif fd == control_fd and should_cancel is not None:
                    if should_cancel() and not ended_by:
                        ended_by = "cancel"
                        kill_group(pid)
        _, status, rusage = os.wait4(pid, 0)
    except BaseException:
        kill_group(pid)
        try:
            os.wait4(pid, 0)
        except ChildProcessError:
            pass
        raise
    finally:
        os.close(pidfd)
    return status, rusage, data, ended_by


def _drain(fd: int) -> bytes:
    """Everything readable from *fd* now, without blocking."""
    os.set_blocking(fd, False)
    parts = []
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        parts.append(chunk)
    return b"".join(parts)

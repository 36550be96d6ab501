"""Run one job in a child process and bring back its outcome, whatever happens.

A job's process is forked *ahead* of its job (``prepare``): the child
(``child.child_main``) becomes the leader of a new session (so the job and everything
it starts share one process group), moves into a fresh directory
``<job_root>/job-XXXX/work`` and waits for its spec on a pipe. ``run`` sends the spec,
reads the outcome from another pipe as it comes, and enforces the wall-time limit; on
timeout or cancellation it kills the whole process group with SIGKILL. An outcome is
complete when its announced length has arrived: the supervisor answers at once, and
``finish`` then waits for the child to exit, kills whatever is left of the job (the
rest of its process group, and, when the supervisor is a child subreaper (see
``become_subreaper``), any process that escaped the group with setsid and was
re-parented to the supervisor), and removes the job directory. The local pool's workers
finish a job and fork the next child after answering, off the job's round trip.

``supervise`` is the three in a row. The supervising process must be single-threaded
when it forks (the local pool's workers and the runner are).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import spec as S
from ..spec import JobOutcome, JobSpec

if TYPE_CHECKING:
    from ..sandbox.setup import Sandbox, Slot

_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory")
_OUTPUT_SIGNS = ("File too large", "File size limit exceeded")


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
    """Living children of this (single-threaded) process, from /proc/<pid>/task/<pid>/children."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def reap_leftovers(rounds: int = 5, keep: frozenset[int] = frozenset()) -> None:
    """Kill and reap every remaining child of this process (escaped job processes),
    except those in *keep* (a prepared child waiting for its job)."""
    for _ in range(rounds):
        children = [pid for pid in _own_children() if pid not in keep]
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
    """The end of a file the job wrote. Read by the supervisor (root, seeing the whole
    host): never through a link, never anything but a regular file, never blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, max(0, size - limit)).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


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
    if spec.limits.output and any(sign in text for sign in _OUTPUT_SIGNS):
        error = (
            f"output limit exceeded: the job may write at most {spec.limits.output} bytes "
            f"(jobless.max_output)\n\n{outcome.error}"
        )
        return JobOutcome.failure(S.OUTPUT, error, outcome.stats)
    return outcome


_FRAME = struct.Struct("<Q")


class ChildLost(Exception):
    """The prepared child died before its job was handed over."""


@dataclass(eq=False)
class Child:
    """A forked job process waiting for (or running) its job."""

    pid: int
    pidfd: int
    spec_fd: int
    out_fd: int
    jobdir: str
    workdir: str
    ctldir: str
    #: the job's tmpfs and cgroup, when it runs sandboxed
    slot: "Slot | None" = None
    sandbox: "Sandbox | None" = None
    status: int | None = None  # set once reaped

    def reap(self, block: bool = True) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                return False
            self.status = status
        return True


def prepare(job_root: str, sandbox: "Sandbox | None" = None) -> Child:
    """Fork a job process that waits for its spec (in a sandbox slot of its own, when
    *sandbox* is given: its directories are then ``/job/work`` and ``/job/ctl`` as the
    job sees them)."""
    from .child import child_main

    slot = None
    if sandbox is not None:
        slot = sandbox.new_slot()
        jobdir, ctldir = slot.path, slot.ctldir
        child_dirs = ("/job/work", "/job/ctl")
    else:
        os.makedirs(job_root, exist_ok=True)
        jobdir = tempfile.mkdtemp(prefix="job-", dir=job_root)
        ctldir = os.path.join(jobdir, "ctl")
        child_dirs = (os.path.join(jobdir, "work"), ctldir)
        os.mkdir(child_dirs[0], 0o700)
        os.mkdir(ctldir, 0o700)
    spec_r, spec_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(spec_w)
        os.close(out_r)
        child_main(spec_r, out_w, *child_dirs, sandbox=sandbox, slot=slot)
    os.close(spec_r)
    os.close(out_w)
    return Child(pid, os.pidfd_open(pid), spec_w, out_r, jobdir, child_dirs[0], ctldir, slot, sandbox)


def finish(child: Child, keep: frozenset[int] = frozenset()) -> None:
    """After the job: let the child exit (or kill it), kill what is left, remove the
    job directory."""
    if child.spec_fd >= 0:  # a child still waiting for its job ends at end of input
        os.close(child.spec_fd)
        child.spec_fd = -1
    poller = select.poll()
    poller.register(child.pidfd, select.POLLIN)
    if child.status is None:
        poller.poll(2000)  # the child exits right after its outcome
        # SIGKILL the group while the child is not reaped yet (its pid cannot be reused)
        kill_group(child.pid)
    child.reap()
    reap_leftovers(keep=keep)
    for fd in (child.pidfd, child.out_fd):
        try:
            os.close(fd)
        except OSError:
            pass
    if child.sandbox is not None and child.slot is not None:
        child.sandbox.release(child.slot)
    else:
        shutil.rmtree(child.jobdir, ignore_errors=True)


def supervise(
    spec: JobSpec,
    job_root: str,
    *,
    on_started: Callable[[int], None] | None = None,
    control_fd: int | None = None,
    should_cancel: Callable[[], bool] | None = None,
    sandbox: "Sandbox | None" = None,
) -> JobOutcome:
    """Run *spec* to its end in a new child; never raises for anything the job does."""
    child = prepare(job_root, sandbox)
    try:
        return run(child, spec, on_started=on_started, control_fd=control_fd, should_cancel=should_cancel)
    finally:
        finish(child)


def run(
    child: Child,
    spec: JobSpec,
    *,
    on_started: Callable[[int], None] | None = None,
    control_fd: int | None = None,
    should_cancel: Callable[[], bool] | None = None,
    payload: bytes | None = None,
) -> JobOutcome:
    """Hand *spec* to a prepared child and wait for its outcome (see ``supervise``).

    When *control_fd* becomes readable, *should_cancel* is called; True kills the job.
    *payload* is ``spec.to_bytes()`` when the caller has it already. Raises ChildLost if
    the child died while it waited for its job."""
    started = time.monotonic()
    try:
        if payload is None:
            payload = spec.to_bytes()
        view = memoryview(_FRAME.pack(len(payload)) + payload)
        while view:
            view = view[os.write(child.spec_fd, view[: 1 << 20]) :]
        os.close(child.spec_fd)
        child.spec_fd = -1
    except BrokenPipeError:
        raise ChildLost("the job process died before its job started") from None
    if on_started is not None:
        on_started(child.pid)
    data, ended_by = _wait(child, spec, started, control_fd, should_cancel)
    wall = round(time.monotonic() - started, 6)
    payload_out = bytes(data[_FRAME.size :]) if ended_by == "complete" else None
    how = exit_description(child, spec.limits.memory) if ended_by == "exited" else ""
    return compose(spec, payload_out, ended_by, wall, how, _tail(os.path.join(child.ctldir, "stderr")))


def exit_description(child: Child, memory_limit: int) -> str:
    """How an exited (not yet reaped) job process ended, in words."""
    info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    if child.slot is not None and child.slot.cgroup.oom_killed():
        return (
            f"the job ran out of memory: memory limit exceeded (the job may use at most {memory_limit} "
            "bytes of memory, jobless.max_memory)"
        )
    if info is not None and info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        sig = info.si_status
        what = f"the job process was killed by signal {sig} ({signal.Signals(sig).name})"
        if sig == signal.SIGKILL and memory_limit:
            what += "; it may have run out of memory"
        return what
    code = info.si_status if info is not None else "?"
    return f"the job process exited with status {code} without an outcome"


def compose(spec: JobSpec, payload: bytes | None, ended_by: str, wall: float, how: str,
            stderr: str) -> JobOutcome:
    """The JobOutcome of a run: *payload* is the job's own outcome when it sent one whole;
    *ended_by* is "complete", "exited", "timeout", "cancel" or "overflow"; *how* says how
    an exited process ended."""
    if ended_by == "cancel":
        return JobOutcome.failure(S.KILLED, "Transformation was canceled", {"wall_time_seconds": wall})
    if ended_by == "timeout":
        limit = spec.limits.wall_time
        error = f"wall time limit exceeded: the job ran for more than {limit:g} s (jobless.max_wall_time)"
        return JobOutcome.failure(S.TIMEOUT, error, {"wall_time_seconds": wall})
    if ended_by == "overflow":
        error = f"output limit exceeded: over {spec.limits.output} bytes of results"
        return JobOutcome.failure(S.OUTPUT, error, {"wall_time_seconds": wall})
    if payload is not None:
        try:
            outcome = JobOutcome.from_bytes(payload)
        except (ValueError, KeyError, TypeError) as exc:
            return JobOutcome.failure(S.INTERNAL, f"the job process sent a malformed outcome: {exc}")
        stats = {**outcome.stats, "wall_time_seconds": wall}  # the job's own figures cannot hide it
        outcome = JobOutcome(outcome.ok, outcome.result, outcome.buffers, outcome.error, outcome.kind, stats)
        return _classify(outcome, spec, stderr)
    error = (how or "the job process ended without an outcome") + (f"\n{stderr}" if stderr else "")
    return _classify(JobOutcome.failure(S.ERROR, error, {"wall_time_seconds": wall}), spec, stderr)


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


def frame_complete(data: bytearray) -> bool:
    """True when *data* holds a whole ``uint64 length`` + payload frame."""
    return _complete(data)


def _complete(data: bytearray) -> bool:
    return len(data) >= _FRAME.size and len(data) >= _FRAME.size + _FRAME.unpack_from(data)[0]


def _wait(
    child: Child,
    spec: JobSpec,
    started: float,
    control_fd: int | None,
    should_cancel: Callable[[], bool] | None,
) -> tuple[bytearray, str]:
    """Collect the outcome until it is complete, the child ends, or the job must die.

    Returns (data, ended_by): "complete", "exited", "timeout", "cancel" or "overflow"."""
    poller = select.poll()
    poller.register(child.pidfd, select.POLLIN)
    poller.register(child.out_fd, select.POLLIN)
    if control_fd is not None:
        poller.register(control_fd, select.POLLIN)
    data = bytearray()
    cap = 4 * spec.limits.output + (1 << 20) if spec.limits.output else None
    while True:
        remaining = spec.limits.wall_time - (time.monotonic() - started)
        if remaining <= 0:
            kill_group(child.pid)
            return data, "timeout"
        for fd, _event in poller.poll(max(0, int(remaining * 1000) + 1)):
            if fd == child.out_fd:
                chunk = os.read(child.out_fd, 1 << 20)
                if not chunk:
                    poller.unregister(child.out_fd)
                    continue
                data += chunk
                if _complete(data):
                    return data, "complete"
                if cap is not None and len(data) > cap:
                    kill_group(child.pid)
                    return data, "overflow"
            elif fd == child.pidfd:
                data += _drain(child.out_fd)  # a forked grandchild may hold the pipe open
                return data, "complete" if _complete(data) else "exited"
            elif fd == control_fd and should_cancel is not None and should_cancel():
                kill_group(child.pid)
                return data, "cancel"

"""The job process: what runs in the forked child, in its own session.

``child_main`` never returns. It applies the limits (RLIMIT_AS for memory, RLIMIT_FSIZE
for every file written, so stdout/stderr and RESULT are capped too), points stdin at
/dev/null and stdout/stderr at files in the control directory, runs the executor in the
working directory, serializes the result per the output celltype (deep results: every
member too) and writes a framed JobOutcome to the pipe ``out_fd`` (pipes are not
subject to RLIMIT_FSIZE), with the CPU time and peak memory it measured itself. Exit
status 0 means the whole outcome was written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import resource
import signal
import struct
import sys
import traceback
from typing import TYPE_CHECKING, Any

from ....celltypes import CelltypeError, serialize
from .. import spec as S
from ..spec import JobOutcome, JobSpec
from .bash import BashFailure, run_bash
from .python import PythonFailure, run_python

if TYPE_CHECKING:
    from ..sandbox.setup import Sandbox, Slot

DEEP = ("deepcell", "deepfolder", "folder")


class OutputTooLarge(Exception):
    pass


def _store(buffers: dict[str, bytes], data: bytes, limit: int) -> str:
    if limit and len(data) > limit:
        raise OutputTooLarge(f"result buffer of {len(data)} bytes is over the output limit of {limit} bytes")
    checksum = hashlib.sha256(data).hexdigest()
    buffers[checksum] = data
    return checksum


def _pack_deep(value: Any, celltype: str, buffers: dict[str, bytes], limit: int) -> Any:
    """Replace each leaf of a deep result by the checksum of its buffer (as Seamless)."""
    if isinstance(value, dict):
        return {k: _pack_deep(v, celltype, buffers, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_pack_deep(v, celltype, buffers, limit) for v in value]
    if isinstance(value, str) and len(value) == 64:
        return value
    if celltype == "deepcell":
        return _store(buffers, serialize(value, "mixed"), limit)
    if not isinstance(value, bytes):
        raise CelltypeError(f"a {celltype} member must be bytes, got {type(value).__name__}")
    return _store(buffers, value, limit)


def result_outcome(value: Any, output_celltype: str, limit: int) -> JobOutcome:
    buffers: dict[str, bytes] = {}
    if output_celltype in DEEP:
        value = _pack_deep(value, output_celltype, buffers, limit)
    result = _store(buffers, serialize(value, output_celltype), limit)
    return JobOutcome(ok=True, result=result, buffers=buffers)


def _limit(which: int, value: int) -> None:
    if value > 0:
        resource.setrlimit(which, (value, value))


def _memory_text(limit: int) -> str:
    return f"memory limit exceeded: the job may use at most {limit} bytes of memory (jobless.max_memory)"


_OUTPUT_TEXT = "output limit exceeded: the job may write at most {} bytes (jobless.max_output)"


def run_sandboxed(spec: JobSpec, workdir: str, ctldir: str, sandbox: "Sandbox") -> JobOutcome:
    """``run_in_child``, naming the job's limit when a failure came from one."""
    outcome = run_in_child(spec, workdir, ctldir)
    if outcome.ok or outcome.kind != S.ERROR:
        return outcome
    hit = sandbox.limit_hit()
    if hit == "memory":
        return JobOutcome.failure(S.MEMORY, f"{_memory_text(spec.limits.memory)}\n\n{outcome.error}")
    if hit == "output":
        return JobOutcome.failure(S.OUTPUT, f"{_OUTPUT_TEXT.format(spec.limits.output)}\n\n{outcome.error}")
    return outcome


def run_in_child(spec: JobSpec, workdir: str, ctldir: str) -> JobOutcome:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_NODE")}
    try:
        if spec.language == "bash":
            value = run_bash(spec, workdir, ctldir, environ)
        elif spec.language == "python":
            value = run_python(spec)
        else:
            return JobOutcome.failure(S.ERROR, f"unsupported transformation language {spec.language!r}")
        return result_outcome(value, spec.output_celltype, spec.limits.output)
    except (BashFailure, PythonFailure, CelltypeError) as exc:
        return JobOutcome.failure(S.ERROR, str(exc))
    except MemoryError:
        return JobOutcome.failure(S.MEMORY, _memory_text(spec.limits.memory))
    except OutputTooLarge as exc:
        return JobOutcome.failure(S.OUTPUT, f"output limit exceeded: {exc}")
    except OSError as exc:
        if exc.errno == 27:  # EFBIG: RLIMIT_FSIZE
            return JobOutcome.failure(
                S.OUTPUT, f"output limit exceeded: a file grew over {spec.limits.output} bytes"
            )
        return JobOutcome.failure(S.ERROR, f"{type(exc).__name__}: {exc}")
    except Exception:
        return JobOutcome.failure(S.ERROR, traceback.format_exc())


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts, got = [], 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _stats() -> dict[str, float]:
    """CPU time and peak memory of this process and the children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_user_seconds": round(own.ru_utime + kids.ru_utime, 6),
        "cpu_system_seconds": round(own.ru_stime + kids.ru_stime, 6),
        "memory_peak_bytes": max(own.ru_maxrss, kids.ru_maxrss) * 1024,
    }


def _input_bytes(spec: JobSpec) -> int:
    return sum(len(p.data) + sum(len(m) for m in (p.members or {}).values()) for p in spec.pins)


def _sandbox_init(spec_fd: int, out_fd: int) -> None:
    """In the sandbox, the job runs as the init of a PID namespace of its own; this
    process (forked by the supervisor) stays outside as its shim: it waits for it and
    ends the same way, so the supervisor sees the job's end as before. Returns in the
    job's process only."""
    from ..sandbox import linux

    linux.unshare(linux.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        if _PRCTL is not None:
            _PRCTL(1, signal.SIGKILL, 0, 0, 0)  # die with the shim
        return
    os.close(spec_fd)
    os.close(out_fd)
    _set_name(b"seamless-shim")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _pid, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def child_main(spec_fd: int, out_fd: int, workdir: str, ctldir: str, *,
               sandbox: "Sandbox | None" = None, slot: "Slot | None" = None) -> None:
    """Entry point of the forked job process; never returns.

    Forked ahead of its job: it settles into its own session and directories first
    (with a *sandbox*: its cgroup, its PID namespace, its root; node.roles.jobless.sandbox),
    then waits for a framed JobSpec on *spec_fd* (end of input: exit quietly) and
    answers with a framed JobOutcome on *out_fd* (``uint64 length`` + bytes)."""
    status = 1
    try:
        _set_name(b"seamless-ready")  # what ps shows while the process waits for a job
        # nothing of the supervisor's reaches the job: its socket to the node above all
        _close_all_but({0, 1, 2, spec_fd, out_fd} | ({sandbox.host_net} if sandbox is not None else set()))
        os.setsid()
        if _PRCTL is not None:
            _PRCTL(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the supervisor
        if sandbox is not None and slot is not None:
            slot.cgroup.add(os.getpid())  # before anything is forked: the whole tree is in it
            _sandbox_init(spec_fd, out_fd)
            sandbox.enter(slot)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the cap fails with EFBIG
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(os.path.join(ctldir, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(target, fd)
            os.close(target)
        os.chdir(workdir)
        head = _read_exactly(spec_fd, _FRAME.size)
        if head is None:
            status = 0
            return
        data = _read_exactly(spec_fd, _FRAME.unpack(head)[0])
        os.close(spec_fd)
        if data is None:
            return
        spec = JobSpec.from_bytes(data)
        _set_name(b"seamless-job")
        if sandbox is not None:  # the cgroup and the tmpfs limit the whole job
            sandbox.restrict(_input_bytes(spec), spec.network)
        else:
            _limit(resource.RLIMIT_AS, spec.limits.memory)
            _limit(resource.RLIMIT_FSIZE, spec.limits.output + 65536 if spec.limits.output else 0)
        if sandbox is not None:
            outcome = run_sandboxed(spec, workdir, ctldir, sandbox)
        else:
            outcome = run_in_child(spec, workdir, ctldir)
        outcome = dataclasses.replace(outcome, stats=_stats())
        payload = outcome.to_bytes()
        view = memoryview(_FRAME.pack(len(payload)) + payload)
        while view:
            view = view[os.write(out_fd, view[: 1 << 20]) :]
        os.close(out_fd)
        status = 0
    except BaseException:  # noqa: B036 - nothing may escape a forked child
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: B036
            pass
    finally:
        os._exit(status)


def _close_all_but(keep: set[int]) -> None:
    """Close every file descriptor this process inherited except *keep*."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the descriptor of the listing itself, closed already


def _load_prctl() -> Any:
    """libc's prctl, loaded once in the supervisor so that forked children need not."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _set_name(name: bytes) -> None:
    """The process name (``comm``) that ps and top show (prctl PR_SET_NAME)."""
    if _PRCTL is not None:
        _PRCTL(15, name, 0, 0, 0)
_FRAME = struct.Struct("<Q")

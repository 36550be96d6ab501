"""The job process: what runs in the forked child, in its own session.

``child_main`` never returns. It applies the limits (RLIMIT_AS for memory, RLIMIT_FSIZE
for every file written, so stdout/stderr and RESULT are capped too), points stdin at
/dev/null and stdout/stderr at files in the control directory, runs the executor in the
working directory, serializes the result per the output celltype (deep results: every
member too) and writes a packed JobOutcome to the pipe ``out_fd`` (pipes are not
subject to RLIMIT_FSIZE). Exit status 0 means the whole outcome was written.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import sys
import traceback
from typing import Any

from ....celltypes import CelltypeError, serialize
from .. import spec as S
from ..spec import JobOutcome, JobSpec
from .bash import BashFailure, run_bash
from .python import PythonFailure, run_python

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


def child_main(spec: JobSpec, workdir: str, ctldir: str, out_fd: int) -> None:
    """Entry point of the forked job process; never returns."""
    status = 1
    try:
        os.setsid()
        _set_parent_death_signal()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the cap fails with EFBIG
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(os.path.join(ctldir, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(target, fd)
        os.chdir(workdir)
        _limit(resource.RLIMIT_AS, spec.limits.memory)
        _limit(resource.RLIMIT_FSIZE, spec.limits.output + 65536 if spec.limits.output else 0)
        outcome = run_in_child(spec, workdir, ctldir)
        view = memoryview(outcome.to_bytes())
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


def _set_parent_death_signal() -> None:
    """SIGKILL this process if its supervisor dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

"""Run one job from a file: ``python -m node.roles.jobless.runner SPEC OUTCOME [JOB_ROOT]``.

What Dask tasks and Slurm batch scripts execute: read a packed JobSpec from SPEC, run it
under ``supervise`` (the same executors, limits and sandbox as the local pool: the spec
says how to sandbox it) and write the
packed JobOutcome to OUTCOME (atomically: a complete file or none). SIGTERM or SIGINT
(``scancel``, a Dask cancellation) kills the job's process group, still writes a
"cancelled" outcome, and exits; job directories go under JOB_ROOT (default: next to
SPEC). Exit status 0 when OUTCOME was written.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .spec import JobOutcome, JobSpec


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    spec_path, outcome_path = argv[1], argv[2]
    job_root = argv[3] if len(argv) == 4 else os.path.dirname(os.path.abspath(spec_path))

    from .executors import become_subreaper
    from .spec import JobOutcome, JobSpec

    become_subreaper()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    stop = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def should_cancel() -> bool:
        os.read(wake_read, 64)
        return bool(stop)

    with open(spec_path, "rb") as source:
        data = source.read()
    try:
        spec = JobSpec.from_bytes(data)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        outcome = JobOutcome.failure("internal", f"malformed job spec {spec_path}: {exc}")
    else:
        outcome = _run(spec, job_root, wake_read, should_cancel)
    tmp = outcome_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(outcome.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, outcome_path)
    return 0


def _run(spec: "JobSpec", job_root: str, wake_read: int, should_cancel: "Callable[[], bool]") -> "JobOutcome":
    """Run the job, in the sandbox its spec asks for."""
    from .executors import supervise
    from .sandbox.plan import SandboxSettings
    from .sandbox.setup import Sandbox, SandboxUnavailable, refusal_line
    from .spec import JobOutcome

    sandbox = None
    if spec.sandbox is not None:
        sandbox = Sandbox(SandboxSettings.from_dict(spec.sandbox), os.path.join(job_root, ".sandbox"))
        try:
            sandbox.open()
        except SandboxUnavailable as exc:
            return JobOutcome.failure("internal", refusal_line(str(exc)))
    try:
        return supervise(spec, job_root, control_fd=wake_read, should_cancel=should_cancel, sandbox=sandbox)
    finally:
        if sandbox is not None:
            sandbox.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))

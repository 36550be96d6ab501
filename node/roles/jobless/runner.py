"""Run one job from a file: ``python -m node.roles.jobless.runner SPEC OUTCOME [JOB_ROOT]``.

What Dask tasks and Slurm batch scripts execute: read a packed JobSpec from SPEC, run it
under ``supervise`` (the same executors and limits as the local pool) and write the
packed JobOutcome to OUTCOME (atomically: a complete file or none). SIGTERM or SIGINT
(``scancel``, a Dask cancellation) kills the job's process group, still writes a
"cancelled" outcome, and exits; job directories go under JOB_ROOT (default: next to
SPEC). Exit status 0 when OUTCOME was written.
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    spec_path, outcome_path = argv[1], argv[2]
    job_root = argv[3] if len(argv) == 4 else os.path.dirname(os.path.abspath(spec_path))

    from .executors import become_subreaper, supervise
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
        outcome = supervise(spec, job_root, control_fd=wake_read, should_cancel=should_cancel)
    tmp = outcome_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(outcome.to_bytes())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, outcome_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

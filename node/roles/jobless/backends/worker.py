"""A local pool worker: ``python -m node.roles.jobless.backends.worker JOB_ROOT``.

A long-lived, single-threaded process that has already imported everything a job needs
(numpy, the celltypes, the executors), so that each job starts with a fork of a warm
interpreter (about a millisecond) instead of a new one. It runs one job at a time and
talks to the node over its stdin/stdout in frames (``uint32 length`` + ``spec.pack``):

====================  =================================================================
node -> worker        ``{"op": "run"}`` + JobSpec bytes; ``{"op": "cancel"}``
worker -> node        ``{"op": "ready"}`` once; ``{"op": "started", "pid": P}`` per job
                      (P is the job's process group); ``{"op": "outcome"}`` + JobOutcome
====================  =================================================================

The worker is a child subreaper, so a job process that escapes its process group is
re-parented here and killed when the job ends. End of stdin (the node went away) kills
the running job and ends the worker.
"""

from __future__ import annotations

import os
import signal
import struct
import sys

_LEN = struct.Struct("<I")


def read_frame(fd: int) -> bytes | None:
    """One whole frame from *fd* (blocking); None at end of input."""
    head = _read_exactly(fd, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts, got = [], 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def write_frame(fd: int, payload: bytes) -> None:
    view = memoryview(_LEN.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def main(argv: list[str]) -> int:
    job_root = argv[1]
    # warm up: what every job needs is imported once, before any fork
    import numpy  # noqa: F401

    from ..executors import bash, become_subreaper, child, python, supervise  # noqa: F401
    from ..executors.supervisor import kill_group, reap_leftovers
    from ..spec import JobOutcome, JobSpec, pack, unpack

    become_subreaper()
    current: list[int] = []

    def terminate(signum: int, frame: object) -> None:
        for pid in current:
            kill_group(pid)
        reap_leftovers()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops us

    def started(pid: int) -> None:
        current[:] = [pid]
        write_frame(stdout, pack({"op": "started", "pid": pid}))

    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # nothing but frames may reach the node's pipe
    write_frame(stdout, pack({"op": "ready", "pid": os.getpid()}))
    closing = False

    def should_cancel() -> bool:
        nonlocal closing
        frame = read_frame(stdin)
        if frame is None:
            closing = True
            return True
        header, _ = unpack(frame)
        return bool(header.get("op") == "cancel")

    while not closing:
        frame = read_frame(stdin)
        if frame is None:
            break
        header, blobs = unpack(frame)
        if header.get("op") != "run":
            continue  # a cancel that arrived after its job ended
        try:
            spec = JobSpec.from_bytes(blobs[0])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            outcome = JobOutcome.failure("internal", f"malformed job spec: {exc}")
        else:
            outcome = supervise(
                spec,
                job_root,
                on_started=started,
                control_fd=stdin,
                should_cancel=should_cancel,
            )
        current.clear()
        write_frame(stdout, pack({"op": "outcome"}, [outcome.to_bytes()]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

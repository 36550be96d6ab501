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

Each job's process is forked ahead (``supervisor.prepare``) and the previous job is
cleaned up after its outcome is sent, so neither costs a job's round trip. The worker is
a child subreaper, so a job process that escapes its process group is re-parented here
and killed when the job ends. End of stdin (the node went away) kills the running job
and ends the worker.
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

    from ..executors import bash, become_subreaper, child, python  # noqa: F401
    from ..executors.supervisor import Child, ChildLost, finish, kill_group, prepare, reap_leftovers, run
    from ..spec import JobOutcome, JobSpec, pack, unpack

    become_subreaper()
    children: dict[str, Child] = {}  # "ready": forked ahead, "job": running the current job

    def terminate(signum: int, frame: object) -> None:
        for child_ in children.values():
            kill_group(child_.pid)
        reap_leftovers()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops us
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # nothing but frames may reach the node's pipe

    def started(pid: int) -> None:
        write_frame(stdout, pack({"op": "started", "pid": pid}))

    children["ready"] = prepare(job_root)
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
            write_frame(stdout, pack({"op": "outcome"}, [outcome.to_bytes()]))
            continue
        for _attempt in range(2):
            ready = children.pop("ready") if "ready" in children else None
            job = children["job"] = ready or prepare(job_root)
            try:
                outcome = run(job, spec, on_started=started, control_fd=stdin,
                              should_cancel=should_cancel, payload=blobs[0])
                break
            except ChildLost as exc:  # killed from outside while it waited: use a new one
                finish(children.pop("job"))
                outcome = JobOutcome.failure("internal", str(exc))
        write_frame(stdout, pack({"op": "outcome"}, [outcome.to_bytes()]))
        # after answering: clean up and fork the next job's process, off the round trip
        if "job" in children:
            finish(children.pop("job"))
        if not closing:
            children["ready"] = prepare(job_root)
    for child_ in list(children.values()):
        finish(child_)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

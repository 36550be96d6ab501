"""A local pool worker: ``python -m node.roles.jobless.backends.worker JOB_ROOT SOCKET_FD [SANDBOX]``.

A long-lived, single-threaded process that has already imported everything a job needs
(numpy, the celltypes, the executors). It keeps the next job's process forked ahead
(``supervisor.prepare``: own session, job directory, waiting for its spec) and *hands
that process's two pipes to the node*: the node writes the spec straight into the job
process and reads the outcome straight from it, so a job's round trip crosses no
process but the job's own. The worker watches: the wall-time limit, cancellation, the
process's end, and the cleanup afterwards.

With SANDBOX (SandboxSettings as JSON), the worker sets the job sandbox up first
(node.roles.jobless.sandbox), once, and runs every job in it; when it cannot, it says why
(``{"op": "unavailable", "error": ...}``) and ends.

Control messages go over a Unix SOCK_SEQPACKET socket (one JSON object per message; file
descriptors as SCM_RIGHTS):

====================  =================================================================
worker -> node        ``{"op": "ready", "pid": P}`` + [spec pipe (write end), outcome
                      pipe (read end)] of the process forked ahead (P leads the job's
                      process group); ``{"op": "exited", "ended_by": "exited" | "timeout"
                      | "cancel", "how": ..., "stderr": ...}`` when the job's process
                      has ended (killed, on timeout or cancel)
node -> worker        ``{"op": "run", "wall_time": S, "memory": M}`` as the node writes
                      the spec;
                      ``{"op": "cancel"}``
====================  =================================================================

After "exited" the worker cleans up (the rest of the job's process group, processes that
escaped it (the worker is a child subreaper), the job directory), forks the next job's
process and offers it with "ready". End of input (the node went away) kills the running
job and ends the worker; SIGTERM does the same at once.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any


def main(argv: list[str]) -> int:
    job_root, sock = argv[1], socket.socket(fileno=int(argv[2]))
    settings = argv[3] if len(argv) > 3 else ""
    # warm up: what every job needs is imported once, before any fork
    import numpy  # noqa: F401

    from ..executors import bash, become_subreaper, child, python  # noqa: F401
    from ..executors import supervisor as sup
    from ..executors.supervisor import Child

    sandbox = None
    if settings:
        from ..sandbox.plan import SandboxSettings
        from ..sandbox.setup import Sandbox, SandboxUnavailable

        sandbox = Sandbox(SandboxSettings.from_json(settings), os.path.join(job_root, ".sandbox"))
        try:
            sandbox.open()
        except SandboxUnavailable as exc:
            sock.send(json.dumps({"op": "unavailable", "error": str(exc)}).encode())
            return 3
    become_subreaper()
    children: dict[str, Child] = {}  # "ready": forked ahead, "job": running the current job

    def terminate(signum: int, frame: object) -> None:
        for child_ in children.values():
            sup.kill_group(child_.pid)
        sup.reap_leftovers()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops us

    def send(message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        if fds:
            socket.send_fds(sock, [data], fds)
        else:
            sock.send(data)

    def receive() -> dict[str, Any] | None:
        try:
            data = sock.recv(65536)
        except OSError:
            return None
        return json.loads(data) if data else None

    def offer() -> None:
        ready = children["ready"] = sup.prepare(job_root, sandbox)
        send({"op": "ready", "pid": ready.pid}, [ready.spec_fd, ready.out_fd])
        os.close(ready.spec_fd)  # the node holds the pipes now
        os.close(ready.out_fd)
        ready.spec_fd = ready.out_fd = -1

    def watch(job: Child, wall_time: float) -> tuple[str, bool]:
        """Until the job's process ends: (how it was ended, whether the node went away)."""
        poller = select.poll()
        poller.register(job.pidfd, select.POLLIN)
        poller.register(sock, select.POLLIN)
        deadline = time.monotonic() + wall_time
        ended_by, gone = "exited", False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and ended_by == "exited":
                ended_by = "timeout"
                sup.kill_group(job.pid)
            timeout = None if ended_by != "exited" else max(0, int(remaining * 1000) + 1)
            for fd, _event in poller.poll(timeout):
                if fd == job.pidfd:
                    return ended_by, gone
                message = receive()
                if message is None:
                    gone = True
                    poller.unregister(sock)
                if (message is None or message.get("op") == "cancel") and ended_by == "exited":
                    ended_by = "cancel"
                    sup.kill_group(job.pid)

    offer()
    while True:
        message = receive()
        if message is None:
            break
        if message.get("op") != "run" or "ready" not in children:
            continue  # a cancel that arrived after its job ended
        job = children["job"] = children.pop("ready")
        ended_by, gone = watch(job, float(message.get("wall_time", 86400)))
        how = sup.exit_description(job, int(message.get("memory", 0))) if ended_by == "exited" else ""
        stderr = sup._tail(os.path.join(job.ctldir, "stderr"))
        if not gone:
            send({"op": "exited", "ended_by": ended_by, "how": how, "stderr": stderr})
        if gone:  # the node went away: nothing of ours may outlive it, fast
            sup.kill_group(job.pid)
        sup.finish(children.pop("job"))
        if gone:
            break
        try:
            offer()
        except OSError:  # the node went away meanwhile
            break
    for child_ in list(children.values()):
        sup.kill_group(child_.pid)  # a process forked ahead that no job will come to
        sup.finish(child_)
    if sandbox is not None:
        sandbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

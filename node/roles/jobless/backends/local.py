"""The local backend: a pool of worker processes on this machine (the default).

``size`` workers (default: the number of cores) are started when the first job comes (a
node that runs no job pays nothing), all at once, in the background; each runs one job
at a time (see ``worker.py``). A job takes an idle worker, or waits for one in
submission order. The node writes the job's spec straight into the job process the
worker forked ahead, and reads its outcome straight from it; the worker enforces the
wall time and reports how the process ended. Cancelling a job asks its worker to kill
the job's process group; the worker reports, cleans up and offers its next process. A
worker that does not answer within a few seconds, or dies, is killed together with its
job's process group and replaced.
"""

from __future__ import annotations

import array
import json
import logging
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Callable

import trio

from ..executors.supervisor import compose, frame_complete
from ..sandbox.setup import refusal_line
from ..spec import JobOutcome, JobSpec
from .base import Backend, BackendError

log = logging.getLogger("seamless_node.jobless")
_FRAME = struct.Struct("<Q")

#: seconds a worker gets to report a cancelled job's end before it is killed
CANCEL_GRACE = 3.0
#: after its process ended, how long the rest of an outcome may take to be read
DRAIN_GRACE = 1.0


#: the environment a sandboxing worker gets from the node (a job can read its worker's
#: initial environment in /proc/self/environ: the node's secrets must not be there)
WORKER_ENVIRONMENT = frozenset({
    "PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ",
    "TMPDIR",
})


class WorkerGone(Exception):
    pass


class SandboxRefused(BackendError):
    """The workers cannot sandbox jobs here: no job runs (the text says why)."""



def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
    return fds


class Worker:
    """The node's side of one worker process."""

    def __init__(self, process: trio.Process, sock: trio.socket.SocketType) -> None:
        self.process = process
        self.sock = sock
        self.ready: tuple[int, int, int] | None = None  # (pid, spec fd, outcome fd)
        self.ready_event = trio.Event()
        self.exits_send, self.exits_receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.job_pid: int | None = None
        #: the worker's report on the current job's process ("exited"), once it came
        self.exit_report: dict[str, Any] | None = None
        self.gone = False
        #: why the worker could not set the job sandbox up, if it could not
        self.unavailable: str | None = None

    @classmethod
    async def spawn(cls, job_root: str, nursery: trio.Nursery, sandbox: str = "") -> "Worker":
        """Start a worker; *sandbox*: its SandboxSettings as JSON ("": jobs run unsandboxed)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_NODE")}
        if sandbox:  # a job could read its worker's environment in /proc: only what it needs
            env = {k: v for k, v in env.items() if k in WORKER_ENVIRONMENT}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "node.roles.jobless.backends.worker", job_root, str(theirs.fileno())]
        try:
            process = await trio.lowlevel.open_process(
                argv + ([sandbox] if sandbox else []),
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            theirs.close()
        worker = cls(process, trio.socket.from_stdlib_socket(ours))
        nursery.start_soon(worker._read_loop)
        try:
            with trio.fail_after(60):
                await worker.ready_event.wait()
        except BaseException:
            worker.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()
            raise
        if worker.unavailable is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()
            raise SandboxRefused(worker.unavailable)
        if worker.gone:
            raise BackendError("a jobless worker process ended while starting")
        return worker

    async def _read_loop(self) -> None:
        try:
            while True:
                data, ancillary, _flags, _addr = await self.sock.recvmsg(65536, socket.CMSG_SPACE(2 * 4))
                fds = _fds(ancillary)
                if not data:
                    break
                message = json.loads(data)
                if message.get("op") == "ready" and len(fds) == 2:
                    for fd in fds:
                        os.set_inheritable(fd, False)
                    self.ready = (int(message["pid"]), fds[0], fds[1])
                    self.ready_event.set()
                else:
                    for fd in fds:
                        os.close(fd)
                    if message.get("op") == "exited":
                        self.exits_send.send_nowait(message)
                    elif message.get("op") == "unavailable":
                        self.unavailable = str(message.get("error", "the job sandbox cannot be set up"))
        except (OSError, trio.ClosedResourceError, ValueError):
            pass
        finally:
            self.gone = True
            self.ready_event.set()
            self.exits_send.close()

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.sock.send(json.dumps(message).encode())
        except (OSError, trio.ClosedResourceError) as exc:
            raise WorkerGone(str(exc)) from None

    async def run(self, spec: JobSpec, started: Callable[[], None]) -> JobOutcome:
        await self.ready_event.wait()
        if self.gone or self.ready is None:
            raise WorkerGone("the worker process ended")
        while True:  # an "exited" left from a job that answered before its process ended
            try:
                self.exits_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        pid, spec_fd, out_fd = self.ready
        self.ready, self.ready_event, self.job_pid, self.exit_report = None, trio.Event(), pid, None
        spec_stream, out_stream = trio.lowlevel.FdStream(spec_fd), trio.lowlevel.FdStream(out_fd)
        begun = time.monotonic()
        finished = False
        try:
            with trio.CancelScope(shield=True):  # the process taken is the worker's to watch
                limits = spec.limits
                await self.send({"op": "run", "wall_time": limits.wall_time, "memory": limits.memory})
            started()  # the process was forked ahead: it runs as soon as its spec arrives
            payload, exited, overflow = await self._exchange(spec, spec_stream, out_stream)
            finished = True
        finally:
            with trio.CancelScope(shield=True):
                if not finished:  # cancelled (a Cancelled may come wrapped in a group) or broken
                    await self._cancel()
                await spec_stream.aclose()
                await out_stream.aclose()
        if payload is not None:
            ended_by = "complete"
        elif overflow:
            ended_by = "overflow"
        elif exited is not None:
            ended_by = exited.get("ended_by", "exited")
        else:
            raise WorkerGone("the worker process ended during the job")
        how = (exited or {}).get("how", "")
        stderr = (exited or {}).get("stderr", "")
        return compose(spec, payload, ended_by, round(time.monotonic() - begun, 6), how, stderr)

    async def _exchange(
        self, spec: JobSpec, spec_stream: trio.lowlevel.FdStream, out_stream: trio.lowlevel.FdStream
    ) -> tuple[bytes | None, dict[str, Any] | None, bool]:
        """Write the spec, read the outcome; (outcome payload, worker's exit report, overflow)."""
        payload: bytes | None = None
        exited: dict[str, Any] | None = None
        overflow = False
        cap = 4 * spec.limits.output + (1 << 20) if spec.limits.output else None
        read_done = trio.Event()
        async with trio.open_nursery() as nursery:

            async def write_spec() -> None:
                data = spec.to_bytes()
                try:
                    await spec_stream.send_all(_FRAME.pack(len(data)) + data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the process died: its worker reports how
                finally:
                    with trio.CancelScope(shield=True):
                        await spec_stream.aclose()

            async def read_outcome() -> None:
                nonlocal payload, overflow
                buffer = bytearray()
                try:
                    while True:
                        chunk = await out_stream.receive_some(1 << 20)
                        if not chunk:
                            return
                        buffer += chunk
                        if frame_complete(buffer):
                            payload = bytes(buffer[_FRAME.size :])
                            nursery.cancel_scope.cancel()  # answer now; the "exited" comes later
                            return
                        if cap is not None and len(buffer) > cap:
                            overflow = True
                            await self.send({"op": "cancel"})
                            return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                finally:
                    read_done.set()

            async def wait_exit() -> None:
                nonlocal exited
                try:
                    exited = self.exit_report = await self.exits_receive.receive()
                except trio.EndOfChannel:
                    pass
                # whatever the process wrote is in the pipe by now: let the reader finish
                with trio.move_on_after(DRAIN_GRACE):
                    await read_done.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(write_spec)
            nursery.start_soon(read_outcome)
            nursery.start_soon(wait_exit)
        return payload, exited, overflow

    async def _cancel(self) -> None:
        """Kill the running job; the worker reports its end and offers its next process."""
        if self.exit_report is not None:
            return  # its process had ended already
        with trio.move_on_after(CANCEL_GRACE) as scope:
            try:
                await self.send({"op": "cancel"})
                self.exit_report = await self.exits_receive.receive()
                return
            except (WorkerGone, trio.EndOfChannel):
                pass
        if scope.cancelled_caught:
            log.warning("jobless worker %d did not end its job in time: killing it", self.process.pid)
        self.kill()

    def kill(self) -> None:
        if self.job_pid is not None:
            try:
                os.killpg(self.job_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process.returncode is None:
            self.process.kill()

    def close_ready(self) -> None:
        if self.ready is not None:
            for fd in self.ready[1:]:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.ready = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and not self.gone


class LocalBackend(Backend):
    name = "local"

    def __init__(self, size: int, job_root: str, sandbox: str = "") -> None:
        self.size = size
        self.job_root = job_root
        #: SandboxSettings as JSON, handed to every worker ("": no sandbox)
        self.sandbox = sandbox
        self.workers: list[Worker] = []
        self._idle_send, self._idle_receive = trio.open_memory_channel[Worker](size)
        self.busy = 0
        self.waiting = 0
        self._nursery: trio.Nursery | None = None
        self._spawning = False
        self.spawn_error: str | None = None
        self.spawn_failures = 0

    async def start(self, nursery: trio.Nursery) -> None:
        os.makedirs(self.job_root, mode=0o700, exist_ok=True)
        self._nursery = nursery

    def _ensure_workers(self) -> None:
        if self._spawning or self._nursery is None:
            return
        self._spawning = True

        async def one() -> None:
            assert self._nursery is not None
            try:
                worker = await Worker.spawn(self.job_root, self._nursery, self.sandbox)
            except SandboxRefused as exc:
                self.spawn_failures += 1
                if self.spawn_error is None:
                    log.error("jobless: %s", refusal_line(str(exc)))
                self.spawn_error = refusal_line(str(exc))
                return
            except (OSError, BackendError, WorkerGone, trio.TooSlowError) as exc:
                self.spawn_error = f"cannot start a jobless worker process: {exc}"
                self.spawn_failures += 1
                log.error("%s", self.spawn_error)
                return
            self.workers.append(worker)
            self._idle_send.send_nowait(worker)

        for _ in range(self.size):
            self._nursery.start_soon(one)
        log.info("jobless: starting %d local worker processes (jobs in %s)", self.size, self.job_root)

    async def _replace(self, worker: Worker) -> None:
        worker.kill()
        worker.close_ready()
        with trio.CancelScope(shield=True):
            await worker.process.wait()
            if worker in self.workers:
                self.workers.remove(worker)
            assert self._nursery is not None
            try:
                fresh = await Worker.spawn(self.job_root, self._nursery, self.sandbox)
            except (OSError, BackendError, WorkerGone, trio.TooSlowError) as exc:
                self.spawn_error = f"cannot restart a jobless worker process: {exc}"
                self.spawn_failures += 1
                log.error("%s", self.spawn_error)
                return
            self.workers.append(fresh)
            self._idle_send.send_nowait(fresh)

    async def run(self, spec: JobSpec, started: Callable[[], None]) -> JobOutcome:
        self._ensure_workers()
        self.waiting += 1
        try:
            worker = None
            while worker is None:
                if self.spawn_failures >= self.size and not self.workers:
                    return JobOutcome.failure("internal", self.spawn_error or "no worker process")
                with trio.move_on_after(0.5):
                    worker = await self._idle_receive.receive()
        finally:
            self.waiting -= 1
        self.busy += 1
        try:
            outcome = await worker.run(spec, started)
        except WorkerGone as exc:
            await self._replace(worker)
            return JobOutcome.failure("internal", f"the worker process running the job died: {exc}")
        except BaseException:
            if worker.alive:
                self._idle_send.send_nowait(worker)
            else:
                await self._replace(worker)
            raise
        finally:
            self.busy -= 1
        self._idle_send.send_nowait(worker)
        return outcome

    async def aclose(self) -> None:
        """SIGTERM (each worker kills its job's process group and escaped processes),
        then SIGKILL whatever is still there after two seconds."""
        for worker in self.workers:
            worker.close_ready()
            if worker.process.returncode is None:
                worker.process.terminate()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(2):
                for worker in self.workers:
                    await worker.process.wait()
            for worker in self.workers:
                worker.kill()
            with trio.move_on_after(3):
                for worker in self.workers:
                    await worker.process.wait()
            for worker in self.workers:
                worker.sock.close()

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "slots": self.size, "busy": self.busy, "waiting": self.waiting}

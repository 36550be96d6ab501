"""The local backend: a pool of worker processes on this machine (the default).

``size`` workers (default: the number of cores) are started when the first job comes (a
node that runs no job pays nothing), all at once, in the background; each runs one job
at a time (see ``worker.py``). A job takes an idle worker, or waits for one in
submission order. Cancelling a job sends ``cancel`` to its worker, which kills the job's
process group and answers with the outcome; the worker is then idle again. A worker that
does not answer within a few seconds, or dies, is killed together with its job's process
group and replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
from typing import Any, Callable

import trio

from ..spec import JobOutcome, JobSpec, pack, unpack
from .base import Backend, BackendError

log = logging.getLogger("seamless_node.jobless")
_LEN = struct.Struct("<I")

#: seconds a worker gets to report a cancelled job's end before it is killed
CANCEL_GRACE = 3.0


class WorkerGone(Exception):
    pass


class Worker:
    """The node's side of one worker process."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffer = bytearray()
        self.job_pid: int | None = None

    @classmethod
    async def spawn(cls, job_root: str) -> "Worker":
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_NODE")}
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "node.roles.jobless.backends.worker", job_root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        worker = cls(process)
        try:
            with trio.fail_after(60):
                header, _ = await worker.receive()
        except BaseException:
            worker.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await process.wait()
            raise
        if header.get("op") != "ready":
            worker.kill()
            raise BackendError(f"a jobless worker process did not start properly: {header}")
        return worker

    async def send(self, header: dict[str, Any], blobs: list[bytes] = ()) -> None:  # type: ignore[assignment]
        payload = pack(header, blobs)
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(_LEN.pack(len(payload)) + payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise WorkerGone(str(exc)) from None

    async def receive(self) -> tuple[dict[str, Any], list[bytes]]:
        assert self.process.stdout is not None
        while True:
            if len(self.buffer) >= _LEN.size:
                (size,) = _LEN.unpack_from(self.buffer)
                if len(self.buffer) >= _LEN.size + size:
                    frame = bytes(self.buffer[_LEN.size : _LEN.size + size])
                    del self.buffer[: _LEN.size + size]
                    return unpack(frame)
            try:
                chunk = await self.process.stdout.receive_some(1 << 20)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise WorkerGone(str(exc)) from None
            if not chunk:
                raise WorkerGone(f"worker process {self.process.pid} ended")
            self.buffer += chunk

    async def run(self, spec: JobSpec, started: Callable[[], None]) -> JobOutcome:
        await self.send({"op": "run"}, [spec.to_bytes()])
        started()  # the worker hands the job to a process it forked ahead: it runs now
        try:
            while True:
                header, blobs = await self.receive()
                if header.get("op") == "started":
                    self.job_pid = int(header["pid"])
                elif header.get("op") == "outcome":
                    self.job_pid = None
                    return JobOutcome.from_bytes(blobs[0])
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._cancel()
            raise

    async def _cancel(self) -> None:
        """Kill the running job; the worker answers with its outcome and is idle again."""
        with trio.move_on_after(CANCEL_GRACE) as scope:
            await self.send({"op": "cancel"})
            while True:
                header, _ = await self.receive()
                if header.get("op") == "outcome":
                    self.job_pid = None
                    return
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

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class LocalBackend(Backend):
    name = "local"

    def __init__(self, size: int, job_root: str) -> None:
        self.size = size
        self.job_root = job_root
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
            try:
                worker = await Worker.spawn(self.job_root)
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
        with trio.CancelScope(shield=True):
            await worker.process.wait()
            if worker in self.workers:
                self.workers.remove(worker)
            fresh = await Worker.spawn(self.job_root)
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
            if worker.alive:
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

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "slots": self.size, "busy": self.busy, "waiting": self.waiting}

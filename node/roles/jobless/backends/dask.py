"""The Dask backend: each job is a task on an existing Dask distributed cluster.

The node connects to the scheduler at ``jobless.dask_scheduler`` with a synchronous
``distributed.Client`` (its event loop runs in a thread of its own; the node calls it
through worker threads). A job is submitted as ``dask_task.run_job`` with a unique key;
the task runs the job in a runner process on whichever worker the scheduler picks, under
the same executors and limits as the local pool. The job counts as running from its
submission. Cancelling cancels the future *and* asks every worker to kill the job's
runner (``dask_task.kill_job``): a running Dask task cannot be interrupted otherwise.

Dask is an optional dependency (``pip install seamless-node[dask]``); the workers need
seamless-node installed too.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable

import trio

from ..sandbox.plan import SandboxSettings
from ..spec import JobOutcome, JobSpec
from . import dask_task
from .base import Backend, BackendError, with_sandbox

log = logging.getLogger("seamless_node.jobless")


class DaskBackend(Backend):
    name = "dask"

    def __init__(self, scheduler: str, job_root: str | None = None, *,
                 sandbox: SandboxSettings | None = None) -> None:
        self.scheduler = scheduler
        self.job_root = job_root
        #: how the runner on the worker sandboxes each job (None: not at all)
        self.sandbox = sandbox
        self.client: Any = None
        self.running = 0
        #: threads waiting on futures; one per running job
        self.limiter = trio.CapacityLimiter(1000)

    async def start(self, nursery: trio.Nursery) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise BackendError(
                "jobless.backend is dask but Dask is not installed: pip install 'seamless-node[dask]'"
            ) from None

        def connect() -> Any:
            return Client(self.scheduler, timeout="10s", set_as_default=False)

        try:
            self.client = await trio.to_thread.run_sync(connect)
        except OSError as exc:
            raise BackendError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None
        log.info("jobless: connected to the Dask scheduler at %s", self.scheduler)

    async def run(self, spec: JobSpec, started: Callable[[], None]) -> JobOutcome:
        if self.client is None:
            return JobOutcome.failure("internal", "the Dask backend is not connected")
        key = f"seamless-job-{spec.checksum[:16]}-{uuid.uuid4().hex[:12]}"
        payload = with_sandbox(spec, self.sandbox).to_bytes()

        def submit() -> Any:
            return self.client.submit(dask_task.run_job, payload, key, self.job_root, key=key, pure=False)

        future = await trio.to_thread.run_sync(submit)
        started()
        self.running += 1
        try:
            data = await trio.to_thread.run_sync(future.result, abandon_on_cancel=True, limiter=self.limiter)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._cancel(future, key)
            raise
        except Exception as exc:  # the task failed in Dask itself (worker lost...)
            return JobOutcome.failure("internal", f"the Dask task failed: {type(exc).__name__}: {exc}")
        finally:
            self.running -= 1
        return JobOutcome.from_bytes(data)

    async def _cancel(self, future: Any, key: str) -> None:
        def cancel() -> None:
            try:
                future.cancel()
            finally:
                self.client.run(dask_task.kill_job, key)

        with trio.move_on_after(10):
            try:
                await trio.to_thread.run_sync(cancel)
            except Exception as exc:
                log.warning("could not cancel Dask job %s: %s", key, exc)

    async def aclose(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await trio.to_thread.run_sync(client.close)

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "scheduler": self.scheduler, "busy": self.running}

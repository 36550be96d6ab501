"""The backend interface: where a job's process runs.

A backend takes a JobSpec and returns its JobOutcome. Cancelling the call (trio
cancellation) must kill the job's processes before the call ends (or, at worst, make
sure they die within a second or two), and must never let a late result through: the
service decides what happens to an outcome, and a cancelled call has none.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import trio

from ..sandbox.plan import SandboxSettings
from ..spec import JobOutcome, JobSpec


def with_sandbox(spec: JobSpec, settings: SandboxSettings | None) -> JobSpec:
    """The spec a runner on another machine gets: it says how to sandbox the job."""
    return dataclasses.replace(spec, sandbox=settings.to_dict() if settings is not None else None)


class BackendError(Exception):
    """The backend cannot run jobs (not reachable, misconfigured); the text says why."""


class Backend(abc.ABC):
    name: str = "?"

    async def start(self, nursery: trio.Nursery) -> None:  # noqa: B027 - optional hook
        """Start whatever the backend needs (worker processes, a cluster connection)."""

    @abc.abstractmethod
    async def run(self, spec: JobSpec, started: Callable[[], None]) -> JobOutcome:
        """Run *spec*; call *started* when the job's process is running."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Stop: kill running jobs and release resources."""

    def info(self) -> dict[str, Any]:
        """Numbers for the API and metrics: slots, busy, queued..."""
        return {"backend": self.name}

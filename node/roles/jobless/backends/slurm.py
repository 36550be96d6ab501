"""The Slurm backend: each job is an ``sbatch`` script in a shared job directory.

A job gets a directory ``<jobs_dir>/slurm/job-<cs>-XXXX`` (``jobless.jobs_dir`` must be
on a filesystem the compute nodes share) holding its packed spec and a batch script
that runs ``python -m node.roles.jobless.runner`` (the same executors and limits as the
local pool; ``jobless.slurm_python`` names the Python on the nodes, where seamless-node
must be installed). The script carries ``#SBATCH`` lines for the job name, its log, the
partition (``jobless.slurm_partition``) and any extra ``jobless.slurm_header`` lines.

One poller watches every submitted job every ``jobless.slurm_poll_interval`` seconds:
the outcome file (written atomically by the runner) ends a job as soon as it appears;
``squeue`` says when a job starts running, and when it ended without an outcome (the
script failed, the node died, Slurm killed it). Cancelling runs ``scancel``: Slurm sends
SIGTERM to the runner, which kills the job's process group at once.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from ..sandbox.plan import SandboxSettings
from ..spec import JobOutcome, JobSpec
from .base import Backend, BackendError, with_sandbox

log = logging.getLogger("seamless_node.jobless")

#: Slurm job states after which no outcome will come
ENDED = frozenset((
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
))


@dataclass(eq=False)
class _SlurmJob:
    job_id: str
    directory: str
    started: Callable[[], None]
    done: trio.Event = field(default_factory=trio.Event)
    state: str = "PENDING"
    missing_polls: int = 0
    reported_start: bool = False

    @property
    def outcome_path(self) -> str:
        return os.path.join(self.directory, "outcome")


def batch_script(spec_path: str, outcome_path: str, work: str, *, name: str, log_path: str,
                 partition: str | None, header: tuple[str, ...], python: str) -> str:
    """The sbatch script of one job (pure)."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={log_path}"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    for extra in header:
        extra = extra.strip()
        lines.append(extra if extra.startswith("#SBATCH") else f"#SBATCH {extra}")
    command = [python, "-m", "node.roles.jobless.runner", spec_path, outcome_path, work]
    lines.append("exec " + " ".join(shlex.quote(part) for part in command))
    return "\n".join(lines) + "\n"


def parse_squeue(text: str) -> dict[str, str]:
    """``squeue -h -o "%i %T"`` output -> {job id: state}."""
    states = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = parts[1].upper()
    return states


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, job_root: str, *, partition: str | None = None, header: tuple[str, ...] = (),
                 poll_interval: float = 0.5, python: str | None = None,
                 sandbox: SandboxSettings | None = None) -> None:
        self.root = os.path.join(job_root, "slurm")
        #: how the runner on the compute node sandboxes each job (None: not at all)
        self.sandbox = sandbox
        self.partition = partition
        self.header = header
        self.poll_interval = poll_interval
        self.python = python or sys.executable
        self.jobs: dict[str, _SlurmJob] = {}

    async def start(self, nursery: trio.Nursery) -> None:
        for tool in ("sbatch", "squeue", "scancel"):
            if shutil.which(tool) is None:
                raise BackendError(f"jobless.backend is slurm but {tool!r} is not on PATH")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        nursery.start_soon(self._poll_loop)

    async def _command(self, *args: str) -> str:
        proc = await trio.run_process(list(args), capture_stdout=True, capture_stderr=True, check=False)
        if proc.returncode != 0:
            error = proc.stderr.decode(errors="replace")[:500]
            raise BackendError(f"{args[0]} failed ({proc.returncode}): {error}")
        return str(proc.stdout.decode())

    def _prepare(self, spec: JobSpec) -> tuple[str, str]:
        """Write the job directory (spec and batch script); return it and the script."""
        directory = tempfile.mkdtemp(prefix=f"job-{spec.checksum[:12]}-", dir=self.root)
        spec_path = os.path.join(directory, "spec")
        with open(spec_path, "wb") as f:
            f.write(with_sandbox(spec, self.sandbox).to_bytes())
        script = batch_script(
            spec_path, os.path.join(directory, "outcome"), os.path.join(directory, "work"),
            name=f"seamless-{spec.checksum[:12]}", log_path=os.path.join(directory, "slurm.log"),
            partition=self.partition, header=self.header, python=self.python,
        )
        script_path = os.path.join(directory, "job.sh")
        with open(script_path, "w") as f:
            f.write(script)
        return directory, script_path

    async def run(self, spec: JobSpec, started: Callable[[], None]) -> JobOutcome:
        directory, script_path = await trio.to_thread.run_sync(self._prepare, spec)
        try:
            try:
                answer = await self._command("sbatch", "--parsable", "--chdir", directory, script_path)
            except BackendError as exc:
                return JobOutcome.failure("internal", f"sbatch refused the job: {exc}")
            job = _SlurmJob(answer.strip().split(";")[0], directory, started)
            self.jobs[job.job_id] = job
            try:
                await job.done.wait()
            except trio.Cancelled:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await self._cancel(job)
                raise
            finally:
                self.jobs.pop(job.job_id, None)
            return await trio.to_thread.run_sync(self._outcome, job)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, directory, True)

    def _outcome(self, job: _SlurmJob) -> JobOutcome:
        try:
            with open(job.outcome_path, "rb") as f:
                return JobOutcome.from_bytes(f.read())
        except FileNotFoundError:
            tail = ""
            try:
                with open(os.path.join(job.directory, "slurm.log"), "rb") as f:
                    tail = f.read()[-3000:].decode(errors="replace")
            except OSError:
                pass
            return JobOutcome.failure(
                "internal", f"Slurm job {job.job_id} ended ({job.state}) without an outcome\n{tail}".rstrip()
            )
        except ValueError as exc:
            return JobOutcome.failure("internal", f"Slurm job {job.job_id} left a malformed outcome: {exc}")

    async def _cancel(self, job: _SlurmJob) -> None:
        try:
            await self._command("scancel", job.job_id)
        except BackendError as exc:
            log.warning("scancel %s: %s", job.job_id, exc)
            return
        # wait until Slurm has ended the job (its processes are gone), briefly
        for _ in range(50):
            states = await self._states([job.job_id])
            if states.get(job.job_id, "GONE") not in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING"):
                return
            await trio.sleep(0.1)

    async def _states(self, job_ids: list[str]) -> dict[str, str]:
        proc = await trio.run_process(
            ["squeue", "-h", "--states=all", "-o", "%i %T", "-j", ",".join(job_ids)],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        return parse_squeue(proc.stdout.decode(errors="replace"))

    async def _poll_loop(self) -> None:
        while True:
            await trio.sleep(self.poll_interval)
            jobs = list(self.jobs.values())
            if not jobs:
                continue
            finished = await trio.to_thread.run_sync(
                lambda: [os.path.exists(job.outcome_path) for job in jobs]  # noqa: B023
            )
            for job, has_outcome in zip(jobs, finished, strict=True):
                if has_outcome:
                    self._report_start(job)
                    job.done.set()
            pending = [job for job in jobs if not job.done.is_set()]
            if not pending:
                continue
            states = await self._states([job.job_id for job in pending])
            for job in pending:
                state = states.get(job.job_id)
                if state is None:
                    job.missing_polls += 1
                    if job.missing_polls >= 3:  # purged from Slurm's memory: it is over
                        job.state = "GONE"
                        job.done.set()
                    continue
                job.state = state
                if state in ("RUNNING", "COMPLETING") or state in ENDED:
                    self._report_start(job)
                if state in ENDED:
                    job.done.set()  # with or without an outcome: _outcome tells

    @staticmethod
    def _report_start(job: _SlurmJob) -> None:
        if not job.reported_start:
            job.reported_start = True
            job.started()

    def info(self) -> dict[str, Any]:
        running = sum(1 for job in self.jobs.values() if job.state == "RUNNING")
        return {
            "backend": self.name, "submitted": len(self.jobs), "busy": running, "partition": self.partition,
        }

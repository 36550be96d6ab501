"""JoblessRole: mounts ``/jobserver`` and ``/api/v1/jobs`` and runs the job service."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio
from quart import Blueprint

from ...config import NodeConfig
from ..base import NodeContext, Role
from .backends.base import Backend
from .gateway import Gateway
from .journal import JobJournal
from .sandbox.plan import SandboxSettings
from .service import JobService
from .spec import Limits
from .states import JobState

if TYPE_CHECKING:
    from ...web.fastpath import FastRoute

log = logging.getLogger("seamless_node.jobless")


def sandbox_settings(config: NodeConfig) -> SandboxSettings | None:
    """How jobs are sandboxed (None: jobless.sandbox is off): the node's own paths are
    the ones jobs must never see."""
    cfg = config.jobless
    if not cfg.sandbox:
        return None
    hidden = [config.node.data_dir, config.jobs_directory, config.buffer_directory, config.database_path,
              config.key_file, config.peers_file, config.tokens_file,
              *config.buffers.extra_dirs, *config.database.extra_files]
    hidden += [config.revocations_file, config.node.tls_key_file or ""]
    return SandboxSettings(
        uid=cfg.sandbox_uid,
        gid=cfg.sandbox_gid,
        read_only=cfg.sandbox_paths,
        hidden=tuple(os.path.abspath(p) for p in hidden if p),
        max_processes=cfg.max_processes,
        memory=int(cfg.max_memory),
        output=int(cfg.max_output),
    )


def make_backend(context: NodeContext) -> Backend:
    cfg = context.config.jobless
    job_root = context.config.jobs_directory
    settings = sandbox_settings(context.config)
    if cfg.backend == "dask":
        from .backends.dask import DaskBackend

        assert cfg.dask_scheduler is not None
        return DaskBackend(cfg.dask_scheduler, job_root, sandbox=settings)
    if cfg.backend == "slurm":
        from .backends.slurm import SlurmBackend

        return SlurmBackend(
            job_root,
            partition=cfg.slurm_partition,
            header=cfg.slurm_header,
            poll_interval=float(cfg.slurm_poll_interval),
            python=cfg.slurm_python,
            sandbox=settings,
        )
    from .backends.local import LocalBackend

    return LocalBackend(cfg.workers or os.cpu_count() or 1, job_root, settings.to_json() if settings else "")


class JoblessRole(Role):
    name = "jobless"
    prefix = "/jobserver"

    def __init__(self, context: NodeContext) -> None:
        super().__init__(context)
        cfg = context.config.jobless
        self.gateway = Gateway(context)
        self.backend = make_backend(context)
        limits = Limits(
            wall_time=float(cfg.max_wall_time), memory=int(cfg.max_memory), output=int(cfg.max_output)
        )
        self.service = JobService(
            self.gateway, self.backend, limits, orphan_grace=float(cfg.orphan_grace), history=cfg.history
        )
        metrics = context.metrics
        for state in ("submitted", "done", "failed", "cancelled"):
            metrics.counter(
                f"seamless_node_jobs_{state}_total",
                lambda s=state: self.service.counts[s],  # type: ignore[misc]
                f"jobs {state} since start",
            )
        metrics.gauge("seamless_node_jobs_active", lambda: len(self.service.active), "jobs queued or running")
        for state in (JobState.QUEUED, JobState.RUNNING):
            metrics.gauge(
                f"seamless_node_jobs_{state.value}",
                lambda s=state: sum(1 for job in self.service.active.values() if job.state is s),  # type: ignore[misc]
                f"jobs {state.value} now",
            )

        def peer_label(node_id: str) -> str:  # federation starts after the roles are built
            federation = context.federation
            return federation.label(node_id) if federation is not None else node_id[:12]

        self.service.journal = JobJournal(metrics, self.backend.name, peer_label)

    def fast_routes(self) -> list["FastRoute"]:
        from .routes_jobserver import jobserver_fast_routes

        return jobserver_fast_routes(self)

    def blueprints(self) -> list[Blueprint]:
        from .routes_api import jobs_api_blueprint
        from .routes_jobserver import jobserver_blueprint

        return [jobserver_blueprint(self), jobs_api_blueprint(self)]

    def load(self) -> float:
        """Jobs running or waiting for a slot, per slot (0 when the backend does not say)."""
        info = self.backend.info()
        slots = info.get("slots") or 0
        if not slots:
            return 0.0
        return float(info.get("busy", 0) + info.get("waiting", 0)) / float(slots)

    async def start(self, nursery: trio.Nursery) -> None:
        await self.backend.start(nursery)
        await nursery.start(self.service.run)
        if self.context.federation is not None:  # run peers' jobs, forward jobs to peers
            self.context.federation.attach_jobs(self.service, self.load)
        log.info("jobless: %s backend; jobs at /jobserver and /api/v1/jobs", self.backend.name)
        cfg = self.context.config.jobless
        if cfg.sandbox:
            log.info("jobless: jobs run sandboxed as uid %d (network: %s)", cfg.sandbox_uid, cfg.network)
        else:
            log.warning("jobless: jobless.sandbox is off: jobs run as the node's own user and can read "
                        "its data directory and key (unsafe)")

    async def aclose(self) -> None:
        await self.backend.aclose()
        await self.gateway.aclose()

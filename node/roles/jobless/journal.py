"""What the job service reports: one log line per job transition, and the job metrics.

``JobService`` calls ``JobJournal.submitted`` when it creates a job, ``forwarded`` when
placement sends it to a peer, and ``transition`` after every change of state (see
states.py). Each writes one line on the ``seamless_node.jobs`` logger::

    job 3f2a...c1 submitted (python, by jobserver)
    job 3f2a...c1 started on the local backend
    job 3f2a...c1 forwarded to peer lab-b
    job 3f2a...c1 done in 1.234 s: result 9b71...0e
    job 3f2a...c1 failed after 0.8 s (code): Traceback ... (escaped to one line)
    job 3f2a...c1 cancelled after 3.1 s: cancelled (hard)

(a failure at info, since the node is fine; the JSON log format carries ``job``,
``state``, ``executor``, ``duration``, ``error`` as fields). A terminal transition also
adds the job's time from submission to its end to
``seamless_node_job_duration_seconds{executor,state}``, where the executor is the
backend's name (local, dask, slurm), ``peer`` for a job forwarded to a peer, or
``cache`` for a result that was already known.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...metrics import JOB_BUCKETS, Metrics
from .states import JobState

if TYPE_CHECKING:
    from .service import Job

log = logging.getLogger("seamless_node.jobs")

DURATION = "seamless_node_job_duration_seconds"
#: longest error text logged (the job's API entry keeps all of it)
MAX_ERROR_LOGGED = 4000


class JobJournal:
    def __init__(self, metrics: Metrics, backend: str, peer_label: Any = None) -> None:
        self.metrics = metrics
        self.backend = backend
        #: node id -> the peer's label (for log lines), when federation is on
        self.peer_label = peer_label or (lambda node_id: node_id[:12])
        metrics.histogram(
            DURATION,
            "time from a job's submission to its end, by executor and end state (seconds)",
            JOB_BUCKETS,
        )

    def submitted(self, job: "Job") -> None:
        by = job.origin + (f" for {job.submitter[:12]}" if job.submitter else "")
        _log(job, f"submitted ({job.transformation.language}, by {by})", state="queued", origin=job.origin)

    def forwarded(self, job: "Job", peer: str) -> None:
        label = self.peer_label(peer)
        _log(job, f"forwarded to peer {label}", state="queued", executor="peer", peer=label)

    def transition(self, job: "Job") -> None:
        state = job.state
        executor = self.executor(job)
        if state is JobState.RUNNING:
            where = f"peer {self.peer_label(job.executor)}" if job.executor else f"the {self.backend} backend"
            _log(job, f"started on {where}", state="running", executor=executor)
            return
        if not state.terminal:
            return
        seconds = max(0.0, (job.finished or job.submitted) - job.submitted)
        self.metrics.observe(DURATION, seconds, executor=executor, state=state.value)
        fields: dict[str, Any] = {"state": state.value, "executor": executor, "duration": round(seconds, 6)}
        if state is JobState.DONE:
            how = " (result already known)" if job.cached else ""
            _log(job, f"done in {seconds:.3f} s{how}: result {job.result}", result=job.result, **fields)
        elif state is JobState.FAILED:
            error = (job.error or "")[:MAX_ERROR_LOGGED]
            kind = job.failure_kind or "error"
            _log(job, f"failed after {seconds:.3f} s ({kind}): {error}", error=error, failure=kind, **fields)
        else:
            why = job.error or "cancelled"
            _log(job, f"cancelled after {seconds:.3f} s: {why}", error=job.error, **fields)

    def executor(self, job: "Job") -> str:
        if job.cached:
            return "cache"
        return "peer" if job.executor else self.backend


def _log(job: "Job", text: str, **fields: Any) -> None:
    fields = {"event": "job", "job": job.checksum, **fields}
    log.info("job %s %s", job.checksum, text, extra={"fields": fields})

"""JobService: the job table, deduplication, waiters, cancellation (see states.py).

One job per transformation checksum is in flight at a time: a second client asking for
the same transformation attaches to the running job as another *waiter*. Waiters are the
clients that want the result: an open ``/jobserver`` long-poll, or a hold taken by
``POST /api/v1/jobs``. A soft cancel detaches one waiter (that waiter hears "cancelled");
the job is killed when no waiter is left. A waiter that simply goes away (a long-poll
connection closed) leaves an *orphan* job: it is killed after ``jobless.orphan_grace``
seconds unless someone attaches again (the real client reconnects after a timeout). A
hard cancel kills the job whatever the waiters.

Every value a client sends inline is verified against the checksum the transformation
names before a job exists (``node.inline_values``; a mismatch refuses the submission), so
a job's inputs are only ever buffers named by the transformation: gathered by checksum
from the store, or sent inline, verified and stored (``Gateway.build_spec``). No backend
can run bytes that were not verified.

Each job runs as one task in the service's nursery, inside its own cancel scope: look
up a known result (the database, or a claim of a peer trusted for results); gather the
inputs; run on the backend; store the result buffers; record the result; DONE.
Cancelling the scope at any point before the record stops all of it, and the backend
kills the job's processes on the way out.
"""

from __future__ import annotations

import collections
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import trio

from ... import __version__
from ...inline_values import parse_verified
from ...transformation import Transformation
from .backends.base import Backend
from .gateway import Gateway, InputMissing
from .journal import JobJournal
from .spec import JobOutcome, JobSpec, Limits
from .states import Event, IllegalTransition, JobState, next_state

log = logging.getLogger("seamless_node.jobless")

#: events kept per subscriber before the slowest ones are dropped
EVENT_BUFFER = 64
#: most jobs with their inputs in memory at once (see JobService.in_flight)
IN_FLIGHT = 256


@dataclass(eq=False)
class Waiter:
    kind: str  # "jobserver" or "api"
    detached: bool = False
    #: set when something this waiter may care about happened: the result is stored, the
    #: job ended, or the waiter was detached
    wake: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True)
class JobEvent:
    checksum: str
    state: str
    time: float
    result: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class RemoteOutcome:
    """How a job forwarded to a peer ended (see Forwarder)."""

    result: str | None = None  # the result checksum, its buffer stored here
    error: str | None = None
    failure_kind: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    #: the peer did not run it (refused, unreachable, lost, untrustworthy answer): run here
    run_here: bool = False


class Forwarder(Protocol):
    """Runs jobs at peers (node.federation.forwarding.JobForwarder implements it)."""

    async def plan(self, job: "Job") -> str | None:
        """The peer to run *job* at, or None to run it here."""

    async def forward(self, job: "Job", peer: str, started: Callable[[], None]) -> RemoteOutcome:
        """Run *job* at *peer* until it ends; cancelling this cancels it at the peer."""


@dataclass(eq=False)
class Job:
    transformation: Transformation
    origin: str
    #: the transformation dict as submitted, and its dunder keys (what a peer is sent)
    request: dict[str, Any] = field(default_factory=dict)
    tf_dunder: dict[str, Any] | None = None
    #: for a job a peer forwarded: the node it runs for, and the nodes that forwarded it
    submitter: str = ""
    hops: tuple[str, ...] = ()
    #: the peer this job is (or was) forwarded to, if any
    executor: str | None = None
    #: kinds of the waiters that went away without cancelling (see cancel_waiters)
    left: set[str] = field(default_factory=set)
    state: JobState = JobState.QUEUED
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: str | None = None
    error: str | None = None
    failure_kind: str | None = None
    cached: bool = False
    stats: dict[str, float] = field(default_factory=dict)
    waiters: list[Waiter] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)
    #: set once the job knows whether its result was already known
    checked: trio.Event = field(default_factory=trio.Event)
    #: set once the result buffer is stored (before it is recorded and the job is DONE):
    #: from then on the job can no longer be cancelled
    result_ready: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    subscribers: list[trio.MemorySendChannel[JobEvent]] = field(default_factory=list)

    @property
    def checksum(self) -> str:
        return self.transformation.checksum

    def snapshot(self) -> dict[str, Any]:
        return {
            "checksum": self.checksum,
            "state": self.state.value,
            "language": self.transformation.language,
            "origin": self.origin,
            "cached": self.cached,
            "submitted": self.submitted,
            "started": self.started,
            "finished": self.finished,
            "result": self.result,
            "error": self.error,
            "failure": self.failure_kind,
            "waiters": len(self.waiters),
            "stats": self.stats,
            "submitter": self.submitter or None,
            "executor": self.executor,
        }


class JobService:
    def __init__(self, gateway: Gateway, backend: Backend, limits: Limits, *, orphan_grace: float = 30.0,
                 history: int = 1000) -> None:
        self.gateway = gateway
        self.backend = backend
        self.limits = limits
        self.orphan_grace = orphan_grace
        self.active: dict[str, Job] = {}
        self.finished: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self.history = history
        self.counts: collections.Counter[str] = collections.Counter()
        self._nursery: trio.Nursery | None = None
        #: set when federation is on: decides where each job runs (see Forwarder)
        self.forwarder: Forwarder | None = None
        #: jobs holding their inputs in memory (gathered, running, storing) at one time;
        #: the others wait in the queue without them
        self.in_flight = trio.CapacityLimiter(IN_FLIGHT)
        #: the log lines and metrics of job transitions (journal.py); set by the role
        self.journal: JobJournal | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The service's tasks (jobs, orphan timers); runs until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for job in list(self.active.values()):
                self._transition(job, Event.CANCEL, error="the node is shutting down")

    # --------------------------------------------------------------------- queries

    def get(self, checksum: str) -> Job | None:
        return self.active.get(checksum) or self.finished.get(checksum)

    def jobs(self, limit: int = 100) -> list[Job]:
        """Active jobs first, then the most recently finished."""
        out = list(self.active.values())
        out += list(reversed(self.finished.values()))[: max(0, limit - len(out))]
        return out[:limit]

    # ------------------------------------------------------------------ submitting

    async def submit(
        self,
        transformation: dict[str, Any],
        tf_dunder: dict[str, Any] | None = None,
        *,
        kind: str,
        submitter: str = "",
        hops: tuple[str, ...] = (),
    ) -> tuple[Job, Waiter]:
        """Start (or join) the job of a transformation dict; TransformationError if invalid,
        InlineMismatch (a TransformationError) if a value sent inline does not hash to the
        checksum the transformation names: then no job exists and nothing is stored.

        *submitter* and *hops*: for a job a peer forwarded, the node it runs for and the
        nodes that forwarded it (a job joined keeps those of its first submission)."""
        tf = parse_verified(transformation, tf_dunder)
        job = self.active.get(tf.checksum)
        if job is None:
            old = self.finished.get(tf.checksum)
            if old is not None and old.state is JobState.DONE:
                return old, Waiter(kind)
            job = Job(
                tf, origin=kind, request=dict(transformation), tf_dunder=tf_dunder,
                submitter=submitter, hops=tuple(hops),
            )
            self.active[tf.checksum] = job
            self.counts["submitted"] += 1
            if self.journal is not None:
                self.journal.submitted(job)
            if self._nursery is None:
                raise RuntimeError("the job service is not running")
            self._nursery.start_soon(self._run_job, job)
        waiter = Waiter(kind)
        job.waiters.append(waiter)
        return job, waiter

    async def wait(self, job: Job, waiter: Waiter, *, result_only: bool = False) -> None:
        """Until the job ends (or, with *result_only*, its result is stored) or *waiter*
        is detached; a caller that goes away detaches."""
        end = job.result_ready if result_only else job.done
        try:
            while not (end.is_set() or job.done.is_set() or waiter.detached):
                await waiter.wake.wait()
                waiter.wake = trio.Event()
        finally:
            if not job.done.is_set() and not job.result_ready.is_set() and not waiter.detached:
                self.detach(job, waiter, explicit=False)

    async def hold(self, job: Job, waiter: Waiter, timeout: float) -> None:
        """Until the job's result is stored, it ends, *waiter* is detached, or *timeout*
        passes; the waiter stays attached (the caller detaches it)."""
        with trio.move_on_after(timeout):
            while not (job.result_ready.is_set() or job.done.is_set() or waiter.detached):
                await waiter.wake.wait()
                waiter.wake = trio.Event()

    def detach(self, job: Job, waiter: Waiter, *, explicit: bool) -> None:
        if waiter not in job.waiters:
            return
        job.waiters.remove(waiter)
        waiter.detached = True
        if not explicit:
            job.left.add(waiter.kind)
        waiter.wake.set()
        if job.waiters or job.state.terminal or job.result_ready.is_set():
            return
        if explicit:
            self._cancel(job, "cancelled: no client waits for it any more")
        elif self._nursery is not None:
            self._nursery.start_soon(self._orphan_timer, job)

    def cancel(self, checksum: str, *, hard: bool = False, kind: str | None = None) -> bool:
        """Soft: detach one waiter (of *kind* if there is one); hard: kill now.
        True if something was cancelled or detached."""
        job = self.active.get(checksum)
        if job is None or job.result_ready.is_set():
            return False
        if hard or not job.waiters:
            self._cancel(job, "cancelled" + (" (hard)" if hard else ""))
            return True
        chosen = next((w for w in job.waiters if w.kind == kind), job.waiters[0])
        self.detach(job, chosen, explicit=True)
        return True

    def cancel_waiters(self, checksum: str, kind: str) -> bool:
        """Detach every waiter of *kind* (a peer cancelling what it forwarded): the job is
        killed if no other waiter is left, also when the last one, of this kind, had gone
        away already (its connection closed before the cancel came). True if it acted."""
        job = self.active.get(checksum)
        if job is None or job.result_ready.is_set():
            return False
        mine = [w for w in job.waiters if w.kind == kind]
        for waiter in mine:
            self.detach(job, waiter, explicit=True)
        if not mine and not job.waiters and kind in job.left:
            self._cancel(job, "cancelled: no client waits for it any more")
            return True
        return bool(mine)

    async def _orphan_timer(self, job: Job) -> None:
        await trio.sleep(self.orphan_grace)
        if not job.waiters and not job.state.terminal and not job.result_ready.is_set():
            self._cancel(job, f"cancelled: no client waited for it for {self.orphan_grace:g} s")

    def _cancel(self, job: Job, why: str) -> None:
        if self._transition(job, Event.CANCEL, error=why):
            job.scope.cancel()

    # ------------------------------------------------------------------- events

    def subscribe(self, job: Job) -> trio.MemoryReceiveChannel[JobEvent]:
        send, receive = trio.open_memory_channel[JobEvent](EVENT_BUFFER)
        send.send_nowait(self._event(job))
        if job.state.terminal:
            send.close()
        else:
            job.subscribers.append(send)
        return receive

    @staticmethod
    def _wake_all(job: Job) -> None:
        for waiter in job.waiters:
            waiter.wake.set()

    def _result_ready(self, job: Job, result: str) -> None:
        job.result = result
        job.result_ready.set()
        self._wake_all(job)

    @staticmethod
    def _event(job: Job) -> JobEvent:
        return JobEvent(job.checksum, job.state.value, time.time(), job.result, job.error)

    def _transition(self, job: Job, event: Event, **values: Any) -> bool:
        try:
            job.state = next_state(job.state, event)
        except IllegalTransition:
            return False
        for key, value in values.items():
            setattr(job, key, value)
        now = time.time()
        if job.state is JobState.RUNNING:
            job.started = now
        if job.state.terminal:
            job.finished = now
            self.counts[job.state.value] += 1
            job.done.set()
            job.checked.set()
            self._wake_all(job)
            job.waiters.clear()
            if self.active.get(job.checksum) is job:
                del self.active[job.checksum]
            self.finished[job.checksum] = job
            self.finished.move_to_end(job.checksum)
            while len(self.finished) > self.history:
                self.finished.popitem(last=False)
        if self.journal is not None:
            self.journal.transition(job)
        event_value = self._event(job)
        for send in list(job.subscribers):
            try:
                send.send_nowait(event_value)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                job.subscribers.remove(send)
                send.close()
            if job.state.terminal:
                send.close()
        if job.state.terminal:
            job.subscribers.clear()
        return True

    # --------------------------------------------------------------- running a job

    def _started(self, job: Job) -> None:
        self._transition(job, Event.START)

    async def _run_job(self, job: Job) -> None:
        with job.scope:
            try:
                await self._compute(job)
            except InputMissing as exc:
                self._transition(job, Event.FAIL, error=str(exc), failure_kind="input")
            except Exception as exc:
                log.exception("job %s failed in the node", job.checksum)
                self._transition(job, Event.FAIL, error=f"internal error: {exc}", failure_kind="internal")
            finally:
                if job in self.in_flight.statistics().borrowers:
                    self.in_flight.release_on_behalf_of(job)
        if not job.state.terminal:  # cancelled from outside the state machine (shutdown)
            self._transition(job, Event.CANCEL, error="cancelled")

    async def _plan(self, job: Job) -> str | None:
        """The peer to forward *job* to, or None (placement problems never fail a job)."""
        if self.forwarder is None:
            return None
        try:
            return await self.forwarder.plan(job)
        except Exception as exc:
            log.warning("placement of %s failed, running it here: %s", job.checksum, exc)
            return None

    async def _compute(self, job: Job) -> None:
        tf = job.transformation
        known: str | None = None
        spec: JobSpec | None = None
        missing: InputMissing | None = None
        peer: str | None = None
        # the result lookup runs side by side with placement and the gathering of inputs
        async with trio.open_nursery() as nursery:

            async def lookup() -> None:
                nonlocal known
                known = await self.gateway.lookup(tf.checksum)
                if known is not None:
                    nursery.cancel_scope.cancel()  # "checked" is set when the job ends
                else:
                    job.checked.set()

            async def gather() -> None:
                nonlocal spec, missing, peer
                peer = await self._plan(job)
                if peer is not None:
                    return
                await self.in_flight.acquire_on_behalf_of(job)  # released when the job ends
                try:
                    spec = await self.gateway.build_spec(tf, self.limits)
                except InputMissing as exc:
                    missing = exc

            nursery.start_soon(lookup)
            nursery.start_soon(gather)
        if known is not None:
            self._result_ready(job, known)
            self._transition(job, Event.SUCCEED, result=known, cached=True)
            return
        if peer is not None:
            assert self.forwarder is not None
            job.executor = peer
            if self.journal is not None:
                self.journal.forwarded(job, peer)
            remote = await self.forwarder.forward(job, peer, lambda: self._started(job))
            if not remote.run_here:
                job.stats = dict(remote.stats)
                if remote.result is None:
                    self._transition(job, Event.FAIL, error=remote.error, failure_kind=remote.failure_kind)
                    return
                self._result_ready(job, remote.result)
                self._transition(job, Event.SUCCEED, result=remote.result)
                return
            log.warning("job %s runs here after all: %s", job.checksum, remote.error)
            job.executor = None
            await self.in_flight.acquire_on_behalf_of(job)
            spec = await self.gateway.build_spec(tf, self.limits)
        if missing is not None:
            raise missing
        assert spec is not None
        outcome = await self.backend.run(spec, lambda: self._started(job))
        if not outcome.ok:
            job.stats = outcome.stats
            self._transition(job, Event.FAIL, error=outcome.error, failure_kind=outcome.kind)
            return
        await self._finish(job, outcome)

    async def _finish(self, job: Job, outcome: JobOutcome) -> None:
        assert outcome.result is not None
        job.stats = outcome.stats
        started = job.started or job.submitted
        record = {
            "schema_version": 1,
            "tf_checksum": job.checksum,
            "result_checksum": outcome.result,
            "execution_mode": "remote",
            "remote_target": "jobserver",
            "executor": f"seamless-node {__version__} ({self.backend.name} backend)",
            "hostname": socket.gethostname(),
            "started_at": _iso(started),
            "finished_at": _iso(time.time()),
            "wall_time_seconds": outcome.stats.get("wall_time_seconds"),
            "cpu_time_user_seconds": outcome.stats.get("cpu_user_seconds"),
            "cpu_time_system_seconds": outcome.stats.get("cpu_system_seconds"),
            "memory_peak_bytes": outcome.stats.get("memory_peak_bytes"),
        }
        if job.submitter:  # run for a peer: for whom, and who forwarded it
            record["submitter"] = job.submitter
            record["forwarded_by"] = list(job.hops)
        await self.gateway.store(outcome.buffers)
        # the result is safe: /jobserver clients get it now, while it is being recorded
        self._result_ready(job, outcome.result)
        with trio.CancelScope(shield=True):
            try:
                await self.gateway.record(job.checksum, outcome.result, record)
            except Exception as exc:  # the result stands; only its record is missing
                log.warning("could not record the result of %s: %s", job.checksum, exc)
        self._transition(job, Event.SUCCEED, result=outcome.result)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def record_runtime(job: Job) -> dict[str, Any]:
    """The ``record_runtime`` a seamless-jobserver answers with."""
    started = job.started or job.submitted
    finished = job.finished or time.time()
    return {
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "wall_time_seconds": job.stats.get("wall_time_seconds", round(finished - started, 6)),
        "cpu_user_seconds": job.stats.get("cpu_user_seconds", 0.0),
        "cpu_system_seconds": job.stats.get("cpu_system_seconds", 0.0),
        "memory_peak_bytes": job.stats.get("memory_peak_bytes"),
        "gpu_memory_peak_bytes": None,
    }

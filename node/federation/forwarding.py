"""Job forwarding, the origin's side: where does a job run, and running it at a peer.

The job service asks ``JobForwarder.plan(job)`` before gathering a job's inputs. With no
peer granting this node ``jobs:submit`` (a link the peer signed) the answer is "here",
without any I/O. Otherwise the candidates are this node and each such peer not on the
job's hop list; in one concurrent round it learns

* which of the job's inputs (code and pins, by checksum) each peer holds, and their
  sizes: the batched presence query (``locate.Locator``, cached), asked of the peers that
  grant us ``buffers:read``, about the inputs this node lacks or holds with 64 KiB or
  more (a smaller one cannot tilt the choice, and travels with the job anyway);
* each peer's job load and whether it runs jobless: from its signed ping answer, cached
  for ``peer_status_ttl`` seconds (the prober refreshes it too);

and hands them to the pure ``placement.place``. ``forward(job, peer)`` then sends the
transformation dict, the hop list (this node appended) and the inputs the peer lacks, up
to ``forward_inline`` bytes (larger ones the executor fetches on its own), in a signed
``POST /federation/jobs`` on behalf of the job's submitter; the executor answers when the
result is stored, or "still running" after ``forward_poll`` seconds (then it is asked
again). The answer carries the result checksum, a result claim signed by the executor
and, when small, the result buffer. The claim must be the executor's, about this
transformation; the buffer is verified as it enters the store (else it is fetched from
the executor). The claim is kept only if this node grants the executor ``results:write``
(security.md rule 6); either way it answers the job at hand.

Cancelling the job here cancels the request, and a signed
``POST /federation/jobs/<cs>/cancel`` tells the executor (it kills the job unless others
wait for it there). A peer that refuses the job, cannot be reached, breaks off, or
answers something unverifiable is counted and the job runs here instead
(``RemoteOutcome.run_here``); a job that *failed* at the executor fails here with its
error, as it would have locally.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Callable

import trio

from ..checksum import is_checksum
from ..roles.jobless.service import Job, RemoteOutcome
from .canonical import b64decode, b64encode
from .claims import ClaimStatus, parse_claim
from .locate import LocalSource
from .peers import PeerError, PeerRefused, PeerUnreachable
from .placement import Candidate, PlacementPolicy, next_hops, place

if TYPE_CHECKING:
    from .service import FederationService

log = logging.getLogger("seamless_node.federation")

FORWARDED = "seamless_node_federation_jobs_forwarded_total"
FORWARD_FAILED = "seamless_node_federation_jobs_forward_failed_total"
#: longest the signed cancel of a forwarded job may take
CANCEL_TIMEOUT = 2.0
#: inputs held here and smaller than this are not looked for at peers (placement counts
#: them as missing there: far less than a forward costs), and travel with the job
SMALL_INPUT = 64 * 1024


class JobForwarder:
    """Implements the job service's Forwarder for a node with federation."""

    def __init__(self, federation: "FederationService", local_load: Callable[[], float]) -> None:
        self.fed = federation
        self.local_load = local_load
        cfg = federation.context.config.federation
        self.enabled = bool(cfg.forward_jobs)
        self.policy = PlacementPolicy(
            forward_cost=int(cfg.forward_cost), load_cost=int(cfg.load_cost), max_hops=int(cfg.max_hops)
        )
        self.inline_max = int(cfg.forward_inline)
        self.poll = float(cfg.forward_poll)
        self.timeout = float(cfg.request_timeout)
        metrics = federation.context.metrics
        metrics.describe(FORWARD_FAILED, "jobs a peer refused, lost or answered wrongly (run here instead)")

    # -- placement -------------------------------------------------------------------

    async def plan(self, job: Job) -> str | None:
        fed = self.fed
        if not self.enabled:
            return None
        await fed.watcher.refresh()
        now, registry = fed.clock(), fed.registry
        peers = [p for p in registry.granting_us("jobs:submit", now) if p not in job.hops]
        if not peers or len(job.hops) >= self.policy.max_hops:
            return None
        checksums = list(dict.fromkeys(job.transformation.input_checksums))
        local_sizes = await LocalSource(fed.context.buffers).lengths(checksums)
        # small inputs held here cannot tilt the choice: peers are not asked about them
        ask = [cs for cs, size in zip(checksums, local_sizes) if size is None or size >= SMALL_INPUT]
        holders: dict[str, Any] = {}
        loads: dict[str, float | None] = {}

        async def presence() -> None:
            sources = [
                fed.peer_source(p) for p in peers if registry.outgoing(p, "buffers:read", now).allowed
            ]
            holders.update(await fed.locator.holders(ask, sources))

        async def load(peer: str) -> None:
            loads[peer] = await fed.peer_job_load(peer)

        async with trio.open_nursery() as nursery:
            if ask:
                nursery.start_soon(presence)
            for peer in peers:
                nursery.start_soon(load, peer)
        sizes: dict[str, int] = {}
        held: dict[str, set[str]] = {p: set() for p in peers}
        here: set[str] = set()
        for cs, size in zip(checksums, local_sizes, strict=True):
            if size is not None:
                here.add(cs)
                sizes[cs] = size
            for holder in holders.get(cs, []):
                if holder.source.name in held:
                    held[holder.source.name].add(cs)
                    sizes[cs] = max(sizes.get(cs, 0), holder.length)
        candidates = [Candidate(fed.node_id, True, frozenset(here), self.local_load())]
        for peer in peers:
            peer_load = loads.get(peer)
            candidates.append(
                Candidate(peer, False, frozenset(held[peer]), peer_load or 0.0, accepts=peer_load is not None)
            )
        choice = place(sizes, candidates, self_id=fed.node_id, hops=job.hops, policy=self.policy)
        log.debug("placement of %s: %s %s", job.checksum, choice.reason, choice.costs)
        return choice.target if choice.forward else None

    # -- running at a peer -----------------------------------------------------------

    async def forward(self, job: Job, peer: str, started: Callable[[], None]) -> RemoteOutcome:
        fed = self.fed
        label = fed.label(peer)
        now = trio.current_time()  # what placement saw the peer hold (cached presence)
        cache = fed.locator.cache
        held = {cs for cs in job.transformation.input_checksums if cache.get(peer, cs, now)[1] is not None}
        body: dict[str, Any] = {
            "transformation": job.request,
            "tf_dunder": job.tf_dunder,
            "hops": next_hops(job.hops, fed.node_id),
            "inline": await self._inline(job, held),
            "wait": self.poll,
        }
        on_behalf_of = job.submitter if job.submitter and job.submitter != fed.node_id else ""
        fed.context.metrics.inc(FORWARDED, peer=label)
        started()
        try:
            while True:
                try:
                    answer = await fed.client.call(
                        peer, "POST", "/federation/jobs", body,
                        on_behalf_of=on_behalf_of, time_limit=self.poll + self.timeout,
                    )
                except PeerRefused as exc:
                    return self._failed(peer, "refused", str(exc))
                except PeerUnreachable as exc:
                    return self._failed(peer, "unreachable", str(exc))
                except PeerError as exc:
                    return self._failed(peer, "bad-answer", str(exc))
                state = answer.get("state") if isinstance(answer, dict) else None
                if state == "running":
                    body["inline"] = {}  # sent once
                    continue
                if state == "done":
                    return await self._take_result(job, peer, answer)
                if state in ("failed", "cancelled"):
                    error = answer.get("error")
                    kind = str(answer.get("failure") or "error") if state == "failed" else "forward"
                    return RemoteOutcome(
                        error=f"at {label}: {error if isinstance(error, str) else state}",
                        failure_kind=kind,
                        stats=_stats(answer),
                    )
                return self._failed(peer, "bad-answer", f"unexpected answer {str(answer)[:200]}")
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_TIMEOUT):
                try:
                    await fed.client.call(peer, "POST", f"/federation/jobs/{job.checksum}/cancel", {})
                except PeerError as exc:
                    log.info("could not cancel %s at %s: %s", job.checksum, label, exc)
            raise

    def _failed(self, peer: str, reason: str, detail: str) -> RemoteOutcome:
        label = self.fed.label(peer)
        self.fed.context.metrics.inc(FORWARD_FAILED, peer=label, reason=reason)
        log.warning("forwarding to %s failed (%s): %s", label, reason, detail)
        return RemoteOutcome(error=f"forwarding to {label} failed ({reason}): {detail}", run_here=True)

    async def _inline(self, job: Job, held: frozenset[str]) -> dict[str, str]:
        """The inputs the peer lacks that travel with the job (up to inline_max bytes)."""
        wanted = [cs for cs in dict.fromkeys(job.transformation.input_checksums) if cs not in held]
        if not wanted or self.inline_max <= 0:
            return {}
        buffers = self.fed.context.buffers
        sizes = await buffers.lengths(wanted)
        present = await buffers.has(wanted, include_pending=False)
        out: dict[str, str] = {}
        budget = self.inline_max
        for cs, size, here in zip(wanted, sizes, present, strict=True):
            if not here or size > budget:
                continue
            data = await buffers.read(cs)
            if data is not None:
                out[cs] = b64encode(data)
                budget -= len(data)
        return out

    async def _take_result(self, job: Job, peer: str, answer: dict[str, Any]) -> RemoteOutcome:
        fed = self.fed
        result = answer.get("result")
        if not is_checksum(result):
            return self._failed(peer, "bad-answer", "no result checksum")
        try:
            claim = parse_claim(answer.get("claim"))
        except ValueError as exc:
            return self._failed(peer, "bad-claim", str(exc))
        status = fed.results.check(claim, expected_signer=peer, expected_transformation=job.checksum)
        if status is not ClaimStatus.VALID or claim.result != result:
            reason = status.value if status is not ClaimStatus.VALID else "claim names another result"
            return self._failed(peer, "bad-claim", reason)
        data = answer.get("buffer")
        if isinstance(data, str):
            try:
                raw = b64decode(data)
            except ValueError:
                raw = b""
            if hashlib.sha256(raw).hexdigest() != result:
                return self._failed(peer, "bad-answer", "the result buffer does not match its checksum")
            await fed.context.buffers.put_bytes(result, raw)
        elif not (await fed.context.buffers.has([result], include_pending=False))[0]:
            if not await fed.fetch_missing(result):
                return self._failed(peer, "no-result-buffer", f"cannot fetch the result buffer {result}")
        if fed.results.trusted(peer):
            await trio.to_thread.run_sync(fed.claims.put, [claim])
        return RemoteOutcome(result=result, stats=_stats(answer))


def _stats(answer: dict[str, Any]) -> dict[str, Any]:
    stats = answer.get("stats")
    if not isinstance(stats, dict):
        return {}
    return {k: v for k, v in stats.items() if isinstance(k, str) and isinstance(v, (int, float))}

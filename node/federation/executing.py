"""Job forwarding, the executor's side: running a job a peer sent (``/federation/jobs``).

By the time ``JobReceiver.run`` is called the Gate has admitted the request
(``Gate.admit_job``): the submitter holds ``jobs:submit`` here, a forwarding origin holds
``forward`` here, and both grants' limits have room. Then, still before anything runs
(security.md rule 11: nothing is spawned for refused work):

* the hop list must be well formed: node ids, the submitter first, the origin last, at
  most ``max_hops`` long, and without this node (409 ``forward-loop``: a job never comes
  back to a node that already forwarded it);
* the transformation dict must be valid (400); the same transformation, if this node is
  forwarding it itself to a node on the hop list, is a loop too (409: the origin runs it);
* inputs sent along (``inline``) must hash to their names and be inputs of the
  transformation, and code sent as text (``__code_text__``) must hash to the checksum of
  the code pin (``node.inline_values``): else 400 ``wrong-bytes``, and nothing is stored
  or run; they enter the store through ``BufferService`` like any upload.

The job then goes to this node's own JobService as a waiter of kind ``peer:<origin>``, so
deduplication, limits and cancellation work as for local jobs, and its execution record
names the submitter and the nodes that forwarded it. Inputs that did not come along are
fetched on miss from peers (the job gateway asks ``NodeContext.fetch_missing``).

The answer comes when the result is stored (``done``, with a claim signed by this node
and, up to ``forward_inline`` bytes, the result buffer), when the job fails or is
cancelled, or after the ``wait`` the origin asked for (``running``: the origin asks
again; its waiter is detached meanwhile, and the job survives ``jobless.orphan_grace``).
An origin that goes away mid-request detaches explicitly: with no other waiter, the job
is killed at once. ``cancel`` detaches the origin's waiters the same way.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from ..inline_values import InlineMismatch, parse_verified
from ..transformation import TransformationError
from .canonical import b64decode, b64encode
from .claims import make_claim
from .gate import Admission, Refusal
from .identity import is_node_id

if TYPE_CHECKING:
    from ..roles.jobless.service import JobService
    from .service import FederationService

log = logging.getLogger("seamless_node.federation")

RECEIVED = "seamless_node_federation_jobs_received_total"


class JobReceiver:
    def __init__(self, federation: "FederationService") -> None:
        self.fed = federation
        cfg = federation.context.config.federation
        self.max_hops = int(cfg.max_hops)
        self.inline_max = int(cfg.forward_inline)
        self.max_wait = float(cfg.forward_poll)
        #: the node's job service, when the jobless role runs
        self.jobs: "JobService | None" = None
        federation.context.metrics.describe(RECEIVED, "jobs peers sent here to run, by origin")

    @property
    def body_limit(self) -> int:
        return 64 * 1024**2 + 2 * self.inline_max

    def _check_hops(self, admission: Admission, hops: Any) -> tuple[str, ...]:
        self_id = self.fed.node_id
        if not isinstance(hops, list) or not hops or not all(is_node_id(h) for h in hops):
            raise Refusal(400, "malformed-body", "hops must be a non-empty list of node ids")
        if self_id in hops:
            raise self.fed.gate.refuse(
                409, "forward-loop", "this node is on the job's hop list already", admission.origin
            )
        if len(hops) > self.max_hops:
            raise self.fed.gate.refuse(
                409, "too-many-hops", f"forwarded {len(hops)} times (limit {self.max_hops})", admission.origin
            )
        if hops[-1] != admission.origin or hops[0] != admission.on_behalf_of:
            raise Refusal(400, "malformed-body", "hops must run from the submitter to the sender")
        return tuple(hops)

    async def run(self, admission: Admission, body: Any) -> dict[str, Any]:
        """Run (or join) the job in *body*; the answer for the origin."""
        jobs = self.jobs
        if jobs is None:
            raise Refusal(404, "no-jobs", "this node does not run jobs (no jobless role)")
        if not isinstance(body, dict) or not isinstance(body.get("transformation"), dict):
            raise Refusal(400, "malformed-body", 'expected {"transformation": {...}, "hops": [...]}')
        hops = self._check_hops(admission, body.get("hops"))
        dunder = body.get("tf_dunder")
        dunder = dunder if isinstance(dunder, dict) else None
        try:
            tf = parse_verified(body["transformation"], dunder)
        except InlineMismatch as exc:
            raise Refusal(400, "wrong-bytes", f"invalid transformation: {exc}") from None
        except TransformationError as exc:
            raise Refusal(400, "malformed-body", f"invalid transformation: {exc}") from None
        running = jobs.active.get(tf.checksum)
        if running is not None and running.executor in hops:
            # the same transformation, submitted here too, is being forwarded to a node on
            # this job's path: joining it would make each wait for the other
            raise self.fed.gate.refuse(
                409, "forward-loop", "this node forwards the same job along this job's path", admission.origin
            )
        await self._store_inline(body.get("inline"), set(tf.input_checksums))
        wait = body.get("wait", self.max_wait)
        wait = min(max(float(wait), 0.0), self.max_wait) if isinstance(wait, (int, float)) else self.max_wait
        self.fed.context.metrics.inc(RECEIVED, peer=admission.label)
        kind = f"peer:{admission.origin}"
        job, waiter = await jobs.submit(
            body["transformation"], dunder, kind=kind, submitter=admission.on_behalf_of, hops=hops
        )
        try:
            await jobs.hold(job, waiter, wait)
        except BaseException:  # the origin went away (or the node stops): stop waiting now
            jobs.detach(job, waiter, explicit=True)
            raise
        if job.result_ready.is_set() or job.done.is_set():
            return await self._answer(job)
        if waiter.detached:  # the origin cancelled meanwhile
            return {"state": "cancelled", "error": "cancelled by the origin", "failure": None, "stats": {}}
        jobs.detach(job, waiter, explicit=False)  # the origin asks again at once
        return {"state": "running"}

    async def _answer(self, job: Any) -> dict[str, Any]:
        stats = {k: v for k, v in job.stats.items() if isinstance(v, (int, float))}
        if job.result_ready.is_set() and job.result is not None:
            fed = self.fed
            claim = make_claim(fed.watcher.identity, job.checksum, job.result, fed.clock())
            answer: dict[str, Any] = {
                "state": "done", "result": job.result, "claim": claim.to_document(), "stats": stats
            }
            (size,) = await fed.context.buffers.lengths([job.result])
            if 0 < size <= self.inline_max or job.result == hashlib.sha256(b"").hexdigest():
                data = await fed.context.buffers.read(job.result)
                if data is not None:
                    answer["buffer"] = b64encode(data)
            return answer
        state = "failed" if job.state.value == "failed" else "cancelled"
        return {"state": state, "error": job.error, "failure": job.failure_kind, "stats": stats}

    async def _store_inline(self, inline: Any, inputs: set[str]) -> None:
        if not inline:
            return
        if not isinstance(inline, dict) or len(inline) > len(inputs):
            raise Refusal(400, "malformed-body", "inline must map input checksums to base64 buffers")
        total = 0
        decoded: dict[str, bytes] = {}
        for cs, text in inline.items():
            if cs not in inputs:
                raise Refusal(400, "malformed-body", f"{cs!r:.80} is not an input of the transformation")
            try:
                data = b64decode(text)
            except ValueError:
                raise Refusal(400, "malformed-body", f"inline buffer {cs} is not base64") from None
            total += len(data)
            if total > self.inline_max:
                raise Refusal(413, "too-large", f"inputs sent along exceed {self.inline_max} bytes")
            if hashlib.sha256(data).hexdigest() != cs:
                raise Refusal(400, "wrong-bytes", f"inline buffer {cs} does not match its checksum")
            decoded[cs] = data
        buffers = self.fed.context.buffers
        present = await buffers.has(list(decoded), include_pending=False)
        for (cs, data), here in zip(decoded.items(), present, strict=True):
            if not here:
                await buffers.put_bytes(cs, data)

    def cancel(self, origin: str, checksum: str) -> bool:
        """The origin's waiters on *checksum* detach (the job dies if no one else waits)."""
        if self.jobs is None:
            return False
        return self.jobs.cancel_waiters(checksum, f"peer:{origin}")

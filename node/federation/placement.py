"""Placement: where should a submitted transformation run? (pure)

Run a transformation where its inputs already are. Each candidate (this node, and every
peer that grants us ``jobs:submit`` and runs the jobless role) is scored by the cost of
running there, in bytes::

    cost = bytes of the inputs it lacks            (they would have to be transferred)
         + load * policy.load_cost                 (load: running jobs / capacity)
         + policy.forward_cost  if it is a peer    (a forwarded job costs a round trip)

and the cheapest wins; ties go to this node, then to the less loaded, then by node id, so
the answer is deterministic.

Loops: a job carries the list of nodes that already forwarded it (``hops``, the original
submitter first). A node that finds itself in that list refuses the job; candidates in
the list are never chosen; after ``policy.max_hops`` forwards the job runs locally or
nowhere. When forwarding, the job's hops become ``hops + [self]`` (see ``next_hops``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

MiB = 1024 * 1024


@dataclass(frozen=True)
class Candidate:
    node_id: str
    local: bool
    held: frozenset[str] = frozenset()  # input checksums this candidate holds
    load: float = 0.0  # running jobs / capacity; 1.0 = every slot busy
    accepts: bool = True  # runs jobless (and, for a peer, grants us jobs:submit)


@dataclass(frozen=True)
class PlacementPolicy:
    forward_cost: int = 1 * MiB
    load_cost: int = 64 * MiB
    max_hops: int = 3


@dataclass(frozen=True)
class Placement:
    target: str | None  # node id to run on; None: nowhere
    local: bool
    reason: str
    costs: tuple[tuple[str, float], ...] = field(default=())  # (node id, cost), cheapest first

    @property
    def forward(self) -> bool:
        return self.target is not None and not self.local


def cost(candidate: Candidate, inputs: Mapping[str, int], policy: PlacementPolicy) -> float:
    missing = sum(size for cs, size in inputs.items() if cs not in candidate.held)
    value = float(missing) + max(candidate.load, 0.0) * policy.load_cost
    if not candidate.local:
        value += policy.forward_cost
    return value


def place(
    inputs: Mapping[str, int],
    candidates: Sequence[Candidate],
    *,
    self_id: str,
    hops: Sequence[str] = (),
    policy: PlacementPolicy = PlacementPolicy(),
) -> Placement:
    """Choose where to run a transformation whose inputs are *inputs* (checksum -> size)."""
    if self_id in hops:
        return Placement(None, False, f"loop: this node ({self_id}) already forwarded this job")
    seen: set[str] = set()
    eligible: list[Candidate] = []
    for c in candidates:
        if c.node_id in seen or not c.accepts:
            continue
        if not c.local:
            if c.node_id in hops or c.node_id == self_id:
                continue  # never send a job back along its path
            if len(hops) >= policy.max_hops:
                continue
        seen.add(c.node_id)
        eligible.append(c)
    if not eligible:
        if len(hops) >= policy.max_hops:
            return Placement(
                None, False, f"the job was forwarded {len(hops)} times (limit {policy.max_hops})"
            )
        return Placement(None, False, "no node here or among the peers can run it")
    scored = sorted(
        ((cost(c, inputs, policy), not c.local, c.load, c.node_id, c) for c in eligible),
        key=lambda t: t[:4],
    )
    best = scored[0][4]
    costs = tuple((t[3], t[0]) for t in scored)
    held = sum(size for cs, size in inputs.items() if cs in best.held)
    total = sum(inputs.values())
    where = "local" if best.local else f"peer {best.node_id}"
    reason = f"{where}: holds {held} of {total} input bytes, load {best.load:g}"
    return Placement(best.node_id, best.local, reason, costs)


def next_hops(hops: Sequence[str], self_id: str) -> list[str]:
    """The hops list a forwarded job carries."""
    return [*hops, self_id]

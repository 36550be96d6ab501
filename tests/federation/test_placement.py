"""Placement: pure scoring by input bytes held and load; never in a loop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node.federation.placement import Candidate, MiB, PlacementPolicy, next_hops, place
from tests.strategies import node_ids, placement_inputs

A, B, C = "a" * 52, "b" * 52, "c" * 52
BIG, SMALL = "1" * 64, "2" * 64
INPUTS = {BIG: 50 * MiB, SMALL: 100}


def test_runs_where_the_big_input_is():
    p = place(
        INPUTS, [Candidate(A, True, frozenset({SMALL})), Candidate(B, False, frozenset({BIG}))], self_id=A
    )
    assert p.target == B and p.forward
    assert p.costs[0][0] == B


def test_local_when_inputs_are_everywhere_or_small():
    everywhere = frozenset(INPUTS)
    p = place(INPUTS, [Candidate(B, False, everywhere), Candidate(A, True, everywhere)], self_id=A)
    assert p.target == A and p.local and not p.forward
    p = place({SMALL: 100}, [Candidate(A, True), Candidate(B, False, frozenset({SMALL}))], self_id=A)
    assert p.local  # 100 bytes are cheaper to fetch than a forward


def test_load_counts():
    both = frozenset(INPUTS)
    p = place(INPUTS, [Candidate(A, True, both, load=1.0), Candidate(B, False, both, load=0.0)], self_id=A)
    assert p.target == B
    policy = PlacementPolicy(load_cost=0)
    p = place(
        INPUTS, [Candidate(A, True, both, load=1.0), Candidate(B, False, both)], self_id=A, policy=policy
    )
    assert p.target == A


def test_refusing_candidates_and_no_candidate():
    p = place(
        INPUTS,
        [Candidate(A, True, accepts=False), Candidate(B, False, frozenset({BIG}), accepts=False)],
        self_id=A,
    )
    assert p.target is None and "no node" in p.reason


def test_loops_are_impossible():
    cands = [
        Candidate(A, True),
        Candidate(B, False, frozenset(INPUTS)),
        Candidate(C, False, frozenset({BIG})),
    ]
    # B forwarded to us (A): never back to B; C is next best
    p = place(INPUTS, cands, self_id=A, hops=[B])
    assert p.target == C
    assert place(INPUTS, cands, self_id=A, hops=[A]).target is None  # we forwarded it before
    p = place(INPUTS, cands, self_id=A, hops=[B, C, "d" * 52])
    assert p.target == A and p.local  # hop limit: local only
    p = place(INPUTS, [Candidate(A, True, accepts=False), *cands[1:]], self_id=A, hops=[B, C, "d" * 52])
    assert p.target is None and "limit" in p.reason
    assert next_hops([B], A) == [B, A]


@given(
    placement_inputs,
    st.lists(
        st.tuples(node_ids.filter(lambda n: n != A), st.booleans(), st.floats(0, 4), st.booleans()),
        max_size=6,
        unique_by=lambda t: t[0],
    ),
    st.lists(node_ids, max_size=4),
)
@settings(max_examples=200)
def test_properties(inputs, raw, hops):
    cands = [Candidate(A, True, frozenset(list(inputs)[:1]))]
    for node, holds, load, accepts in raw:
        cands.append(Candidate(node, False, frozenset(inputs) if holds else frozenset(), load, accepts))
    p = place(inputs, cands, self_id=A, hops=hops)
    if A in hops:
        assert p.target is None
        return
    assert p.target is not None  # the local candidate always accepts here
    assert p.target not in hops
    chosen = next(c for c in cands if c.node_id == p.target)
    assert chosen.accepts
    # deterministic, and nobody eligible is strictly cheaper
    assert place(inputs, list(reversed(cands)), self_id=A, hops=hops).target == p.target
    assert p.costs[0][1] == min(c for _, c in p.costs)

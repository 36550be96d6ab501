"""Result lookups across peers, answered with signed claims (security.md rule 6).

Asking (``ResultLookup.lookup``), for a transformation checksum:

1. the node's own result database (when the database role runs);
2. stored claims whose signer holds ``results:write`` trust here *now* (a link this node
   signed) and whose key is not revoked (by us, or on the signer's published revocation
   list: security.md rule 6);
3. every peer that grants this node ``results:read`` (a link the peer signed) *and* holds
   ``results:write`` trust here, asked concurrently. Each answer must be a claim signed
   by that very peer, about that very transformation, with a key of the peer valid at
   the claim's time; it is stored (with its signer) and answers.

A result mapping cannot be verified by hashing: a claim is only as good as its signer.
So a claim answers as a result (``/database``, ``/api/v1/database/*``, the job service's
lookup) only when this node trusts its signer for results; a peer without that trust is
not even asked, and its claims are never served, not even for one request.

Answering (``answer``): results from the node's own database only (never relayed claims:
trust is not transitive), each signed now by this node.

Receiving (``accept_pushed``): claims a peer holding ``results:write`` pushes (e.g. the
result of a job it ran for us), each verified as signed by that peer, then stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import trio

from ..metrics import Metrics
from ..store.mapping_requests import Query
from .claims import Claim, ClaimStatus, ClaimStore, make_claim, parse_claim, verify_claim
from .peers import PeerClient

log = logging.getLogger("seamless_node.federation")


@dataclass(frozen=True)
class ResultAnswer:
    transformation: str
    result: str
    source: str  # "local", "claim" (stored) or "peer"
    #: the peer that signed the claim (trusted here for results), None for "local"
    signer: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "transformation": self.transformation,
            "result": self.result,
            "source": self.source,
            "signer": self.signer,
        }


class ResultLookup:
    def __init__(
        self,
        watcher: Any,
        claims: ClaimStore,
        client: PeerClient,
        mappings: Callable[[], Any],
        metrics: Metrics,
        *,
        clock: Callable[[], int],
        timeout: float,
        max_skew: int = 60,
        batch: int = 1000,
    ) -> None:
        self.watcher = watcher
        #: checksums per lookup request to a peer (its own limit is database.max_batch_count)
        self.batch = batch
        self.claims = claims
        self.client = client
        self.mappings = mappings
        self.metrics = metrics
        self.clock = clock
        self.timeout = timeout
        self.max_skew = max_skew
        metrics.describe(
            "seamless_node_federation_claims_total", "result claims from peers, by peer and outcome"
        )

    def trusted(self, signer: str) -> bool:
        return bool(self.watcher.registry.incoming(signer, "results:write", self.clock()).allowed)

    def check(self, claim: Claim, **expected: Any) -> ClaimStatus:
        registry = self.watcher.registry
        return verify_claim(
            claim,
            signer_keys=registry.keyset(claim.signer),
            now=self.clock(),
            revoked_keys=registry.revoked_keys_of(claim.signer),
            max_skew=self.max_skew,
            **expected,
        )

    async def local(self, transformations: list[str]) -> list[str | None]:
        mappings = self.mappings()
        if mappings is None:
            return [None] * len(transformations)
        return list(await mappings.read_many([Query("transformation", tf) for tf in transformations]))

    async def stored(self, transformations: list[str]) -> list[ResultAnswer | None]:
        """Stored claims by a signer trusted for results, in one thread hop."""

        def read() -> list[list[Claim]]:
            return [self.claims.get(tf) for tf in transformations]

        found: list[ResultAnswer | None] = []
        for transformation, claims in zip(transformations, await trio.to_thread.run_sync(read), strict=True):
            valid = (c for c in claims if self.trusted(c.signer) and self.check(c) is ClaimStatus.VALID)
            claim = next(valid, None)
            if claim is None:
                found.append(None)
            else:
                found.append(ResultAnswer(transformation, claim.result, "claim", claim.signer))
        return found

    async def lookup(self, transformation: str, *, include_local: bool = True) -> ResultAnswer | None:
        (answer,) = await self.lookup_many([transformation], include_local=include_local)
        return answer

    async def lookup_many(
        self, transformations: list[str], *, include_local: bool = True
    ) -> list[ResultAnswer | None]:
        """The answers for many transformations: each peer is asked once, for all of those
        not known here (in batches of at most ``batch`` checksums)."""
        answers: list[ResultAnswer | None] = [None] * len(transformations)
        if include_local:
            for i, result in enumerate(await self.local(transformations)):
                if result is not None:
                    answers[i] = ResultAnswer(transformations[i], result, "local")
        missing = [i for i, a in enumerate(answers) if a is None]
        for i, found in zip(missing, await self.stored([transformations[i] for i in missing]), strict=True):
            answers[i] = found
        missing = [i for i, a in enumerate(answers) if a is None]
        if not missing:
            return answers
        # only peers trusted here for results: another peer's claim is never a result
        granting = self.watcher.registry.granting_us("results:read", self.clock())
        peers = [p for p in granting if self.trusted(p)]
        asked = [transformations[i] for i in missing]
        got: dict[str, dict[str, Claim]] = {}  # transformation -> peer -> claim

        async def ask(peer: str, batch: list[str]) -> None:
            label = self.watcher.registry.peers[peer].label
            with trio.move_on_after(self.timeout):
                try:
                    docs = await self.client.lookup_results(peer, batch)
                except Exception as exc:
                    log.info("result lookup at %s failed: %s", label, exc)
                    self.metrics.inc("seamless_node_federation_claims_total", peer=label, outcome="error")
                    return
                for transformation, doc in zip(batch, docs, strict=True):
                    if doc is None:
                        continue
                    try:
                        claim = parse_claim(doc)
                    except ValueError:
                        status = "malformed"
                    else:
                        status = self.check(
                            claim, expected_signer=peer, expected_transformation=transformation
                        ).value
                    self.metrics.inc("seamless_node_federation_claims_total", peer=label, outcome=status)
                    if status == ClaimStatus.VALID.value:
                        got.setdefault(transformation, {})[peer] = claim
                    else:
                        log.warning("claim from %s refused: %s", label, status)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                for start in range(0, len(asked), self.batch):
                    nursery.start_soon(ask, peer, asked[start : start + self.batch])
        # trust is checked again: a link may have lapsed while the peers answered
        to_store: list[Claim] = []
        for i in missing:
            claims = got.get(transformations[i], {})
            trusted = [claims[p] for p in peers if p in claims and self.trusted(p)]  # stable order
            if trusted:
                to_store.extend(trusted)
                claim = trusted[0]
                answers[i] = ResultAnswer(transformations[i], claim.result, "peer", claim.signer)
        if to_store:
            await trio.to_thread.run_sync(self.claims.put, to_store)
        return answers

    async def answer(self, transformations: list[str]) -> list[dict[str, Any] | None]:
        """Signed claims for the results in our own database (for /federation/results/lookup)."""
        results = await self.local(transformations)
        identity, now = self.watcher.identity, self.clock()
        return [
            None if result is None else make_claim(identity, tf, result, now).to_document()
            for tf, result in zip(transformations, results, strict=True)
        ]

    async def accept_pushed(self, origin: str, docs: list[Any]) -> list[str]:
        """Store the valid claims *origin* signed; one status per claim."""
        statuses, good = [], []
        for doc in docs:
            try:
                claim = parse_claim(doc)
            except ValueError:
                statuses.append("malformed")
                continue
            status = self.check(claim, expected_signer=origin)
            statuses.append(status.value)
            if status is ClaimStatus.VALID:
                good.append(claim)
        if good:
            await trio.to_thread.run_sync(self.claims.put, good)
        return statuses

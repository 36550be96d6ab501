"""The Gate: every request under ``/federation/`` passes it before any work is done.

Order of checks (each failure ends the request; no work, no process, nothing stored):

1. **401** the signature headers (signing.verify_request: known peer, key of that peer
   valid now and not revoked (by us, or on the peer's own published revocation list),
   destination is this node, body hash, signature, timestamp within ``max_clock_skew``).
   When a configured peer presents a key we do not know yet (first contact, or it
   rotated), its key set is taken from the ``X-Seamless-Key-Set``
   header the peer sends on a retry (peers.PeerClient does), else fetched from its
   ``/federation/keys`` (rate-limited); either is self-certifying and must extend the key
   set already known. Then the request is checked again.
2. **401** the nonce: recorded in the persistent NonceStore; seen before -> replay.
3. **403** the capability: a valid link *this node* signed must grant it to the origin.
4. **429** the grant's limits: ``max_concurrent`` requests in flight, ``max_per_minute``.

Refusals answer JSON ``{"error": <reason>, "detail": ...}`` with the reason also in the
``X-Seamless-Refusal`` header, and count in ``seamless_node_federation_refused_total``
by peer and reason (the peer label is "unknown" for nodes that are not configured peers,
so that nobody can grow the metrics by inventing node ids).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from ..errors import NodeError
from ..metrics import Metrics
from .canonical import b64decode
from .canonical import now as wall_clock
from .identity import IdentityError, KeySet
from .peers import KEYSET_HEADER
from .registry import Grant
from .replay import NonceStore
from .signing import Reason, Verdict, verify_request

log = logging.getLogger("seamless_node.federation")

KEY_REFRESH_INTERVAL = 10.0
MAX_PUSHED_KEYSET = 64 * 1024


class Refusal(NodeError):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.http_status = status
        self.reason = reason
        self.detail = detail


@dataclass
class Admission:
    """An admitted request; ``release`` frees its concurrency slot (idempotent)."""

    origin: str
    label: str
    grant: Grant | None
    on_behalf_of: str
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


class Gate:
    def __init__(
        self,
        watcher: Any,
        nonces: NonceStore,
        metrics: Metrics,
        *,
        fetch_keys: Callable[[str], Any] | None = None,
        max_skew: int = 60,
        clock: Callable[[], int] = wall_clock,
    ) -> None:
        self.watcher = watcher
        self.nonces = nonces
        self.metrics = metrics
        self.fetch_keys = fetch_keys
        self.max_skew = max_skew
        self.clock = clock
        self._nonce_limiter = trio.CapacityLimiter(1)
        self._in_flight: dict[tuple[str, str], int] = {}
        self._recent: dict[tuple[str, str], deque[float]] = {}
        self._key_fetched: dict[tuple[str, bytes], float] = {}
        self._key_tokens: dict[str, tuple[float, float]] = {}
        #: last authenticated request from each peer (wall clock)
        self.last_seen: dict[str, int] = {}
        metrics.describe(
            "seamless_node_federation_refused_total", "signed requests refused, by peer and reason"
        )
        metrics.describe("seamless_node_federation_requests_total", "signed requests admitted, by peer")

    def label(self, origin: str | None) -> str:
        peers = self.watcher.registry.peers
        return peers[origin].label if origin in peers else "unknown"

    def refuse(self, status: int, reason: str, detail: str, origin: str | None) -> Refusal:
        self.metrics.inc("seamless_node_federation_refused_total", peer=self.label(origin), reason=reason)
        log.info(
            "federation request from %s refused (%d %s): %s", (origin or "?")[:12], status, reason, detail
        )
        return Refusal(status, reason, detail)

    def _verify(self, method: str, target: str, headers: Any, body_sha256: str | None) -> Verdict:
        registry = self.watcher.registry
        return verify_request(
            method=method,
            target=target,
            headers=headers,
            body_sha256=body_sha256,
            self_id=registry.self_id,
            keysets=registry.keysets,
            revoked_keys=registry.all_revoked_keys(),
            now=self.clock(),
            max_skew=self.max_skew,
        )

    def _learn_pushed(self, origin: str, pushed: str | None) -> bool:
        """Adopt the key set a configured peer sent along (self-certifying: it must hash to
        the origin's node id and, if we know one already, extend it)."""
        if not pushed or len(pushed) > MAX_PUSHED_KEYSET or origin not in self.watcher.registry.peers:
            return False
        try:
            keyset = KeySet.from_document(json.loads(b64decode(pushed)), node_id=origin)
        except (ValueError, IdentityError, RecursionError):
            return False
        return bool(self.watcher.learn(keyset))

    async def _refresh_keys(self, origin: str, key: bytes) -> bool:
        """Fetch a configured peer's key set when it presents a key we do not know: at most
        once per KEY_REFRESH_INTERVAL for each key, and per peer from a small token bucket
        (a burst of 3, one more every KEY_REFRESH_INTERVAL), so that requests forged in a
        peer's name with made-up keys cannot turn this node into a request amplifier."""
        if self.fetch_keys is None or origin not in self.watcher.registry.peers:
            return False
        now = trio.current_time()
        if now - self._key_fetched.get((origin, key), float("-inf")) < KEY_REFRESH_INTERVAL:
            return False
        tokens, stamp = self._key_tokens.get(origin, (3.0, now))
        tokens = min(3.0, tokens + (now - stamp) / KEY_REFRESH_INTERVAL)
        if tokens < 1.0:
            return False
        self._key_tokens[origin] = (tokens - 1.0, now)
        self._key_fetched[(origin, key)] = now
        with trio.move_on_after(5):
            try:
                keyset = await self.fetch_keys(origin)
            except Exception as exc:
                log.info("could not fetch the keys of %s: %s", origin[:12], exc)
                return False
            return bool(self.watcher.learn(keyset))
        return False

    async def admit(
        self,
        *,
        method: str,
        target: str,
        headers: Any,
        body_sha256: str | None,
        capability: str | None,
    ) -> Admission:
        """Authenticate, check replay, authorize and apply limits; Refusal otherwise."""
        origin, on_behalf_of = await self._authenticate(method, target, headers, body_sha256)
        label = self.label(origin)
        grant = None
        release = None
        if capability is not None:
            decision = self.watcher.registry.incoming(origin, capability, self.clock())
            if decision.grant is None:
                raise self.refuse(403, "not-granted", decision.reason, origin)
            grant = decision.grant
            release = self._apply_limits(origin, capability, grant)
        self.metrics.inc(
            "seamless_node_federation_requests_total", peer=label, capability=capability or "none"
        )
        return Admission(origin, label, grant, on_behalf_of, release)

    async def admit_job(self, *, method: str, target: str, headers: Any) -> Admission:
        """Admit a job sent by a peer, for itself or forwarded on behalf of another node.

        Nothing is transitive (security.md rule 8): the submitter (``X-Seamless-On-Behalf-Of``,
        else the origin) needs ``jobs:submit`` from this node, and an origin forwarding for
        another node needs ``forward`` from this node too; the limits of both grants apply
        (``jobs:submit`` limits count the submitter's jobs, whoever forwards them)."""
        origin, on_behalf_of = await self._authenticate(method, target, headers, None)
        registry, now = self.watcher.registry, self.clock()
        submitter = on_behalf_of or origin
        decision = registry.incoming(submitter, "jobs:submit", now)
        if decision.grant is None:
            raise self.refuse(403, "not-granted", decision.reason, origin)
        releases: list[Callable[[], None]] = []
        if submitter != origin:
            forward = registry.incoming(origin, "forward", now)
            if forward.grant is None:
                raise self.refuse(403, "not-granted", forward.reason, origin)
            releases.append(self._apply_limits(origin, "forward", forward.grant))
        try:
            releases.append(self._apply_limits(submitter, "jobs:submit", decision.grant))
        except Refusal:
            for release in releases:
                release()
            raise
        label = self.label(origin)
        self.metrics.inc("seamless_node_federation_requests_total", peer=label, capability="jobs:submit")

        def release_all() -> None:
            for release in releases:
                release()

        return Admission(origin, label, decision.grant, submitter, release_all)

    async def _authenticate(
        self, method: str, target: str, headers: Any, body_sha256: str | None
    ) -> tuple[str, str]:
        """Signature and nonce checks (401 otherwise): (origin, on_behalf_of)."""
        await self.watcher.refresh()
        verdict = self._verify(method, target, headers, body_sha256)
        if verdict.reason in (Reason.UNKNOWN_ORIGIN, Reason.UNKNOWN_KEY) and verdict.request is not None:
            claimed = verdict.request.origin
            if self._learn_pushed(claimed, headers.get(KEYSET_HEADER)) or await self._refresh_keys(
                claimed, verdict.request.key
            ):
                verdict = self._verify(method, target, headers, body_sha256)
        origin = verdict.request.origin if verdict.request is not None else None
        if not verdict.ok:
            raise self.refuse(401, verdict.reason.value, verdict.detail, origin)
        request = verdict.request
        assert request is not None and origin is not None
        fresh = await trio.to_thread.run_sync(
            self.nonces.record,
            origin,
            request.nonce,
            request.timestamp,
            self.clock(),
            limiter=self._nonce_limiter,
        )
        if not fresh:
            raise self.refuse(401, Reason.REPLAY.value, "this request was seen before", origin)
        self.last_seen[origin] = self.clock()
        return origin, request.on_behalf_of

    def _apply_limits(self, origin: str, capability: str, grant: Grant) -> Callable[[], None]:
        key = (origin, capability)
        per_minute = grant.limits.get("max_per_minute")
        if per_minute is not None:
            now = trio.current_time()
            recent = self._recent.setdefault(key, deque())
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= per_minute:
                raise self.refuse(
                    429, "over-limit", f"{capability}: at most {per_minute} requests a minute", origin
                )
            recent.append(now)
        concurrent = grant.limits.get("max_concurrent")
        if concurrent is not None and self._in_flight.get(key, 0) >= concurrent:
            raise self.refuse(
                429, "over-limit", f"{capability}: at most {concurrent} requests at a time", origin
            )
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

        def release() -> None:
            self._in_flight[key] -= 1

        return release

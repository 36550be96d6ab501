"""FederationService: the node's side of federation, built once per node.

It ties the parts together (files.RegistryWatcher for what is trusted, gate.Gate for
incoming requests, peers.PeerClient for outgoing ones, locate/fetch for buffers,
results.ResultLookup for results, revocation_sync for revocation lists) and runs two
background tasks: the prober, which pings every peer each ``probe_interval`` seconds
(reachable?, do they accept us?) and saves what it saw to
``<data_dir>/federation/peers-state.json`` for ``seamless-node peers``, and the fetcher of
peers' revocation lists (every ``revocations_interval`` seconds, and on a peer's 403).

Enabled when ``federation.enabled`` is true, or auto and the key file exists.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import trio

from ..atomic_file import write_atomic
from ..tls import client_context
from .canonical import now as wall_clock
from .claims import ClaimStore
from .executing import JobReceiver
from .fetch import BufferFetcher, PeerSource
from .files import RegistryWatcher
from .gate import Gate
from .locate import BadSources, Locator, PresenceCache, Source
from .peers import PeerClient, PeerError, PeerRefused
from .replay import NonceStore
from .results import ResultAnswer, ResultLookup
from .revocation_sync import Publisher, RevocationSync

if TYPE_CHECKING:
    from ..roles.base import NodeContext

log = logging.getLogger("seamless_node.federation")


def federation_enabled(config: Any) -> bool:
    mode = config.federation.enabled
    return mode == "true" or (mode == "auto" and os.path.exists(config.key_file))


@dataclass
class PeerStatus:
    reachable: bool | None = None  # None: not probed yet
    accepts_us: bool | None = None
    last_seen: int | None = None  # last successful exchange, either direction
    last_checked: int | None = None
    error: str = ""


class FederationService:
    def __init__(self, context: "NodeContext", *, clock: Any = wall_clock) -> None:
        config = context.config
        cfg = config.federation
        self.context = context
        self.clock = clock
        self.watcher = RegistryWatcher(config)
        fed_dir = config.federation_directory
        self.state_path = os.path.join(fed_dir, "peers-state.json")
        skew = int(cfg.max_clock_skew)
        self.nonces = NonceStore(os.path.join(fed_dir, "nonces.db"), window=skew)
        self.claims = ClaimStore(os.path.join(fed_dir, "claims.db"))
        self.client = PeerClient(
            self.watcher, timeout=float(cfg.request_timeout), clock=clock, tls=client_context(cfg.ca_file)
        )
        metrics = context.metrics
        self.publisher = Publisher(
            self.watcher, os.path.join(fed_dir, "revocations-published.json"), clock=clock
        )
        self.revocations = RevocationSync(
            self.watcher,
            self.client,
            metrics,
            os.path.join(fed_dir, "peer-revocations"),
            clock=clock,
            interval=float(cfg.revocations_interval),
            timeout=float(cfg.request_timeout),
            max_skew=skew,
        )
        self.client.on_refused = self.revocations.refused
        self.gate = Gate(
            self.watcher, self.nonces, metrics, fetch_keys=self.client.keys, max_skew=skew, clock=clock
        )
        self.locator = Locator(
            PresenceCache(float(cfg.presence_ttl), float(cfg.absence_ttl)),
            BadSources(float(cfg.bad_peer_cooldown)),
            timeout=float(cfg.request_timeout),
        )
        self.fetcher = BufferFetcher(
            context.buffers,
            self.locator,
            self.buffer_sources,
            metrics,
            max_size=int(config.buffers.max_buffer_size),
            idle_timeout=float(cfg.fetch_idle_timeout),
            min_rate=float(cfg.fetch_min_rate),
            grace=float(cfg.fetch_grace),
            label=self.label,
        )
        self.results = ResultLookup(
            self.watcher,
            self.claims,
            self.client,
            lambda: context.mappings,
            metrics,
            clock=clock,
            timeout=float(cfg.request_timeout),
            max_skew=skew,
        )
        self.status: dict[str, PeerStatus] = {}
        self._sources: dict[str, PeerSource] = {}
        #: jobs peers send here (its job service is attached by the jobless role)
        self.receiver = JobReceiver(self)
        #: this node's job load for its ping answer (set by the jobless role)
        self.job_load: Callable[[], float] | None = None
        #: peer -> (trio time, its job load or None when it runs no jobs), from its pings
        self.peer_loads: dict[str, tuple[float, float | None]] = {}
        metrics.describe("seamless_node_federation_jobs_forwarded_total", "jobs forwarded to peers")
        self.metrics = metrics
        metrics.describe("seamless_node_federation_bytes_served_total", "buffer bytes served to peers")
        for peer in self.registry.peers.values():
            metrics.inc("seamless_node_federation_bytes_fetched_total", 0, peer=peer.label)
            metrics.inc("seamless_node_federation_jobs_forwarded_total", 0, peer=peer.label)
        self._load_state()

    @property
    def registry(self) -> Any:
        return self.watcher.registry

    @property
    def node_id(self) -> str:
        return str(self.watcher.identity.node_id)

    def label(self, node_id: str) -> str:
        entry = self.registry.peers.get(node_id)
        return entry.label if entry is not None else node_id[:12]

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        await trio.to_thread.run_sync(self.nonces.open)
        await trio.to_thread.run_sync(self.claims.open)
        await trio.to_thread.run_sync(self.revocations.load)
        self.fetcher.nursery = nursery
        self.revocations.nursery = nursery
        nursery.start_soon(self._prober)
        nursery.start_soon(self.revocations.run)
        log.info("federation: node %s, %d peer(s)", self.node_id, len(self.registry.peers))

    async def aclose(self) -> None:
        self.fetcher.nursery = None
        self.revocations.nursery = None
        await self.client.aclose()
        self._save_state()
        self.nonces.close()
        self.claims.close()

    # -- buffers ---------------------------------------------------------------------

    def peer_source(self, peer: str) -> PeerSource:
        source = self._sources.get(peer)
        if source is None:
            source = self._sources[peer] = PeerSource(
                self.client, peer, timeout=float(self.context.config.federation.request_timeout)
            )
        return source

    def buffer_sources(self) -> list[Source]:
        """Peers that grant us buffers:read and that we fetch from, in configuration order."""
        now = self.clock()
        sources: list[Source] = []
        for peer, entry in self.registry.peers.items():
            if not entry.fetch_buffers or not self.registry.outgoing(peer, "buffers:read", now).allowed:
                continue
            sources.append(self.peer_source(peer))
        return sources

    async def fetch_missing(self, checksum: str) -> bool:
        """The hook behind NodeContext.fetch_missing (see fetch.BufferFetcher)."""
        await self.watcher.refresh()
        if not self.buffer_sources():
            return False
        return await self.fetcher.fetch_missing(checksum)

    # -- results ---------------------------------------------------------------------

    async def lookup_result(self, transformation: str, *, include_local: bool = True) -> ResultAnswer | None:
        (answer,) = await self.lookup_results([transformation], include_local=include_local)
        return answer

    async def lookup_results(
        self, transformations: list[str], *, include_local: bool = True
    ) -> list[ResultAnswer | None]:
        """Many lookups at once: each peer is asked once for all of them."""
        await self.watcher.refresh()
        if not self.context.config.federation.lookup_results:
            return [None] * len(transformations)
        return await self.results.lookup_many(transformations, include_local=include_local)

    # -- jobs ------------------------------------------------------------------------

    def attach_jobs(self, jobs: Any, load: Callable[[], float]) -> None:
        """Called by the jobless role: run jobs peers send, forward jobs to peers."""
        from .forwarding import JobForwarder

        self.receiver.jobs = jobs
        self.job_load = load
        jobs.forwarder = JobForwarder(self, load)

    def ping_answer(self) -> dict[str, Any]:
        load = self.job_load
        return {
            "node_id": self.node_id,
            "time": self.clock(),
            "jobs": None if load is None else {"load": round(float(load()), 4)},
        }

    def _note_ping(self, peer: str, answer: Any) -> None:
        jobs = answer.get("jobs") if isinstance(answer, dict) else None
        load = jobs.get("load") if isinstance(jobs, dict) else None
        ok = isinstance(load, (int, float)) and not isinstance(load, bool) and load >= 0
        self.peer_loads[peer] = (trio.current_time(), float(load) if ok else None)

    async def peer_job_load(self, peer: str) -> float | None:
        """A peer's job load (running / slots) as it last said, asked again when older than
        ``peer_status_ttl``; None when it runs no jobs or cannot be reached."""
        cfg = self.context.config.federation
        seen = self.peer_loads.get(peer)
        if seen is not None and trio.current_time() - seen[0] <= float(cfg.peer_status_ttl):
            return seen[1]
        with trio.move_on_after(float(cfg.request_timeout)):
            try:
                self._note_ping(peer, await self.client.ping(peer))
                self.seen(peer)
            except PeerError as exc:
                log.info("%s cannot take jobs now: %s", self.label(peer), exc)
                self.peer_loads[peer] = (trio.current_time(), None)
        seen = self.peer_loads.get(peer)
        return seen[1] if seen is not None else None

    # -- peers -----------------------------------------------------------------------

    def seen(self, peer: str) -> None:
        self.status.setdefault(peer, PeerStatus()).last_seen = self.clock()

    async def probe(self, peer: str) -> PeerStatus:
        status = self.status.setdefault(peer, PeerStatus())
        before = (status.reachable, status.accepts_us)
        status.last_checked = self.clock()
        try:
            if self.registry.keyset(peer) is None:
                self.watcher.learn(await self.client.keys(peer))
            self._note_ping(peer, await self.client.ping(peer))
        except PeerRefused as exc:
            status.reachable, status.accepts_us, status.error = True, False, str(exc)
        except PeerError as exc:
            status.reachable, status.accepts_us, status.error = False, None, str(exc)
        else:
            status.reachable, status.accepts_us, status.error = True, True, ""
            status.last_seen = self.clock()
        if (status.reachable, status.accepts_us) != before:
            self._log_link(peer, status)
        return status

    def _log_link(self, peer: str, status: PeerStatus) -> None:
        """One line when a peer's link changes: up, refusing us, or unreachable."""
        label = self.label(peer)
        state = "up" if status.reachable and status.accepts_us else "refused" if status.reachable else "down"
        fields = {"fields": {"event": "peer-link", "peer": label, "link": state, "error": status.error}}
        if state == "up":
            log.info("peer %s: link up", label, extra=fields)
        else:
            log.warning("peer %s: link %s: %s", label, state, status.error, extra=fields)

    async def _prober(self) -> None:
        interval = float(self.context.config.federation.probe_interval)
        while True:
            await self.watcher.refresh()
            async with trio.open_nursery() as nursery:
                for peer in list(self.registry.peers):
                    nursery.start_soon(self._probe_quietly, peer)
            await trio.to_thread.run_sync(self._save_state)
            await trio.sleep(interval)

    async def _probe_quietly(self, peer: str) -> None:
        with trio.move_on_after(float(self.context.config.federation.request_timeout) + 1):
            try:
                await self.probe(peer)
            except Exception as exc:  # never let one peer stop the prober
                log.warning("probe of %s failed: %s", self.label(peer), exc)

    def report(self) -> list[dict[str, Any]]:
        """Every peer: identity, reachability, grants both ways, last seen (for /api/v1/peers)."""
        now = self.clock()
        out = []
        for peer, entry in self.registry.peers.items():
            status = self.status.get(peer, PeerStatus())
            incoming = self.gate.last_seen.get(peer)
            last_seen = max(filter(None, (status.last_seen, incoming)), default=None)
            mark = self.locator.bad.marks.get(peer)
            out.append(
                {
                    "node_id": peer,
                    "name": entry.name,
                    "urls": list(self.registry.endpoints(peer, now)),
                    "keys_known": self.registry.keyset(peer) is not None,
                    "reachable": status.reachable,
                    "accepts_us": status.accepts_us,
                    "last_seen": last_seen,
                    "last_checked": status.last_checked,
                    "error": status.error,
                    "fetch_buffers": entry.fetch_buffers,
                    "marked_bad": None if mark is None or mark.until <= trio.current_time() else mark.reason,
                    "jobs_forwarded": int(
                        self.metrics.value("seamless_node_federation_jobs_forwarded_total", peer=entry.label)
                    ),
                    "jobs_received": int(
                        self.metrics.value("seamless_node_federation_jobs_received_total", peer=entry.label)
                    ),
                    "revocations": self.revocations.report(peer),
                    "job_load": (self.peer_loads.get(peer) or (0.0, None))[1],
                    **self.registry.grants_summary(peer, now),
                }
            )
        return out

    # -- state file ------------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            with open(self.state_path, encoding="utf-8") as f:
                saved = json.load(f)
            for peer, values in saved.get("peers", {}).items():
                self.status[peer] = PeerStatus(**values)
        except (OSError, ValueError, TypeError, AttributeError):
            pass

    def _save_state(self) -> None:
        for peer, seen_at in self.gate.last_seen.items():
            status = self.status.setdefault(peer, PeerStatus())
            status.last_seen = max(status.last_seen or 0, seen_at)
        doc = {"node_id": self.node_id, "peers": {p: asdict(s) for p, s in self.status.items()}}
        try:
            write_atomic(self.state_path, json.dumps(doc, indent=2).encode())
        except OSError as exc:
            log.warning("cannot save peer state to %s: %s", self.state_path, exc)

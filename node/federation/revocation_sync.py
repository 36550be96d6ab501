"""Revocation lists over the wire: publishing this node's, fetching and keeping its peers'.

``Publisher`` answers ``GET /federation/revocations``: this node's revocations that concern
its peers (serials of links it issued, its own revoked keys; revocation_list.own_content),
signed by its current key. The version rises whenever that content changes and is kept in
``<data_dir>/federation/revocations-published.json`` (written before the list is served).

``RevocationSync`` fetches the list of every peer that issued links to this node, every
``federation.revocations_interval`` seconds and at once (at most every ``MIN_REFETCH``
seconds per peer) when a peer answers 403. A list that revocation_list.judge accepts takes
effect at once (it is put in the watcher's ``peer_lists``, which the registry consults for
the links that peer issued) and is stored in ``<data_dir>/federation/peer-revocations/
<node id>.json``, so that it holds across a restart. A list that is refused (forged,
rolled back, ...) changes nothing; each fetch counts in
``seamless_node_federation_revocation_fetches_total`` by peer and outcome.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

import trio

from ..atomic_file import write_atomic
from ..metrics import Metrics
from .identity import IdentityError, KeySet, is_node_id
from .peers import PeerClient, PeerError
from .revocation_list import (
    Judgement,
    RevocationList,
    RevocationListError,
    SignedRevocationList,
    check_signature,
    judge,
    next_version,
    own_content,
    parse_revocation_list,
    sign_revocation_list,
    standing,
)

log = logging.getLogger("seamless_node.federation")

FETCHES = "seamless_node_federation_revocation_fetches_total"
#: a peer's 403 triggers a fetch of its list at most this often (seconds)
MIN_REFETCH = 5.0


def write_json_atomically(path: str, doc: Any) -> None:
    write_atomic(path, json.dumps(doc, indent=2, sort_keys=True).encode())


class Publisher:
    """This node's own signed revocation list."""

    def __init__(self, watcher: Any, path: str, *, clock: Callable[[], int]) -> None:
        self.watcher = watcher
        self.path = path
        self.clock = clock
        self._published: RevocationList | None = None
        self._signed: SignedRevocationList | None = None
        self._lock = threading.Lock()

    def _load(self) -> RevocationList | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                body = RevocationList.from_body(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return None
        return body if body.issuer == self.watcher.identity.node_id else None

    def current(self) -> SignedRevocationList:
        """The list to serve now (blocking: writes the state file when the content changed)."""
        with self._lock:
            return self._current()

    def _current(self) -> SignedRevocationList:
        identity, registry = self.watcher.identity, self.watcher.registry
        serials, keys = own_content(
            identity.node_id, identity.keyset, registry.revocations.links, registry.revocations.keys
        )
        if self._published is None:
            self._published = self._load()
        published = self._published
        if published is None or (published.serials, published.keys) != (serials, keys):
            version = next_version(published.list_version if published else None, self.clock())
            published = RevocationList(identity.node_id, version, self.clock(), serials, keys)
            write_json_atomically(self.path, published.to_body())
            self._published, self._signed = published, None
        signed = self._signed
        if signed is None or signed.key != identity.public_key:
            signed = self._signed = sign_revocation_list(published, identity)
        return signed


@dataclass(frozen=True)
class Held:
    """A peer's list as accepted, and when."""

    signed: SignedRevocationList
    fetched_at: int


class RevocationSync:
    def __init__(
        self,
        watcher: Any,
        client: PeerClient,
        metrics: Metrics,
        directory: str,
        *,
        clock: Callable[[], int],
        interval: float,
        timeout: float,
        max_skew: int = 60,
    ) -> None:
        self.watcher = watcher
        self.client = client
        self.metrics = metrics
        self.directory = directory
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self.max_skew = max_skew
        self.held: dict[str, Held] = {}
        self.errors: dict[str, str] = {}
        self.nursery: trio.Nursery | None = None
        self._locks: dict[str, trio.Lock] = {}
        self._attempted: dict[str, float] = {}
        metrics.describe(FETCHES, "peers' revocation lists fetched, by peer and outcome")

    def path(self, peer: str) -> str:
        return os.path.join(self.directory, f"{peer}.json")

    # -- persistence -------------------------------------------------------------------

    def load(self) -> None:
        """The lists accepted before a restart (blocking); in force from now on."""
        for peer, held in load_held(self.directory, self.watcher).items():
            self._adopt(peer, held)

    def _save(self, peer: str, held: Held) -> None:
        doc = {"document": held.signed.to_document(), "fetched_at": held.fetched_at}
        keyset = self.watcher.registry.keyset(peer)
        if keyset is not None:  # to check the list after a restart, also if the peer rotated
            doc["keyset"] = keyset.to_document()
        try:
            write_json_atomically(self.path(peer), doc)
        except OSError as exc:
            log.error("cannot store the revocation list of %s: %s", peer[:12], exc)

    def _adopt(self, peer: str, held: Held) -> None:
        self.held[peer] = held
        self.watcher.peer_lists[peer] = held.signed.body

    # -- fetching ----------------------------------------------------------------------

    def peers_to_ask(self) -> list[str]:
        """Configured peers that issued links to this node (only those lists matter here)."""
        registry = self.watcher.registry
        return [p for p in registry.peers if registry.links_between(p, registry.self_id)]

    def _label(self, peer: str) -> str:
        entry = self.watcher.registry.peers.get(peer)
        return entry.label if entry is not None else peer[:12]

    def _count(self, peer: str, outcome: str) -> None:
        if peer in self.watcher.registry.peers:  # metrics only for configured peers
            self.metrics.inc(FETCHES, peer=self._label(peer), outcome=outcome)

    async def fetch(self, peer: str) -> Judgement | None:
        """Fetch, check and (if accepted) adopt *peer*'s list; None when it failed."""
        lock = self._locks.setdefault(peer, trio.Lock())
        async with lock:
            self._attempted[peer] = trio.current_time()
            if peer not in self.watcher.registry.peers:
                return None
            try:
                doc = await self.client.revocations(peer)
                signed = parse_revocation_list(doc)
            except (PeerError, RevocationListError) as exc:
                self.errors[peer] = str(exc)
                self._count(peer, "error" if isinstance(exc, PeerError) else "malformed")
                log.info("revocation list of %s: %s", self._label(peer), exc)
                return None
            verdict = self._judge(peer, signed)
            if verdict is Judgement.UNKNOWN_KEY:  # perhaps it rotated: learn its keys, once
                try:
                    self.watcher.learn(await self.client.keys(peer))
                except PeerError as exc:
                    log.info("could not fetch the keys of %s: %s", peer[:12], exc)
                verdict = self._judge(peer, signed)
            self._count(peer, verdict.value)
            label = self._label(peer)
            if not verdict.ok:
                self.errors[peer] = f"list refused: {verdict.value}"
                log.warning("revocation list of %s refused: %s", label, verdict.value)
                return verdict
            self.errors.pop(peer, None)
            held = Held(signed, self.clock())
            if verdict is Judgement.ACCEPTED:
                log.info("revocation list of %s: version %d", label, signed.list_version)
            self._adopt(peer, held)
            await trio.to_thread.run_sync(self._save, peer, held)
            return verdict

    def _judge(self, peer: str, signed: SignedRevocationList) -> Judgement:
        registry = self.watcher.registry
        current = self.held.get(peer)
        return judge(
            signed,
            peer=peer,
            peer_keys=registry.keyset(peer),
            held=standing(current.signed if current else None, registry.revocations.keys),
            revoked_keys=registry.revocations.keys,
            now=self.clock(),
            max_skew=self.max_skew,
        )

    async def fetch_quietly(self, peer: str) -> None:
        with trio.move_on_after(self.timeout * 2 + 1):
            try:
                await self.fetch(peer)
            except Exception as exc:  # never let one peer stop the others
                log.warning("fetching the revocation list of %s failed: %s", peer[:12], exc)

    def refused(self, peer: str, status: int, reason: str) -> None:
        """A peer answered us: on 403 (it may have revoked our grant), fetch its list soon."""
        if status != 403 or self.nursery is None or peer not in self.watcher.registry.peers:
            return
        if trio.current_time() - self._attempted.get(peer, float("-inf")) < MIN_REFETCH:
            return
        self._attempted[peer] = trio.current_time()
        self.nursery.start_soon(self.fetch_quietly, peer)

    async def run(self) -> None:
        while True:
            await self.watcher.refresh()
            async with trio.open_nursery() as nursery:
                for peer in self.peers_to_ask():
                    nursery.start_soon(self.fetch_quietly, peer)
            await trio.sleep(self.interval)

    # -- reporting ---------------------------------------------------------------------

    def report(self, peer: str) -> dict[str, Any]:
        return describe(self.held.get(peer), self.watcher.registry, peer, self.errors.get(peer, ""))


def load_held(directory: str, watcher: Any) -> dict[str, Held]:
    """The peers' lists stored in *directory* (blocking). Each must still be that peer's,
    signed by a key of its key set (the stored key set is learned first if it extends the
    one known: the list may be signed with a key the peer rotated to); others are skipped."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return {}
    out: dict[str, Held] = {}
    for name in names:
        peer = name[: -len(".json")]
        if not name.endswith(".json") or not is_node_id(peer):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                saved = json.load(f)
            signed = parse_revocation_list(saved["document"])
            fetched_at = int(saved["fetched_at"])
            if saved.get("keyset") is not None:
                watcher.learn(KeySet.from_document(saved["keyset"], node_id=peer))
            if signed.issuer != peer or check_signature(signed, watcher.registry.keyset(peer)):
                raise ValueError("not signed by a key of that peer")
        except (OSError, ValueError, KeyError, TypeError, RecursionError, IdentityError) as exc:
            log.warning("ignoring the stored revocation list of %s: %s", peer[:12], exc)
            continue
        out[peer] = Held(signed, fetched_at)
    return out


def describe(held: Held | None, registry: Any, peer: str, error: str = "") -> dict[str, Any]:
    """A peer's list for /api/v1/peers and `seamless-node peers`."""
    body = held.signed.body if held is not None else None
    return {
        "version": body.list_version if body else None,
        "issued_at": body.issued_at if body else None,
        "fetched_at": held.fetched_at if held else None,
        "revoked_serials": sorted(body.serials) if body else [],
        "revoked_keys": len(body.keys) if body else 0,
        "revoked_grants": registry.revoked_by_peer(peer),
        "error": error,
    }

"""PeerRegistry: who may do what, from the links this node holds (pure: no I/O).

Two directions, two rules (security.md rule 8):

* **incoming** (a peer asks us): only links *this node* issued count. ``incoming(origin,
  capability, now)`` looks for a valid link issuer=self, subject=origin granting it.
* **outgoing** (we ask a peer): we rely only on links *the peer* issued to us;
  ``outgoing(peer, capability, now)`` and ``granting_us(capability, now)`` answer from
  those. The peer checks its own grants anyway; this side uses them to decide whom to ask.

A peer's published revocation list (revocation_list.py, fetched by revocation_sync.py)
counts for the links *that peer* issued: a serial on its list, or a link signed with a key
on its list, grants nothing from the moment the list is held (``peer_lists`` is shared with
the watcher, so a newly fetched list takes effect at once). It counts for nothing else.

Several valid links may grant the same capability: each is an independent grant (to take
one back, revoke its serial); the one with the highest serial sets the limits.

The registry also keeps the key sets of configured peers (learned from the links they
issued and from their ``/federation/keys``), accepting a newer key set only if it extends
the one already known. Nodes that are not configured peers are unknown: their requests are
refused whatever links exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, MutableMapping

from .identity import KeySet
from .links import LinkStatus, LinkVerdict, Revocations, SignedLink, verify_link
from .revocation_list import RevocationList


@dataclass(frozen=True)
class PeerEntry:
    """A configured peer."""

    node_id: str
    name: str = ""
    urls: tuple[str, ...] = ()
    fetch_buffers: bool = True

    @property
    def label(self) -> str:
        return self.name or self.node_id[:12]


@dataclass(frozen=True)
class Grant:
    issuer: str
    subject: str
    capability: str
    limits: Mapping[str, int]
    serial: int
    not_after: int


@dataclass(frozen=True)
class Decision:
    grant: Grant | None
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.grant is not None


class PeerRegistry:
    def __init__(
        self,
        own: KeySet,
        peers: Mapping[str, PeerEntry],
        links: Iterable[SignedLink],
        revocations: Revocations | None = None,
        keysets: Mapping[str, KeySet] | None = None,
        peer_lists: MutableMapping[str, RevocationList] | None = None,
    ) -> None:
        self.own = own
        self.peers = dict(peers)
        self.revocations = revocations or Revocations()
        #: the revocation list each peer published, as last fetched (shared, not copied)
        self.peer_lists: MutableMapping[str, RevocationList] = {} if peer_lists is None else peer_lists
        self._keysets: dict[str, KeySet] = {}
        for keyset in (keysets or {}).values():
            self.learn_keyset(keyset)
        self.links: list[SignedLink] = []
        self.ignored: list[SignedLink] = []  # links between other nodes
        for signed in links:
            issuer, subject = signed.link.issuer, signed.link.subject
            if (issuer == self.self_id and subject in self.peers) or (
                subject == self.self_id and issuer in self.peers
            ):
                self.links.append(signed)
                if signed.issuer_keys is not None and issuer != self.self_id:
                    self.learn_keyset(signed.issuer_keys)
            else:
                self.ignored.append(signed)

    @property
    def self_id(self) -> str:
        return self.own.node_id

    # -- keys ------------------------------------------------------------------------

    def learn_keyset(self, keyset: KeySet) -> bool:
        """Adopt a (verified) key set of a configured peer if it is new or extends ours."""
        if keyset.node_id not in self.peers:
            return False
        known = self._keysets.get(keyset.node_id)
        if known is None or (keyset.extends(known) and keyset != known):
            self._keysets[keyset.node_id] = keyset
            return True
        return False

    @property
    def keysets(self) -> dict[str, KeySet]:
        """Key sets of the configured peers whose keys we know (for verify_request)."""
        return dict(self._keysets)

    def keyset(self, node_id: str) -> KeySet | None:
        if node_id == self.self_id:
            return self.own
        return self._keysets.get(node_id)

    # -- revocations -----------------------------------------------------------------

    def revocations_for(self, issuer: str) -> Revocations:
        """What counts as revoked for documents *issuer* signed: our own revocations, plus,
        for a peer, the serials and keys on the list it published."""
        published = self.peer_lists.get(issuer) if issuer != self.self_id else None
        if published is None or published.issuer != issuer:
            return self.revocations
        return Revocations(
            self.revocations.links | {(issuer, serial) for serial in published.serials},
            self.revocations.keys | published.keys,
        )

    def revoked_keys_of(self, signer: str) -> frozenset[bytes]:
        """Keys not to accept in *signer*'s name (claims, requests)."""
        return self.revocations_for(signer).keys

    def all_revoked_keys(self) -> frozenset[bytes]:
        """Our revoked keys plus each peer's revoked keys *of its own key set* (for checking
        requests, where one set serves every origin: a peer cannot revoke another's key)."""
        keys = set(self.revocations.keys)
        for peer, published in self.peer_lists.items():
            keyset = self._keysets.get(peer)
            if keyset is not None and published.issuer == peer:
                keys.update(k for k in published.keys if keyset.find(k) is not None)
        return frozenset(keys)

    def revoked_by_peer(self, peer: str) -> list[int]:
        """Serials of links *peer* issued to us that its published list revokes."""
        published = self.peer_lists.get(peer)
        if published is None:
            return []
        return sorted(
            s.link.serial
            for s in self.links_between(peer, self.self_id)
            if s.link.serial in published.serials or s.key in published.keys
        )

    # -- links -----------------------------------------------------------------------

    def verdict(self, signed: SignedLink, now: int) -> LinkVerdict:
        issuer = signed.link.issuer
        return verify_link(signed, self.keyset(issuer), self.revocations_for(issuer), now)

    def links_between(self, issuer: str, subject: str) -> list[SignedLink]:
        return [s for s in self.links if s.link.issuer == issuer and s.link.subject == subject]

    def _decide(self, issuer: str, subject: str, capability: str, now: int) -> Decision:
        candidates = [s for s in self.links_between(issuer, subject) if capability in s.link.grants]
        if not candidates:
            return Decision(None, f"no link from {issuer} grants {capability} to {subject}")
        statuses = []
        best: SignedLink | None = None
        for signed in candidates:
            verdict = self.verdict(signed, now)
            if verdict.valid:
                if best is None or signed.link.serial > best.link.serial:
                    best = signed
            else:
                statuses.append(f"serial {signed.link.serial}: {verdict.status.value}")
        if best is None:
            return Decision(None, f"no valid link grants {capability} ({'; '.join(statuses)})")
        link = best.link
        grant = Grant(
            link.issuer, link.subject, capability, dict(link.grants[capability]), link.serial, link.not_after
        )
        return Decision(grant)

    def incoming(self, origin: str, capability: str, now: int) -> Decision:
        """May *origin* use *capability* here? Only links this node signed count."""
        if origin not in self.peers:
            return Decision(None, f"{origin} is not a configured peer")
        return self._decide(self.self_id, origin, capability, now)

    def outgoing(self, peer: str, capability: str, now: int) -> Decision:
        """Has *peer* granted us *capability*? Only links the peer signed count."""
        if peer not in self.peers:
            return Decision(None, f"{peer} is not a configured peer")
        return self._decide(peer, self.self_id, capability, now)

    def granting_us(self, capability: str, now: int) -> list[str]:
        return [p for p in self.peers if self.outgoing(p, capability, now).allowed]

    def endpoints(self, peer: str, now: int) -> tuple[str, ...]:
        """Where to reach *peer*: its configured URLs, else the endpoints we granted it at."""
        entry = self.peers.get(peer)
        if entry is None:
            return ()
        if entry.urls:
            return entry.urls
        urls: list[str] = []
        for signed in sorted(self.links_between(self.self_id, peer), key=lambda s: -s.link.serial):
            if self.verdict(signed, now).status is LinkStatus.VALID:
                urls.extend(u for u in signed.link.subject_endpoints if u not in urls)
        return tuple(urls)

    def grants_summary(self, peer: str, now: int) -> dict[str, list[dict[str, object]]]:
        """For display: every link both ways with its status."""

        def describe(signed: SignedLink) -> dict[str, object]:
            link = signed.link
            return {
                "serial": link.serial,
                "grants": {c: dict(v) for c, v in link.grants.items()},
                "not_before": link.not_before,
                "not_after": link.not_after,
                "status": self.verdict(signed, now).status.value,
            }

        return {
            "to_peer": [describe(s) for s in self.links_between(self.self_id, peer)],
            "from_peer": [describe(s) for s in self.links_between(peer, self.self_id)],
        }

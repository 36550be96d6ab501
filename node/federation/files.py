"""The federation's files: peers, link files, revocations, the key; loaded and watched.

Everything a node trusts is in files the operator controls:

* ``federation.key_file`` (default ``<data_dir>/node.key``): the node's private key;
* ``federation.peers`` in the node's configuration, and ``federation.peers_file``
  (default ``<data_dir>/peers.yaml``, a mapping ``peers: [...]`` of the same entries);
  relative link paths in the peers file are relative to that file's directory;
* the link files each peer entry names;
* ``federation.revocations_file`` (default ``<data_dir>/revocations.yaml``).

``RegistryWatcher`` builds a PeerRegistry from them and rebuilds it when any of them
changes (checked at most every ``interval`` seconds, one thread hop), so that a revoked
link, a new peer or a rotated key takes effect while the node runs. A file that fails to
load on a reload keeps the previous registry in force and is reported; a link file that
cannot be read simply grants nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import trio
import yaml

from ..config import NodeConfig, PeerConfig, coerce_record, peer_problem
from ..errors import ConfigError
from .identity import IdentityError, KeySet, NodeIdentity, load_identity
from .links import LinkError, Revocations, SignedLink, parse_link_text, parse_revocations
from .registry import PeerEntry, PeerRegistry
from .revocation_list import RevocationList

log = logging.getLogger("seamless_node.federation")


def load_peers_file(path: str) -> list[PeerConfig]:
    """The peers of a peers file (none if it does not exist); ConfigError otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read peers: {exc}") from None
    if doc is None:
        return []
    if not isinstance(doc, dict) or set(doc) - {"peers"} or not isinstance(doc.get("peers") or [], list):
        raise ConfigError(f"{path}: expected a mapping with one key, peers: [list of peers]")
    base = os.path.dirname(os.path.abspath(path))
    peers = []
    for index, entry in enumerate(doc.get("peers") or []):
        try:
            peer = coerce_record(PeerConfig, entry)
        except ValueError as exc:
            raise ConfigError(f"{path}: peers[{index}]: {exc}") from None
        assert isinstance(peer, PeerConfig)
        problem = peer_problem(peer)
        if problem:
            raise ConfigError(f"{path}: peers[{index}]: {problem}")
        links = tuple(link if os.path.isabs(link) else os.path.join(base, link) for link in peer.links)
        peers.append(PeerConfig(peer.node_id, peer.name, peer.urls, links, peer.fetch_buffers))
    return peers


def all_peers(config: NodeConfig) -> list[PeerConfig]:
    """Peers from the configuration, then from the peers file (first entry per id wins)."""
    seen: dict[str, PeerConfig] = {}
    for peer in [*config.federation.peers, *load_peers_file(config.peers_file)]:
        seen.setdefault(peer.node_id, peer)
    return list(seen.values())


def load_revocations(path: str, self_id: str) -> Revocations:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return Revocations()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read revocations file {path}: {exc}") from None
    try:
        return parse_revocations(text, default_issuer=self_id, source=path)
    except LinkError as exc:
        raise ConfigError(str(exc)) from None


def read_link_file(path: str) -> SignedLink:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise LinkError(f"cannot read link file {path}: {exc.strerror or exc}") from None
    return parse_link_text(data, source=path)


@dataclass
class Loaded:
    identity: NodeIdentity
    registry: PeerRegistry
    peers: list[PeerConfig]
    problems: list[str] = field(default_factory=list)


def load_all(
    config: NodeConfig,
    learned: dict[str, KeySet] | None = None,
    peer_lists: dict[str, RevocationList] | None = None,
) -> Loaded:
    """Load the key, peers, links and revocations (blocking; ConfigError/IdentityError).

    *peer_lists* (the revocation lists fetched from peers) is shared with the registry."""
    identity = load_identity(config.key_file)
    peers = all_peers(config)
    revocations = load_revocations(config.revocations_file, identity.node_id)
    problems: list[str] = []
    links: list[SignedLink] = []
    for peer in peers:
        for path in peer.links:
            try:
                links.append(read_link_file(path))
            except LinkError as exc:
                problems.append(str(exc))
    default_fetch = config.federation.fetch_buffers
    entries = {
        p.node_id: PeerEntry(
            p.node_id, p.name, p.urls, default_fetch if p.fetch_buffers is None else p.fetch_buffers
        )
        for p in peers
    }
    registry = PeerRegistry(identity.keyset, entries, links, revocations, learned, peer_lists)
    for signed in registry.ignored:
        problems.append(
            f"link serial {signed.link.serial} from {signed.link.issuer} to {signed.link.subject} "
            "is not between this node and one of its peers; ignored"
        )
    return Loaded(identity, registry, peers, problems)


def _fingerprint(paths: list[str]) -> tuple[tuple[str, int, int, int] | None, ...]:
    out: list[tuple[str, int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class RegistryWatcher:
    """The current Loaded state, rebuilt when a watched file changes."""

    def __init__(self, config: NodeConfig, *, interval: float = 0.5) -> None:
        self.config = config
        self.interval = interval
        self.learned: dict[str, KeySet] = {}
        #: revocation lists published by peers (revocation_sync.py keeps it up to date)
        self.peer_lists: dict[str, RevocationList] = {}
        self.state = load_all(config, None, self.peer_lists)
        for problem in self.state.problems:
            log.warning("federation: %s", problem)
        self._stamp = _fingerprint(self._paths())
        self._checked = trio.current_time() if _in_trio() else 0.0
        self.reload_error: str | None = None

    def _paths(self) -> list[str]:
        cfg = self.config
        paths = [cfg.key_file, cfg.peers_file, cfg.revocations_file]
        for peer in self.state.peers:
            paths.extend(peer.links)
        return paths

    @property
    def registry(self) -> PeerRegistry:
        return self.state.registry

    @property
    def identity(self) -> NodeIdentity:
        return self.state.identity

    def learn(self, keyset: KeySet) -> bool:
        if self.state.registry.learn_keyset(keyset):
            self.learned[keyset.node_id] = keyset
            return True
        return False

    def _reload_if_changed(self) -> bool:
        stamp = _fingerprint(self._paths())
        if stamp == self._stamp:
            return False
        try:
            learned = {**self.learned, **self.state.registry.keysets}
            state = load_all(self.config, learned, self.peer_lists)
        except (ConfigError, IdentityError) as exc:
            self.reload_error = str(exc)
            log.error("federation: reload failed, previous settings stay in force: %s", exc)
            self._stamp = stamp
            return False
        self.reload_error = None
        self.state = state
        self._stamp = _fingerprint(self._paths())
        for problem in state.problems:
            log.warning("federation: %s", problem)
        log.info("federation: reloaded (%d peers, %d links)", len(state.peers), len(state.registry.links))
        return True

    async def refresh(self, *, force: bool = False) -> None:
        """Reload if a file changed; at most one check every ``interval`` seconds."""
        now = trio.current_time()
        if not force and now - self._checked < self.interval:
            return
        self._checked = now
        await trio.to_thread.run_sync(self._reload_if_changed)


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True

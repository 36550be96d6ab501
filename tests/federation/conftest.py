"""Federation fixtures: real nodes on 127.0.0.1/2/3 (port 0) with real keys and links."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from node.app import Node, build_node, run_node
from node.federation.identity import NodeIdentity, save_identity
from node.federation.links import Link, SignedLink, parse_grant_spec, sign_link
from tests.conftest import make_config


@dataclass
class FedNode:
    name: str
    host: str
    data_dir: Path
    identity: NodeIdentity
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    node: Node | None = None
    url: str = ""
    scope: trio.CancelScope | None = None
    links: list[Path] = field(default_factory=list)
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def context(self) -> Any:
        assert self.node is not None
        return self.node.context

    @property
    def federation(self) -> Any:
        return self.context.federation

    def stop(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


class Cluster:
    def __init__(self, root: Path, nursery: trio.Nursery) -> None:
        self.root = root
        self.nursery = nursery
        self.nodes: dict[str, FedNode] = {}
        self.serial = 0
        (root / "links").mkdir(parents=True, exist_ok=True)

    def add(self, name: str, host: str, **sections: dict[str, Any]) -> FedNode:
        data_dir = self.root / name
        identity = NodeIdentity.generate(int(time.time()) - 120)
        save_identity(str(data_dir / "node.key"), identity)
        fed = FedNode(name, host, data_dir, identity, sections)
        self.nodes[name] = fed
        return fed

    async def add_fake(self, name: str, host: str = "127.0.0.4") -> tuple[FedNode, Any]:
        """A misbehaving peer (fake_peer.FakePeer) with a valid key, serving on *host*."""
        from .fake_peer import FakePeer

        identity = NodeIdentity.generate(int(time.time()) - 120)
        fake = FakePeer(identity, host)
        await self.nursery.start(fake.serve)
        fed = FedNode(name, host, self.root / name, identity, url=fake.url)
        self.nodes[name] = fed
        return fed, fake

    async def start(self, fed: FedNode) -> FedNode:
        sections = {k: dict(v) for k, v in fed.sections.items()}
        sections.setdefault("node", {})["host"] = fed.host
        sections.setdefault("federation", {}).setdefault("probe_interval", 3600)
        config = make_config(fed.data_dir, **sections)
        node = build_node(config)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await run_node(node, task_status=task_status)

        urls = await self.nursery.start(run)
        fed.node, fed.url, fed.scope = node, urls[0], scope
        return fed

    def grant(
        self,
        issuer: FedNode,
        subject: FedNode,
        caps: str,
        *,
        limits: dict[str, int] | None = None,
        not_before: int | None = None,
        not_after: int | None = None,
        identity: NodeIdentity | None = None,
        endpoints: bool = True,
    ) -> SignedLink:
        """Issue a link issuer -> subject and list it in both nodes' peers files."""
        self.serial += 1
        now = int(time.time())
        link = Link(
            issuer=issuer.node_id,
            subject=subject.node_id,
            grants=parse_grant_spec(caps, limits),
            not_before=now - 60 if not_before is None else not_before,
            not_after=now + 3600 if not_after is None else not_after,
            serial=self.serial,
            issued_at=now,
            subject_endpoints=(subject.url,) if subject.url and endpoints else (),
        )
        if identity is None:
            signed = sign_link(link, issuer.identity)
        else:  # a forgery: the issuer's name, another node's key
            signed = SignedLink(link, identity.public_key, identity.sign(link.message()), identity.keyset)
        path = self.root / "links" / f"{issuer.name}-{subject.name}-{self.serial}.link"
        path.write_text(signed.to_text())
        for a, b in ((issuer, subject), (subject, issuer)):
            a.peers.setdefault(b.node_id, {"node_id": b.node_id, "name": b.name, "links": []})
            a.peers[b.node_id]["links"].append(str(path))
        return signed

    def peer(self, a: FedNode, b: FedNode, **fields: Any) -> None:
        """List b in a's peers file (with b's URL) without any link."""
        entry = a.peers.setdefault(b.node_id, {"node_id": b.node_id, "name": b.name, "links": []})
        entry.update(fields)

    async def configure(self) -> None:
        """Write every node's peers.yaml (URLs included) and make the nodes reload now."""
        for fed in self.nodes.values():
            peers = []
            for entry in fed.peers.values():
                entry = dict(entry)
                other = next(n for n in self.nodes.values() if n.node_id == entry["node_id"])
                if other.url and "urls" not in entry:
                    entry["urls"] = [other.url]
                peers.append(entry)
            if fed.node is None and fed.scope is None and not fed.data_dir.exists():
                continue  # a fake peer
            path = fed.data_dir / "peers.yaml"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(yaml.safe_dump({"peers": peers}))
            os.replace(tmp, path)
        for fed in self.nodes.values():
            if fed.node is not None and fed.federation is not None:
                await fed.federation.watcher.refresh(force=True)


@pytest.fixture
async def cluster(tmp_path: Path, nursery: trio.Nursery) -> Cluster:
    return Cluster(tmp_path, nursery)

"""``seamless-node peers``: what this node knows about its peers, from its data directory.

``collect`` loads the key, peers, links and revocations as the node does (with the peers'
revocation lists the node stored), contacts every peer (its public key set, then a signed
ping: reachable? does it accept us?), and adds what the running node last saw
(``<data_dir>/federation/peers-state.json``). ``render`` makes a
table of it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import trio

from ..config import NodeConfig
from ..tls import client_context
from .canonical import format_time, now
from .files import RegistryWatcher
from .peers import PeerClient, PeerError, PeerRefused
from .revocation_sync import describe, load_held


def _saved_state(config: NodeConfig) -> dict[str, Any]:
    try:
        with open(os.path.join(config.federation_directory, "peers-state.json"), encoding="utf-8") as f:
            return dict(json.load(f).get("peers", {}))
    except (OSError, ValueError, AttributeError):
        return {}


async def _probe(client: PeerClient, watcher: RegistryWatcher, peer: str, out: dict[str, Any]) -> None:
    with trio.move_on_after(client.timeout + 1) as scope:
        try:
            if watcher.registry.keyset(peer) is None:
                watcher.learn(await client.keys(peer))
            answer = await client.ping(peer)
            jobs = answer.get("jobs") if isinstance(answer, dict) else None
            load = jobs.get("load") if isinstance(jobs, dict) else None
            out.update(reachable=True, accepts_us=True, error="", last_seen=now(), job_load=load)
        except PeerRefused as exc:
            out.update(reachable=True, accepts_us=False, error=str(exc))
        except PeerError as exc:
            out.update(reachable=False, error=str(exc))
    if scope.cancelled_caught:
        out.update(reachable=False, error="no answer")


def collect(config: NodeConfig, *, probe: bool = True) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        watcher = RegistryWatcher(config)
        registry = watcher.registry
        saved = _saved_state(config)
        held = load_held(os.path.join(config.federation_directory, "peer-revocations"), watcher)
        watcher.peer_lists.update({peer: h.signed.body for peer, h in held.items()})
        rows: dict[str, dict[str, Any]] = {}
        for peer, entry in registry.peers.items():
            last = saved.get(peer, {})
            rows[peer] = {
                "node_id": peer,
                "name": entry.name,
                "urls": list(registry.endpoints(peer, now())),
                "reachable": None,
                "accepts_us": None,
                "last_seen": last.get("last_seen"),
                "error": "",
            }
        if probe:
            client = PeerClient(
                watcher,
                timeout=float(config.federation.request_timeout),
                tls=client_context(config.federation.ca_file),
            )
            try:
                async with trio.open_nursery() as nursery:
                    for peer in rows:
                        nursery.start_soon(_probe, client, watcher, peer, rows[peer])
            finally:
                await client.aclose()
        t = now()
        for peer, row in rows.items():
            row.update(registry.grants_summary(peer, t))
            row["revocations"] = describe(held.get(peer), registry, peer)
        return {
            "node_id": watcher.identity.node_id,
            "peers": list(rows.values()),
            "problems": watcher.state.problems,
        }

    return trio.run(main)


def _grants(links: list[dict[str, Any]]) -> str:
    parts = []
    for link in links:
        caps = ",".join(
            cap + ("(" + ",".join(f"{k}={v}" for k, v in limits.items()) + ")" if limits else "")
            for cap, limits in link["grants"].items()
        )
        state = "" if link["status"] == "valid" else f" [{link['status']}]"
        parts.append(f"{caps} #{link['serial']} until {format_time(link['not_after'])[:10]}{state}")
    return "; ".join(parts) or "-"


def _revocations(info: dict[str, Any] | None) -> str:
    """The peer's published revocation list as this node holds it."""
    if not info or info.get("version") is None:
        return "no list fetched yet"
    text = f"list v{info['version']} fetched {format_time(info['fetched_at'])}"
    if info["revoked_grants"]:
        text += "; revoked its grants " + ", ".join(f"#{s}" for s in info["revoked_grants"])
    if info["revoked_keys"]:
        text += f"; {info['revoked_keys']} key(s) revoked"
    return text


def render(report: dict[str, Any]) -> str:
    lines = [f"node {report['node_id']}"]
    if not report["peers"]:
        lines.append("no peers configured (federation.peers, or the peers file in the data directory)")
    for row in report["peers"]:
        yes_no = {True: "yes", False: "no", None: "?"}
        lines.append("")
        lines.append(f"{row['name'] or '(no name)'}  {row['node_id']}")
        lines.append(f"  url          {' '.join(row['urls']) or '(unknown)'}")
        lines.append(f"  reachable    {yes_no[row['reachable']]}   accepts us: {yes_no[row['accepts_us']]}")
        if isinstance(row.get("job_load"), (int, float)):
            lines.append(f"  runs jobs    yes (load {row['job_load']:g})")
        if row.get("error"):
            lines.append(f"  error        {row['error']}")
        lines.append(f"  we grant     {_grants(row['to_peer'])}")
        lines.append(f"  they grant   {_grants(row['from_peer'])}")
        lines.append(f"  revocations  {_revocations(row.get('revocations'))}")
        seen = row.get("last_seen")
        lines.append(f"  last seen    {format_time(seen) if seen else 'never'}")
    for problem in report.get("problems", []):
        lines.append(f"warning: {problem}")
    return "\n".join(lines) + "\n"

"""Peer events in the log: a fetch, a refusal with its reason, a link that changes."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from node.federation.peers import PeerRefused
from node.logs import JsonFormatter, TextFormatter
from tests.helpers import random_buffer

from .conftest import Cluster


def federation_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [TextFormatter().format(r) for r in caplog.records if r.name == "seamless_node.federation"]


async def test_fetch_refusal_and_link_changes_are_logged(
    cluster: Cluster, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    c = await cluster.start(cluster.add("c", "127.0.0.3"))
    cluster.grant(c, a, "buffers:read")
    cluster.peer(c, b)  # C knows B, grants it nothing
    cluster.peer(b, c)
    await cluster.configure()
    cs, data = random_buffer(2000)
    assert (await http.put(f"{c.url}/buffers/{cs}", content=data)).status_code == 200
    assert await a.context.fetch_missing(cs)
    assert any(f"fetched {cs} (2000 bytes) from peer c" in line for line in federation_lines(caplog))
    with pytest.raises(PeerRefused):
        await b.federation.client.has(c.node_id, ["0" * 64])
    assert any("refused (403 not-granted)" in line for line in federation_lines(caplog))
    # the link from A to C: up, then down when C stops
    assert (await a.federation.probe(c.node_id)).accepts_us is True
    assert any("peer c: link up" in line for line in federation_lines(caplog))
    c.stop()
    assert (await a.federation.probe(c.node_id)).reachable is False
    assert any("peer c: link down" in line for line in federation_lines(caplog))
    assert sum("peer c: link up" in line for line in federation_lines(caplog)) == 1
    # the JSON log format carries the event as fields
    down = next(r for r in caplog.records if "peer c: link down" in r.getMessage())
    obj = json.loads(JsonFormatter().format(down))
    assert obj["event"] == "peer-link" and obj["peer"] == "c" and obj["link"] == "down" and obj["error"]

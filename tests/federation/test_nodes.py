"""Real nodes on 127.0.0.1/2/3 with real keys: presence, fetch-on-miss, refusals, peers API."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from node.federation.peers import PeerRefused
from tests.helpers import random_buffer

from .conftest import Cluster


async def three(cluster: Cluster):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    c = await cluster.start(cluster.add("c", "127.0.0.3"))
    return a, b, c


async def test_fetch_a_buffer_only_c_has(cluster: Cluster, http: httpx.AsyncClient):
    a, b, c = await three(cluster)
    cluster.grant(c, a, "buffers:read")
    cluster.grant(b, a, "buffers:read")
    await cluster.configure()
    cs, data = random_buffer(3 * 1024 * 1024 + 17)
    assert (await http.put(f"{c.url}/buffers/{cs}", content=data)).status_code == 200
    assert (await http.post(f"{a.url}/api/v1/buffers/has", json=[cs])).json() == [False]
    # the hook the buffers role calls before answering 404
    assert await a.context.fetch_missing(cs)
    got = await http.get(f"{a.url}/buffers/{cs}")
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == cs
    assert (await http.get(f"{b.url}/buffers/{cs}")).status_code == 404  # B was never asked to hold it
    metrics = (await http.get(f"{a.url}/metrics")).text
    assert 'seamless_node_federation_bytes_fetched_total{peer="c"}' in metrics
    assert a.context.metrics.value("seamless_node_federation_bytes_fetched_total", peer="c") == len(data)
    assert 'seamless_node_federation_fetches_total{outcome="ok",peer="c"} 1' in metrics
    # absent everywhere: False, quickly, nothing stored
    missing = hashlib.sha256(b"nobody has this").hexdigest()
    assert not await a.context.fetch_missing(missing)
    # the local API door to the same hook
    cs2, data2 = random_buffer(1000)
    await http.put(f"{c.url}/buffers/{cs2}", content=data2)
    assert (await http.post(f"{a.url}/api/v1/peers/fetch/{cs2}")).json()["present"] is True
    assert (await http.get(f"{a.url}/buffers/{cs2}")).content == data2


async def test_get_buffers_fetches_on_miss(cluster: Cluster, http: httpx.AsyncClient):
    """GET /buffers/<cs> itself fetches: the buffers role calls context.fetch_missing."""
    a, b, c = await three(cluster)
    cluster.grant(c, a, "buffers:read")
    await cluster.configure()
    cs, data = random_buffer(5 * 1024 * 1024)
    await http.put(f"{c.url}/buffers/{cs}", content=data)
    got = await http.get(f"{a.url}/buffers/{cs}")
    assert got.status_code == 200 and got.content == data


async def test_fetching_can_be_switched_off_per_peer(cluster: Cluster, http: httpx.AsyncClient):
    a, b, c = await three(cluster)
    cluster.grant(c, a, "buffers:read")
    cluster.peer(a, c, fetch_buffers=False)
    await cluster.configure()
    cs, data = random_buffer(100)
    await http.put(f"{c.url}/buffers/{cs}", content=data)
    assert not await a.context.fetch_missing(cs)


async def test_refusals_401_403_429(cluster: Cluster, http: httpx.AsyncClient):
    a, b, c = await three(cluster)
    cluster.grant(c, a, "buffers:read", limits={"buffers:read.max_per_minute": 3})
    cluster.peer(c, b)  # C knows B, grants it nothing
    cluster.peer(b, c)
    await cluster.configure()
    # unsigned
    r = await http.post(f"{c.url}/federation/buffers/has", json=[])
    assert r.status_code == 401 and r.headers["X-Seamless-Refusal"] == "missing-header"
    # B is a peer of C but holds no grant
    with pytest.raises(PeerRefused) as info:
        await b.federation.client.has(c.node_id, ["0" * 64])
    assert info.value.status == 403 and info.value.reason == "not-granted"
    # A is granted, 3 a minute
    for _ in range(3):
        assert await a.federation.client.has(c.node_id, ["0" * 64]) == [None]
    with pytest.raises(PeerRefused) as info:
        await a.federation.client.has(c.node_id, ["0" * 64])
    assert info.value.status == 429
    metrics = (await http.get(f"{c.url}/metrics")).text
    assert 'seamless_node_federation_refused_total{peer="b",reason="not-granted"} 1' in metrics
    assert 'seamless_node_federation_refused_total{peer="a",reason="over-limit"} 1' in metrics
    assert 'seamless_node_federation_refused_total{peer="unknown",reason="missing-header"} 1' in metrics


async def test_peers_api_and_probe(cluster: Cluster, http: httpx.AsyncClient):
    a, b, c = await three(cluster)
    cluster.grant(a, b, "buffers:read,results:read")
    cluster.grant(b, a, "buffers:read")
    cluster.peer(a, c)  # C does not know A
    await cluster.configure()
    assert (await a.federation.probe(b.node_id)).accepts_us is True
    status_c = await a.federation.probe(c.node_id)
    assert status_c.reachable is True and status_c.accepts_us is False
    body = (await http.get(f"{a.url}/api/v1/peers")).json()
    assert body["node_id"] == a.node_id
    peers = {p["name"]: p for p in body["peers"]}
    assert peers["b"]["reachable"] and peers["b"]["accepts_us"] and peers["b"]["last_seen"]
    assert peers["b"]["to_peer"][0]["grants"] == {"buffers:read": {}, "results:read": {}}
    assert peers["b"]["from_peer"][0]["status"] == "valid"
    assert peers["c"]["accepts_us"] is False and peers["c"]["to_peer"] == []
    keys = (await http.get(f"{a.url}/federation/keys")).json()
    assert keys["node_id"] == a.node_id
    json.dumps(body)

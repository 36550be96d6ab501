"""A peer with valid keys that serves wrong, truncated, slow or endless bytes, forges result
claims or replays requests: each is refused with nothing stored, and the honest path works."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter

import httpx
import pytest
import trio

from node.federation.claims import Claim
from node.federation.identity import NodeIdentity
from tests.helpers import random_buffer

from .conftest import Cluster

FAST_FAIL = {
    "absence_ttl": 0,
    "fetch_idle_timeout": 1,
    "fetch_min_rate": 64 * 1024,
    "fetch_grace": 0.5,
    "request_timeout": 5,
}


async def setup(cluster: Cluster):
    a = await cluster.start(cluster.add("a", "127.0.0.1", federation=FAST_FAIL))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    m, fake = await cluster.add_fake("m")
    cluster.grant(m, a, "buffers:read,results:read")  # listed first: asked first
    cluster.grant(b, a, "buffers:read,results:read")
    await cluster.configure()
    return a, b, m, fake


def store_files(node) -> list[str]:
    root = node.context.config.buffer_directory
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize("mode", ["wrong", "truncated", "short", "long", "endless", "drip", "stall"])
async def test_bad_bytes_are_refused_and_the_next_holder_serves(
    cluster: Cluster, http: httpx.AsyncClient, mode
):
    a, b, m, fake = await setup(cluster)
    cs, data = random_buffer(1024 * 1024 + 3)
    fake.buffers[cs] = (data, mode)
    before = store_files(a)
    with trio.fail_after(20):
        assert await a.context.fetch_missing(cs) is False  # only M has it: refused
    assert store_files(a) == before  # nothing stored, no temp file left
    mark = a.federation.locator.bad.marks[m.node_id]
    assert (
        mark.reason
        in {
            "wrong": ("wrong-bytes",),
            "truncated": ("truncated",),
            "short": ("truncated",),
            "long": ("too-long",),
            "endless": ("too-long", "truncated"),
            "drip": ("too-slow",),
            "stall": ("stalled",),
        }[mode]
    )
    outcome = a.context.metrics.value("seamless_node_federation_fetches_total", peer="m", outcome=mark.reason)
    assert outcome == 1
    # the honest path: B gets it too; M is skipped while marked, B serves
    await http.put(f"{b.url}/buffers/{cs}", content=data)
    with trio.fail_after(20):
        assert await a.context.fetch_missing(cs)
    assert (await http.get(f"{a.url}/buffers/{cs}")).content == data
    assert len(fake.received) >= 2


async def test_marked_peer_is_tried_again_after_its_cooldown_and_fails_over(cluster: Cluster):
    a, b, m, fake = await setup(cluster)
    cs, data = random_buffer(200_000)
    fake.buffers[cs] = (data, "wrong")
    async with httpx.AsyncClient() as http:
        await http.put(f"{b.url}/buffers/{cs}", content=data)
    assert await a.context.fetch_missing(cs)  # M first (refused), then B, in one call
    assert a.federation.locator.bad.marks[m.node_id].reason == "wrong-bytes"
    assert a.context.metrics.value("seamless_node_federation_fetches_total", peer="b", outcome="ok") == 1


def count_tasks() -> int:
    def walk(task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


async def test_partition_mid_fetch_fails_over_within_30s_without_leaks(
    cluster: Cluster, http: httpx.AsyncClient
):
    a = await cluster.start(
        cluster.add("a", "127.0.0.1", federation={"fetch_idle_timeout": 3}, node={"header_timeout": 1})
    )
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    m, fake = await cluster.add_fake("m")
    cluster.grant(m, a, "buffers:read")
    cluster.grant(b, a, "buffers:read")
    await cluster.configure()
    # warm up connections to both, so that pools do not count as leaks
    warm, warm_data = random_buffer(10)
    fake.buffers[warm] = (warm_data, "honest")
    assert await a.context.fetch_missing(warm)
    cs, data = random_buffer(8 * 1024 * 1024)
    async with httpx.AsyncClient() as client:  # closed: its server-side tasks end
        await client.put(f"{b.url}/buffers/{cs}", content=data)
    await trio.sleep(0.3)
    fds, tasks = len(os.listdir("/proc/self/fd")), count_tasks()
    names = task_names()
    fake.buffers[cs] = (data, "stall")
    started = time.monotonic()
    with trio.fail_after(30):
        assert await a.context.fetch_missing(cs)
    assert time.monotonic() - started < 30
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{a.url}/buffers/{cs}")).content == data
    # hypercorn keeps a closed client's connection tasks until its keep-alive timer ends
    # (node.header_timeout, 1 s here), so wait that out before counting
    await trio.sleep(1.5)
    assert fake.open_connections == 0  # A hung up on the silent peer
    assert count_tasks() <= tasks, Counter(task_names()) - Counter(names)
    assert len(os.listdir("/proc/self/fd")) <= fds + 1  # +1: a pooled connection at most


async def test_forged_result_claims_are_refused_and_honest_ones_used(
    cluster: Cluster, http: httpx.AsyncClient
):
    a, b, m, fake = await setup(cluster)
    cluster.grant(a, m, "results:write")  # A trusts M for results: M's claims are asked for
    await cluster.configure()
    now = int(time.time())
    tf, result, other_tf = (hashlib.sha256(x).hexdigest() for x in (b"tf", b"result", b"other"))
    stranger = NodeIdentity.generate(now - 10)

    def doc(claim: Claim, **changes) -> dict:
        d = claim.to_document()
        d.update(changes)
        return d

    forgeries = {
        "signed by a stranger in M's name": doc(fake.claim(tf, result, now, stranger), signer=m.node_id),
        "in B's name": fake.claim(tf, result, now, b.identity).to_document(),
        "result swapped after signing": doc(fake.claim(tf, result, now), result=other_tf),
        "about another transformation": fake.claim(other_tf, result, now).to_document(),
        "from the future": fake.claim(tf, result, now + 3600).to_document(),
        "malformed": {"transformation": tf},
    }
    for name, forged in forgeries.items():
        fake.claims[tf] = forged
        assert await a.context.lookup_result(tf) is None, name
    assert a.federation.claims.count() == 0
    refused = {
        labels: value
        for (labels, value) in a.context.metrics._counters["seamless_node_federation_claims_total"].items()
    }
    assert sum(refused.values()) == len(forgeries)
    # M's honest claim answers, and is stored with its signer
    fake.claims[tf] = fake.claim(tf, result, now).to_document()
    answer = await a.context.lookup_result(tf)
    assert answer.result == result and answer.signer == m.node_id and answer.source == "peer"
    assert a.federation.claims.count() == 1


async def test_replayed_requests_are_refused_also_after_a_restart(cluster: Cluster, http: httpx.AsyncClient):
    a, b, m, fake = await setup(cluster)
    cluster.grant(b, m, "buffers:read")  # M is a peer of B too, with a grant
    await cluster.configure()
    client = a.federation.client
    url, headers = client._prepare(b.node_id, b.url, "POST", "/federation/buffers/has", b"[]", "")
    first = await http.post(url, content=b"[]", headers=headers)
    assert first.status_code == 200 and first.json() == []
    again = await http.post(url, content=b"[]", headers=headers)
    assert again.status_code == 401 and again.headers["X-Seamless-Refusal"] == "replayed-nonce"
    # M replays to B a request A sent to M: addressed to M, refused by B
    await client.has(m.node_id, ["0" * 64])
    captured = fake.received[-1]
    replayed_headers = {k: v for k, v in captured.headers.items() if k != "host"}  # M names B
    forwarded = await http.post(
        f"{b.url}/federation/buffers/has", content=captured.body, headers=replayed_headers
    )
    assert forwarded.status_code == 401 and forwarded.headers["X-Seamless-Refusal"] == "wrong-destination"
    # M replays its own earlier request to B
    url_m, headers_m = (b.url + "/federation/buffers/has"), None
    from node.federation.signing import sign_request

    headers_m = sign_request(
        m.identity,
        method="POST",
        target="/federation/buffers/has",
        body=b"[]",
        destination=b.node_id,
        timestamp=int(time.time()),
    )
    assert (await http.post(url_m, content=b"[]", headers=headers_m)).status_code == 200
    assert (await http.post(url_m, content=b"[]", headers=headers_m)).status_code == 401
    # restart B: the nonce store survives
    b.stop()
    await trio.sleep(0.3)
    b = await cluster.start(b)
    await cluster.configure()
    new_url = b.url + "/federation/buffers/has"
    replay = await http.post(new_url, content=b"[]", headers=headers)
    assert replay.status_code == 401 and replay.headers["X-Seamless-Refusal"] == "replayed-nonce"
    # while the honest path works
    assert await a.federation.client.has(b.node_id, ["0" * 64]) == [None]


def task_names() -> list[str]:
    out = []

    def walk(task) -> None:
        out.append(task.name)
        for n in task.child_nurseries:
            for t in n.child_tasks:
                walk(t)

    walk(trio.lowlevel.current_root_task())
    return out


async def test_a_batch_read_asks_each_peer_once_and_judges_each_claim_alone(
    cluster: Cluster, http: httpx.AsyncClient
):
    a, b, m, fake = await setup(cluster)
    cluster.grant(a, m, "results:write")  # A trusts M for results
    await cluster.configure()
    now = int(time.time())

    def checksum(*parts: object) -> str:
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    tfs = [checksum("tf", i) for i in range(40)]
    honest = {tfs[i]: checksum("result", i) for i in range(0, 40, 4)}
    for tf, result in honest.items():
        fake.claims[tf] = fake.claim(tf, result, now).to_document()
    fake.claims[tfs[1]] = fake.claim(tfs[2], checksum("result", 1), now).to_document()  # about another tf
    fake.received.clear()
    reads = [{"type": "transformation", "checksum": tf} for tf in tfs]
    r = await http.post(a.url + "/api/v1/database/read-many", json={"requests": reads})
    assert r.status_code == 200, r.text
    assert r.json()["values"] == [honest.get(tf) for tf in tfs]
    lookups = [rq for rq in fake.received if rq.target == "/federation/results/lookup"]
    assert len(lookups) == 1 and sorted(json.loads(lookups[0].body)) == sorted(tfs)
    # the stored claims answer a second time without asking
    fake.received.clear()
    r = await http.post(a.url + "/api/v1/database/read-many", json={"requests": reads[:8:4]})
    assert r.json()["values"] == [honest[tfs[0]], honest[tfs[4]]]
    assert not [rq for rq in fake.received if rq.target == "/federation/results/lookup"]

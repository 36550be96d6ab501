"""Every 401 reason, 403 and 429 as a real node answers them (signed requests over HTTP)."""

from __future__ import annotations

import time

import httpx
import pytest

from node.federation.gate import Refusal
from node.federation.identity import NodeIdentity
from node.federation.signing import H_ORIGIN, sign_request

from .conftest import Cluster

HAS = "/federation/buffers/has"


async def pair(cluster: Cluster):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    cluster.grant(b, a, "buffers:read", limits={"buffers:read.max_concurrent": 1})
    await cluster.configure()
    return a, b


def signed(ident: NodeIdentity, dest: str, target: str = HAS, body: bytes = b"[]", t: int | None = None):
    return sign_request(
        ident,
        method="POST",
        target=target,
        body=body,
        destination=dest,
        timestamp=int(time.time()) if t is None else t,
    )


async def refusal(http: httpx.AsyncClient, url: str, headers: dict, body: bytes = b"[]") -> tuple[int, str]:
    r = await http.post(url, content=body, headers=headers)
    return r.status_code, r.headers.get("X-Seamless-Refusal", "")


async def test_every_401_reason_over_the_wire(cluster: Cluster, http: httpx.AsyncClient):
    a, b = await pair(cluster)
    url = b.url + HAS
    assert await refusal(http, url, signed(a.identity, b.node_id)) == (200, "")
    stranger = NodeIdentity.generate(int(time.time()) - 10)
    forged = signed(stranger, b.node_id)
    forged[H_ORIGIN] = a.node_id  # in A's name, with a key that is not A's
    cases = {
        "missing-header": {},
        "unknown-origin": signed(stranger, b.node_id),
        "unknown-key": forged,
        "wrong-destination": signed(a.identity, stranger.node_id),
        "stale-timestamp": signed(a.identity, b.node_id, t=int(time.time()) - 120),
    }
    for reason, headers in cases.items():
        assert await refusal(http, url, headers) == (401, reason), reason
    # tampered path or query: the signature covers the target as sent
    assert await refusal(http, url + "?x=1", signed(a.identity, b.node_id)) == (401, "bad-signature")
    assert await refusal(http, url, signed(a.identity, b.node_id, target=HAS + "?x=1")) == (
        401,
        "bad-signature",
    )
    # tampered body under the signed hash
    assert await refusal(http, url, signed(a.identity, b.node_id), body=b'["' + b"0" * 64 + b'"]') == (
        401,
        "body-mismatch",
    )
    # replay
    headers = signed(a.identity, b.node_id)
    assert (await refusal(http, url, headers))[0] == 200
    assert await refusal(http, url, headers) == (401, "replayed-nonce")
    # a capability not granted
    r = await http.get(
        b.url + "/federation/buffers/" + "0" * 64,
        headers=sign_request(
            a.identity,
            method="GET",
            target="/federation/buffers/" + "0" * 64,
            body=b"",
            destination=b.node_id,
            timestamp=int(time.time()),
        ),
    )
    assert r.status_code == 404  # granted: buffers:read, and absent
    r = await http.post(
        b.url + "/federation/results/lookup",
        content=b"[]",
        headers=sign_request(
            a.identity,
            method="POST",
            target="/federation/results/lookup",
            body=b"[]",
            destination=b.node_id,
            timestamp=int(time.time()),
        ),
    )
    assert (r.status_code, r.headers["X-Seamless-Refusal"]) == (403, "not-granted")
    metrics = b.context.metrics
    assert metrics.value("seamless_node_federation_refused_total", peer="a", reason="bad-signature") == 2
    assert (
        metrics.value("seamless_node_federation_refused_total", peer="unknown", reason="unknown-origin") == 1
    )


async def test_max_concurrent_gives_429_until_released(cluster: Cluster):
    a, b = await pair(cluster)
    gate = b.federation.gate

    async def admit():
        headers = signed(a.identity, b.node_id)
        return await gate.admit(
            method="POST", target=HAS, headers=headers, body_sha256=None, capability="buffers:read"
        )

    first = await admit()
    with pytest.raises(Refusal) as info:
        await admit()
    assert info.value.http_status == 429 and info.value.reason == "over-limit"
    first.release()
    (await admit()).release()


async def test_a_link_expires_while_the_node_runs(cluster: Cluster):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    cluster.grant(b, a, "buffers:read", not_after=int(time.time()) + 20)
    await cluster.configure()
    assert await a.federation.client.has(b.node_id, ["0" * 64]) == [None]
    b.federation.gate.clock = lambda: int(time.time()) + 30  # 30 s later (signatures still fresh)
    from node.federation.peers import PeerRefused

    with pytest.raises(PeerRefused) as info:
        await a.federation.client.has(b.node_id, ["0" * 64])
    assert info.value.status == 403 and "expired" in str(info.value)


async def test_large_buffers_to_a_peer_release_their_slot(cluster: Cluster, http: httpx.AsyncClient):
    """GET /federation/buffers/<cs> (a fast route): hashed while streaming the first time,
    zero-copy from the file after that; either way the peer's one concurrent slot
    (max_concurrent=1) is free again afterwards, and unsigned requests are refused."""
    import hashlib
    import os
    from pathlib import Path

    a, b = await pair(cluster)
    data = os.urandom(6 * 1024 * 1024 + 5)
    cs = hashlib.sha256(data).hexdigest()
    shard = Path(b.context.config.buffer_directory) / cs[:2]
    shard.mkdir(parents=True, exist_ok=True)
    (shard / cs).write_bytes(data)  # dropped in: not yet verified by this node
    target = f"/federation/buffers/{cs}"
    for _ in range(3):
        headers = sign_request(
            a.identity, method="GET", target=target, body=b"", destination=b.node_id, timestamp=int(time.time())
        )
        r = await http.get(b.url + target, headers=headers)
        assert r.status_code == 200 and r.content == data
    assert len(b.context.buffers.store.verified) == 1  # the first answer hashed it whole
    served = b.context.metrics.value("seamless_node_federation_bytes_served_total", peer="a")
    assert served == 3 * len(data)
    r = await http.get(b.url + target)
    assert r.status_code == 401 and r.headers["X-Seamless-Refusal"] == "missing-header"

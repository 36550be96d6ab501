"""Peers' revocation lists between real nodes: a grant the peer revoked is not relied on."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import httpx
import pytest
import trio

from node.federation.canonical import b64encode
from node.federation.identity import save_identity
from node.federation.peers import PeerRefused
from node.federation.revocation_list import (
    Judgement,
    RevocationList,
    SignedRevocationList,
    sign_revocation_list,
)
from tests.roles.jobless.support import Transformations, wait_for

from .conftest import Cluster, FedNode
from .support import peers_command
from .test_forwarding import counter, place_job, put, start, submit

MiB = 1024 * 1024


def revoke(node: FedNode, text: str) -> None:
    (node.data_dir / "revocations.yaml").write_text(text)


def b_saw(b: FedNode, a: FedNode) -> dict[str, float]:
    """What B counted of A's requests: admitted per capability, refused per reason."""
    m = b.context.metrics
    seen = {
        cap: m.value("seamless_node_federation_requests_total", peer=a.name, capability=cap)
        for cap in ("buffers:read", "results:read", "jobs:submit")
    }
    seen["refused"] = m.value("seamless_node_federation_refused_total", peer=a.name, reason="not-granted")
    return seen


def allowed(a: FedNode, b: FedNode, capability: str) -> bool:
    return bool(a.federation.registry.outgoing(b.node_id, capability, int(time.time())).allowed)


async def put_result(http: httpx.AsyncClient, node: FedNode, name: bytes) -> tuple[str, str]:
    tf, result = hashlib.sha256(b"tf" + name).hexdigest(), hashlib.sha256(b"r" + name).hexdigest()
    r = await http.put(
        f"{node.url}/database", json={"type": "transformation", "checksum": tf, "value": result}
    )
    assert r.status_code == 200, r.text
    return tf, result


async def test_a_revoked_grant_is_not_relied_on_once_the_list_is_fetched(
    cluster: Cluster, http: httpx.AsyncClient
):
    a, b = await start(cluster, "a", "b")
    link = cluster.grant(b, a, "jobs:submit,buffers:read,results:read")
    cluster.grant(a, b, "results:write")  # B's claims are results here
    await cluster.configure()
    tf, result = await put_result(http, b, b"1")
    tf_later, _ = await put_result(http, b, b"1 later")
    only_at_b = os.urandom(1000)
    only_cs = hashlib.sha256(only_at_b).hexdigest()
    await put(http, b, {only_cs: only_at_b})
    tfs, big = Transformations(), os.urandom(2 * MiB)
    code = "def f(data):\n    return len(data)\n"
    job_tf, data_cs = await place_job(http, tfs, code, big, code_at=a, data_at=[b])

    # relied on: results, buffers and jobs go to B
    assert (await a.context.lookup_result(tf)).result == result
    job = await submit(http, a, job_tf)
    assert job["state"] == "done" and job["executor"] == b.node_id
    # B revokes the link it granted A; A does not know yet and still relies on it
    revoke(b, f"links:\n  - serial: {link.link.serial}\n")
    await b.federation.watcher.refresh(force=True)
    assert allowed(a, b, "results:read") and allowed(a, b, "jobs:submit")

    assert await a.federation.revocations.fetch(b.node_id) is Judgement.ACCEPTED
    assert not any(allowed(a, b, cap) for cap in ("results:read", "buffers:read", "jobs:submit"))
    before = b_saw(b, a)
    # no result lookup at B (the claim A stored before still answers: A's trust in B stands)
    assert await a.context.lookup_result(tf_later) is None
    # no buffer fetch from B
    assert (await http.get(f"{a.url}/buffers/{only_cs}")).status_code == 404
    # no job forwarded to B (A runs it here; the input it lacks cannot come from B)
    job2_tf = tfs.python("def f(data):\n    return len(data) + 1\n", data=(big, "bytes"))
    await put(http, a, {cs: d for cs, d in tfs.buffers.items() if cs != data_cs})
    job2 = await submit(http, a, job2_tf)
    assert job2["executor"] is None and job2["state"] != "running", job2
    assert counter(a, "jobs_forwarded_total", peer="b") == 1  # the first job only
    assert b_saw(b, a) == before  # B was not even asked (no request, no refusal)
    assert jobless(b).service.counts["submitted"] == 1

    # observability: the API shows the list and the grant it revoked; metrics count it
    peers = (await http.get(f"{a.url}/api/v1/peers")).json()["peers"]
    (row,) = [p for p in peers if p["node_id"] == b.node_id]
    info = row["revocations"]
    assert info["revoked_grants"] == [link.link.serial] and info["revoked_serials"] == [link.link.serial]
    assert info["version"] >= 1 and abs(info["fetched_at"] - time.time()) < 60
    assert row["from_peer"][0]["status"] == "revoked"
    assert counter(a, "revocation_fetches_total", peer="b", outcome="accepted") == 1


def jobless(fed: FedNode) -> Any:
    assert fed.node is not None
    return next(r for r in fed.node.roles if r.name == "jobless")


async def test_a_403_makes_the_node_fetch_the_peers_list(cluster: Cluster, http: httpx.AsyncClient):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    link = cluster.grant(b, a, "results:read")
    cluster.grant(a, b, "results:write")
    await cluster.configure()
    tf, _ = await put_result(http, b, b"2")
    revoke(b, f"links:\n  - serial: {link.link.serial}\n")
    await b.federation.watcher.refresh(force=True)
    assert await a.context.lookup_result(tf) is None  # B answers 403
    assert b_saw(b, a)["refused"] == 1
    await wait_for(lambda: not allowed(a, b, "results:read"), timeout=5)
    assert await a.context.lookup_result(tf) is None
    assert b_saw(b, a)["refused"] == 1  # not asked again


async def test_forged_and_rolled_back_lists_change_nothing(cluster: Cluster, http: httpx.AsyncClient):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    c = cluster.add("c", "127.0.0.3")  # never started: only its key signs
    kept = cluster.grant(b, a, "buffers:read")
    revoked = cluster.grant(b, a, "results:read")
    await cluster.configure()
    publisher = b.federation.publisher
    old = publisher.current()  # B's list before it revokes anything
    revoke(b, f"links:\n  - serial: {revoked.link.serial}\n")
    await b.federation.watcher.refresh(force=True)
    assert await a.federation.revocations.fetch(b.node_id) is Judgement.ACCEPTED
    held = a.federation.revocations.held[b.node_id]
    stored = (a.data_dir / "federation" / "peer-revocations" / f"{b.node_id}.json").read_bytes()
    assert held.signed.body.serials == {revoked.link.serial}

    def serve(signed: SignedRevocationList) -> None:
        publisher.current = lambda: signed  # B's endpoint now serves this document

    body = RevocationList(b.node_id, held.signed.list_version + 100, int(time.time()), frozenset())
    forged = SignedRevocationList(body, c.identity.public_key, c.identity.sign(body.message()))
    cases = [
        (old, Judgement.ROLLBACK),  # B's own, genuine, older list, replayed
        (forged, Judgement.UNKNOWN_KEY),  # B's name, C's key
        (sign_revocation_list(RevocationList(c.node_id, body.list_version, body.issued_at), c.identity),
         Judgement.WRONG_ISSUER),  # C's list served by B
    ]
    for document, verdict in cases:
        serve(document)
        assert await a.federation.revocations.fetch(b.node_id) is verdict
        assert a.federation.revocations.held[b.node_id] == held
        assert not allowed(a, b, "results:read") and allowed(a, b, "buffers:read")
        stored_now = (a.data_dir / "federation" / "peer-revocations" / f"{b.node_id}.json").read_bytes()
        assert stored_now == stored
    assert counter(a, "revocation_fetches_total", peer="b", outcome="rollback") == 1
    assert counter(a, "revocation_fetches_total", peer="b", outcome="unknown-key") == 1
    report = (await http.get(f"{a.url}/api/v1/peers")).json()["peers"][0]["revocations"]
    assert report["error"] == "list refused: wrong-issuer"
    assert report["revoked_grants"] == [revoked.link.serial]
    assert kept.link.serial not in report["revoked_grants"]


async def test_the_list_survives_a_restart(cluster: Cluster, http: httpx.AsyncClient):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    link = cluster.grant(b, a, "buffers:read,results:read")
    await cluster.configure()
    old = b.federation.publisher.current()
    revoke(b, f"links:\n  - serial: {link.link.serial}\n")
    await b.federation.watcher.refresh(force=True)
    assert await a.federation.revocations.fetch(b.node_id) is Judgement.ACCEPTED
    version = a.federation.revocations.held[b.node_id].signed.list_version
    b.stop()  # B cannot tell A again
    a.stop()
    await trio.sleep(0.3)
    a = await cluster.start(a)
    assert not allowed(a, b, "buffers:read") and not allowed(a, b, "results:read")
    assert a.federation.revocations.held[b.node_id].signed.list_version == version
    # a replay of B's older list is still refused after the restart
    assert a.federation.revocations._judge(b.node_id, old) is Judgement.ROLLBACK
    # and `seamless-node peers` shows it from the data directory
    (row,) = json.loads(await peers_command(a.data_dir, "--json"))["peers"]
    assert row["revocations"]["version"] == version
    assert row["revocations"]["revoked_grants"] == [link.link.serial]
    assert row["from_peer"][0]["status"] == "revoked"
    assert f"revoked its grants #{link.link.serial}" in await peers_command(a.data_dir)


async def test_a_stored_list_that_was_tampered_with_is_ignored(cluster: Cluster):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    link = cluster.grant(b, a, "buffers:read")
    await cluster.configure()
    revoke(b, f"links:\n  - serial: {link.link.serial}\n")
    await b.federation.watcher.refresh(force=True)
    assert await a.federation.revocations.fetch(b.node_id) is Judgement.ACCEPTED
    b.stop()
    a.stop()
    await trio.sleep(0.3)
    path = a.data_dir / "federation" / "peer-revocations" / f"{b.node_id}.json"
    saved = json.loads(path.read_text())
    saved["document"]["list"]["serials"] = []
    path.write_text(json.dumps(saved))
    a = await cluster.start(a)
    assert b.node_id not in a.federation.revocations.held


async def test_a_key_the_peer_revoked_takes_its_claims_out_of_use(
    cluster: Cluster, http: httpx.AsyncClient
):
    """Rule 6: B rotates its key and revokes the old one; once A holds B's list, the claims
    B signed with the old key are not used (nor the links it signed with it)."""
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    cluster.grant(b, a, "results:read")
    cluster.grant(a, b, "results:write")
    await cluster.configure()
    tf, result = await put_result(http, b, b"3")
    answer = await a.context.lookup_result(tf)
    assert answer.result == result and a.federation.claims.count() == 1
    assert (await a.context.lookup_result(tf)).source == "claim"
    old = b.identity
    save_identity(str(b.data_dir / "node.key"), old.rotate(int(time.time()), overlap=3600))
    revoke(b, f"keys:\n  - key: {b64encode(old.public_key)}\n")
    await b.federation.watcher.refresh(force=True)
    # the list is signed with B's new key: A learns B's key set to check it
    assert await a.federation.revocations.fetch(b.node_id) is Judgement.ACCEPTED
    assert a.federation.revocations.held[b.node_id].signed.body.keys == {old.public_key}
    before = b_saw(b, a)
    assert await a.context.lookup_result(tf) is None
    assert b_saw(b, a) == before
    assert a.federation.claims.count() == 1  # kept, but out of use
    # after a restart (B away), the stored list, signed with B's new key, still counts
    b.stop()
    a.stop()
    await trio.sleep(0.3)
    a = await cluster.start(a)
    assert a.federation.revocations.held[b.node_id].signed.body.keys == {old.public_key}
    assert await a.context.lookup_result(tf) is None


async def test_the_endpoint_refuses_unsigned_and_unknown_requesters(
    cluster: Cluster, http: httpx.AsyncClient
):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    c = await cluster.start(cluster.add("c", "127.0.0.3"))
    link = cluster.grant(b, a, "buffers:read")
    cluster.peer(c, b)  # C knows B; B does not know C
    await cluster.configure()
    r = await http.get(f"{b.url}/federation/revocations")
    assert r.status_code == 401 and r.headers["X-Seamless-Refusal"] == "missing-header"
    with pytest.raises(PeerRefused) as refused:
        await c.federation.client.revocations(b.node_id)
    assert refused.value.status == 401 and refused.value.reason == "unknown-origin"
    # A peer whose every grant B revoked may still read it (so that it learns)
    revoke(b, f"links:\n  - serial: {link.link.serial}\n")
    await b.federation.watcher.refresh(force=True)
    doc = await a.federation.client.revocations(b.node_id)
    assert doc["list"]["serials"] == [link.link.serial]
    assert doc["signature"]["key"] == b64encode(b.identity.public_key)
    # the version rises with each change, and survives B's restart
    first = doc["list"]["list_version"]
    revoke(b, "links: []\n")
    await b.federation.watcher.refresh(force=True)
    second = (await a.federation.client.revocations(b.node_id))["list"]["list_version"]
    assert second > first
    b.stop()
    await trio.sleep(0.3)
    b = await cluster.start(b)
    await cluster.configure()
    assert (await a.federation.client.revocations(b.node_id))["list"]["list_version"] == second

"""Link lifecycle and key rotation over the wire; result claims honoured per results:write."""

from __future__ import annotations

import dataclasses
import hashlib
import time

import httpx
import pytest

from node.federation.canonical import b64encode
from node.federation.identity import save_identity
from node.federation.peers import PeerRefused

from .conftest import Cluster


async def pair(cluster: Cluster):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    return a, b


def write_revocations(node, text: str) -> None:
    (node.data_dir / "revocations.yaml").write_text(text)


async def ask(b, a) -> int:
    """B asks A for presence; the HTTP status A answers."""
    try:
        await b.federation.client.has(a.node_id, ["0" * 64])
    except PeerRefused as exc:
        return exc.status
    return 200


NOW = int(time.time())
CASES = [
    ("valid", {}, 200),
    ("not yet valid", {"not_before": NOW + 3600}, 403),
    ("expired", {"not_before": NOW - 7200, "not_after": NOW - 3600}, 403),
    ("revoked", {"revoke": True}, 403),
    ("wrong signer", {"wrong_signer": True}, 403),
]


@pytest.mark.parametrize("name, case, status", CASES, ids=[c[0] for c in CASES])
async def test_link_lifecycle_over_the_wire(cluster: Cluster, name, case, status):
    a, b = await pair(cluster)
    c = cluster.add("c", "127.0.0.3")  # never started: only its key signs
    signer = c.identity if case.get("wrong_signer") else None
    link = cluster.grant(
        a,
        b,
        "buffers:read",
        not_before=case.get("not_before"),
        not_after=case.get("not_after"),
        identity=signer,
    )
    if case.get("revoke"):
        write_revocations(a, f"links:\n  - serial: {link.link.serial}\n")
    cluster.grant(b, a, "buffers:read")  # so that B has a reason to know A
    await cluster.configure()
    assert await ask(b, a) == status


async def test_revocation_takes_effect_at_once(cluster: Cluster):
    a, b = await pair(cluster)
    link = cluster.grant(a, b, "buffers:read")
    await cluster.configure()
    assert await ask(b, a) == 200
    write_revocations(a, f"links:\n  - serial: {link.link.serial}\n")
    await a.federation.watcher.refresh(force=True)
    assert await ask(b, a) == 403
    write_revocations(a, f"keys:\n  - key: {b64encode(b.identity.public_key)}\n")  # B's key itself
    await a.federation.watcher.refresh(force=True)
    assert await ask(b, a) == 401


async def test_key_rotation_with_overlap(cluster: Cluster, http: httpx.AsyncClient):
    a, b = await pair(cluster)
    cluster.grant(a, b, "buffers:read")
    await cluster.configure()
    assert await ask(b, a) == 200
    old = b.identity
    # B rotates; the old key stays valid for an hour
    rotated = old.rotate(int(time.time()), overlap=3600)
    save_identity(str(b.data_dir / "node.key"), rotated)
    await b.federation.watcher.refresh(force=True)
    assert b.federation.watcher.identity.public_key == rotated.public_key
    assert await ask(b, a) == 200  # A learns B's new key from B's /federation/keys
    assert a.federation.registry.keyset(b.node_id) == rotated.keyset
    # a request still signed with the old key is accepted during the overlap
    b.federation.watcher.state = dataclasses.replace(b.federation.watcher.state, identity=old)
    assert await ask(b, a) == 200
    # a rotation whose overlap is over: only the new key counts
    late = old.rotate(int(time.time()) - 100, overlap=50)
    save_identity(str(b.data_dir / "node.key"), late)
    await b.federation.watcher.refresh(force=True)
    a.federation.gate._key_fetched.clear()
    a.federation.watcher.learned.clear()
    # A has B's first rotation, which is a fork of this one: A keeps it (no fork accepted)
    assert await ask(b, a) == 401


async def test_expired_old_key_refused_after_overlap(cluster: Cluster):
    a, b = await pair(cluster)
    cluster.grant(a, b, "buffers:read")
    await cluster.configure()
    old = b.identity
    rotated = old.rotate(int(time.time()) - 100, overlap=50)  # the overlap ended 50 s ago
    save_identity(str(b.data_dir / "node.key"), rotated)
    await b.federation.watcher.refresh(force=True)
    assert await ask(b, a) == 200  # the new key, learned on first use
    b.federation.watcher.state = dataclasses.replace(b.federation.watcher.state, identity=old)
    assert await ask(b, a) == 401


async def test_result_claims_trusted_stored_and_revoked(cluster: Cluster, http: httpx.AsyncClient):
    a, b = await pair(cluster)
    cluster.grant(b, a, "results:read")
    await cluster.configure()
    tf, result = hashlib.sha256(b"tf").hexdigest(), hashlib.sha256(b"result").hexdigest()
    r = await http.put(f"{b.url}/database", json={"type": "transformation", "checksum": tf, "value": result})
    assert r.status_code == 200, r.text
    # no results:write trust from A: B's claim is no result here (B is not even asked)
    assert await a.context.lookup_result(tf) is None
    assert a.federation.claims.count() == 0
    # A trusts B with results:write: the claim answers and is stored with its signer
    cluster.grant(a, b, "results:write")
    await cluster.configure()
    answer = await a.context.lookup_result(tf)
    assert answer.result == result and answer.signer == b.node_id and answer.source == "peer"
    assert a.federation.claims.count() == 1
    via_api = (await http.get(f"{a.url}/api/v1/peers/results/{tf}")).json()
    assert via_api["result"] == result and via_api["source"] == "claim"
    # B goes away: the stored claim still answers
    b.stop()
    answer = await a.context.lookup_result(tf)
    assert answer.source == "claim"
    # revoking B's key takes its claims out of use at once
    write_revocations(a, f"keys:\n  - key: {b64encode(b.identity.public_key)}\n")
    await a.federation.watcher.refresh(force=True)
    assert await a.context.lookup_result(tf) is None
    assert (await http.get(f"{a.url}/api/v1/peers/results/{tf}")).status_code == 404


async def test_pushed_claims_need_results_write(cluster: Cluster):
    from node.federation.claims import make_claim

    a, b = await pair(cluster)
    cluster.grant(a, b, "results:read")
    await cluster.configure()
    tf, result = hashlib.sha256(b"tf2").hexdigest(), hashlib.sha256(b"r2").hexdigest()
    claim = make_claim(b.identity, tf, result, int(time.time())).to_document()
    with pytest.raises(PeerRefused) as info:
        await b.federation.client.push_claims(a.node_id, [claim])
    assert info.value.status == 403
    cluster.grant(a, b, "results:write")
    await cluster.configure()
    forged = make_claim(a.identity, tf, result, int(time.time())).to_document()  # not B's
    assert await b.federation.client.push_claims(a.node_id, [claim, forged]) == ["valid", "wrong-signer"]
    answer = await a.context.lookup_result(tf)
    assert answer.result == result and answer.source == "claim"


async def test_first_contact_without_a_url_for_the_requester(cluster: Cluster):
    """B cannot reach A (no URL): A's key set comes with A's retried request, self-certified."""
    a, b = await pair(cluster)
    cluster.grant(b, a, "buffers:read", endpoints=False)
    cluster.peer(b, a, urls=[])
    await cluster.configure()
    assert b.federation.registry.endpoints(a.node_id, int(time.time())) == ()
    assert b.federation.registry.keyset(a.node_id) is None
    assert await a.federation.client.has(b.node_id, ["0" * 64]) == [None]
    assert b.federation.registry.keyset(a.node_id) == a.identity.keyset
    # a key set pushed in another node's name is refused
    from node.federation.gate import Gate

    gate: Gate = b.federation.gate
    assert not gate._learn_pushed(a.node_id, "garbage")
    c = cluster.add("c", "127.0.0.3")
    from node.federation.canonical import b64encode, canonical_json

    assert not gate._learn_pushed(a.node_id, b64encode(canonical_json(c.identity.keyset.to_document())))


async def test_database_role_answers_from_peer_claims(cluster: Cluster, http: httpx.AsyncClient):
    """The /database protocol itself asks linked peers trusted for results for a
    transformation it lacks (and /api/v1/database/read answers the same)."""
    a, b = await pair(cluster)
    tf, result = hashlib.sha256(b"tf2").hexdigest(), hashlib.sha256(b"result2").hexdigest()
    r = await http.put(f"{b.url}/database", json={"type": "transformation", "checksum": tf, "value": result})
    assert r.status_code == 200, r.text
    query = {"type": "transformation", "checksum": tf}
    assert (await http.request("GET", f"{a.url}/database", json=query)).status_code == 404  # no link yet
    cluster.grant(b, a, "results:read")
    cluster.grant(a, b, "results:write")
    await cluster.configure()
    r = await http.request("GET", f"{a.url}/database", json=query)
    assert (r.status_code, r.text) == (200, result)
    assert a.federation.claims.count() == 1  # stored with its signer
    r = await http.post(f"{a.url}/api/v1/database/read", json=query)
    assert (r.status_code, r.json()) == (200, {"value": result})

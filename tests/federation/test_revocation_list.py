"""Published revocation lists: document, signature, version rules; the registry applies them."""

from __future__ import annotations

import dataclasses

import pytest

from node.federation.identity import NodeIdentity
from node.federation.links import Revocations
from node.federation.registry import PeerEntry, PeerRegistry
from node.federation.revocation_list import (
    Judgement,
    RevocationList,
    RevocationListError,
    SignedRevocationList,
    judge,
    next_version,
    own_content,
    parse_revocation_list,
    sign_revocation_list,
    standing,
)

from .support import T0, make_link


@pytest.fixture(scope="module")
def ids() -> dict[str, NodeIdentity]:
    return {name: NodeIdentity.generate(T0 - 86400) for name in ("a", "b", "c")}


def signed_list(identity: NodeIdentity, version: int, serials=(), keys=(), issued_at: int = T0):
    body = RevocationList(identity.node_id, version, issued_at, frozenset(serials), frozenset(keys))
    return sign_revocation_list(body, identity)


def judge_b(signed, ids, held=None, *, now=T0, revoked=(), keys=None):
    b = ids["b"]
    return judge(
        signed,
        peer=b.node_id,
        peer_keys=b.keyset if keys is None else keys,
        held=held,
        revoked_keys=revoked,
        now=now,
    )


def test_document_round_trip(ids):
    signed = signed_list(ids["b"], 5, serials=[7, 3], keys=[ids["b"].public_key])
    parsed = parse_revocation_list(signed.to_document())
    assert parsed == signed
    assert parsed.body.serials == {3, 7} and parsed.body.keys == {ids["b"].public_key}
    assert judge_b(parsed, ids) is Judgement.ACCEPTED


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("signature"),
        lambda d: d["list"].update(type="seamless-node-link"),
        lambda d: d["list"].update(serials=[1.5]),
        lambda d: d["list"].update(serials=[-1]),
        lambda d: d["list"].update(list_version=0),
        lambda d: d["list"].update(list_version=True),
        lambda d: d["list"].update(keys=["not base64!"]),
        lambda d: d["list"].update(extra=1),
        lambda d: d["list"].update(issuer="../etc"),
        lambda d: d["signature"].update(value="AAAA"),
    ],
)
def test_malformed_documents_are_refused(ids, mutate):
    doc = signed_list(ids["b"], 1, serials=[1]).to_document()
    mutate(doc)
    with pytest.raises(RevocationListError):
        parse_revocation_list(doc)


def test_only_the_peer_itself_can_sign_its_list(ids):
    b, c = ids["b"], ids["c"]
    # a list in B's name signed with C's key
    body = RevocationList(b.node_id, 9, T0, frozenset({1}))
    forged = SignedRevocationList(body, c.public_key, c.sign(body.message()))
    assert judge_b(forged, ids) is Judgement.UNKNOWN_KEY
    # C's own list served by B
    assert judge_b(signed_list(c, 9), ids) is Judgement.WRONG_ISSUER
    # B's list, tampered after signing
    good = signed_list(b, 9, serials=[1])
    tampered = dataclasses.replace(good, body=dataclasses.replace(good.body, serials=frozenset()))
    assert judge_b(tampered, ids) is Judgement.BAD_SIGNATURE
    # no key set known for B
    assert judge(good, peer=b.node_id, peer_keys=None, held=None, revoked_keys=(), now=T0) is (
        Judgement.UNKNOWN_KEY
    )
    with pytest.raises(RevocationListError):
        sign_revocation_list(body, c)


def test_versions_only_go_forward(ids):
    b = ids["b"]
    held = signed_list(b, 10, serials=[1, 2]).body
    assert judge_b(signed_list(b, 11, serials=[1]), ids, held) is Judgement.ACCEPTED
    assert judge_b(signed_list(b, 9, serials=[]), ids, held) is Judgement.ROLLBACK
    assert judge_b(signed_list(b, 10, serials=[2, 1], issued_at=T0 + 5), ids, held) is Judgement.UNCHANGED
    assert judge_b(signed_list(b, 10, serials=[1]), ids, held) is Judgement.CONFLICT


def test_a_held_list_signed_with_a_key_revoked_here_does_not_block_the_next(ids):
    b = ids["b"]
    rotated = b.rotate(T0 - 10, overlap=3600)
    leaked = signed_list(b, 10**12)  # made-up version, signed with B's (leaked) first key
    assert standing(leaked, revoked_keys=[]) == leaked.body
    genuine = signed_list(rotated, 5, keys=[b.public_key])
    held = standing(leaked, revoked_keys=[])
    assert judge_b(genuine, ids, held, keys=rotated.keyset) is Judgement.ROLLBACK
    held = standing(leaked, revoked_keys=[b.public_key])  # we revoked B's leaked key
    assert held is None
    assert judge_b(genuine, ids, held, keys=rotated.keyset, revoked=[b.public_key]) is Judgement.ACCEPTED


def test_keys_revoked_expired_and_times(ids):
    b = ids["b"]
    lst = signed_list(b, 3)
    assert judge_b(lst, ids, revoked=[b.public_key]) is Judgement.REVOKED_KEY
    held = signed_list(b, 2, keys=[b.public_key]).body  # B itself revoked this key
    assert judge_b(lst, ids, held) is Judgement.REVOKED_KEY
    assert judge_b(signed_list(b, 3, issued_at=T0 + 3600), ids) is Judgement.FUTURE
    # B rotated; the old key's overlap is over: a list signed with it no longer counts
    rotated = b.rotate(T0 - 100, overlap=50)
    assert judge_b(lst, ids, keys=rotated.keyset) is Judgement.EXPIRED_KEY
    assert judge_b(signed_list(rotated, 3), ids, keys=rotated.keyset) is Judgement.ACCEPTED


def test_next_version_and_own_content(ids):
    assert next_version(None, T0) == T0
    assert next_version(T0, T0) == T0 + 1  # two changes within a second
    assert next_version(5, T0) == T0  # a publisher that lost its state still moves forward
    a, b = ids["a"], ids["b"]
    links = {(a.node_id, 1), (b.node_id, 2), (a.node_id, 4)}
    serials, keys = own_content(a.node_id, a.keyset, links, {a.public_key, b.public_key})
    assert serials == {1, 4} and keys == {a.public_key}


def registry_of(ids, lists) -> tuple[PeerRegistry, dict]:
    a, b, c = ids["a"], ids["b"], ids["c"]
    peers = {p.node_id: PeerEntry(p.node_id, name) for name, p in (("b", b), ("c", c))}
    links = [
        make_link(b, a.node_id, "buffers:read,jobs:submit", serial=7),
        make_link(c, a.node_id, "buffers:read", serial=7),
        make_link(a, b.node_id, "buffers:read", serial=7),
    ]
    return PeerRegistry(a.keyset, peers, links, Revocations(), peer_lists=lists), links


def test_registry_applies_a_peers_list_to_that_peers_links_only(ids):
    a, b, c = ids["a"], ids["b"], ids["c"]
    lists: dict[str, RevocationList] = {}
    registry, _ = registry_of(ids, lists)
    assert registry.outgoing(b.node_id, "jobs:submit", T0).allowed
    lists[b.node_id] = signed_list(b, 2, serials=[7]).body  # shared: effective at once
    assert not registry.outgoing(b.node_id, "jobs:submit", T0).allowed
    assert not registry.outgoing(b.node_id, "buffers:read", T0).allowed
    assert registry.granting_us("buffers:read", T0) == [c.node_id]  # C's serial 7 is C's own
    assert registry.incoming(b.node_id, "buffers:read", T0).allowed  # our grant to B: ours to revoke
    assert registry.revoked_by_peer(b.node_id) == [7]
    assert registry.grants_summary(b.node_id, T0)["from_peer"][0]["status"] == "revoked"
    # B lists C's key: that does not touch C (nor our requests from C)
    lists[b.node_id] = signed_list(b, 3, keys=[c.public_key]).body
    assert registry.outgoing(c.node_id, "buffers:read", T0).allowed
    assert registry.outgoing(b.node_id, "buffers:read", T0).allowed
    assert c.public_key not in registry.all_revoked_keys()
    assert c.public_key not in registry.revoked_keys_of(c.node_id)
    # B revokes its own key: its links signed with it, its claims and its requests stop counting
    lists[b.node_id] = signed_list(b, 4, keys=[b.public_key]).body
    assert not registry.outgoing(b.node_id, "buffers:read", T0).allowed
    assert b.public_key in registry.all_revoked_keys()
    assert b.public_key in registry.revoked_keys_of(b.node_id)
    assert registry.revoked_by_peer(b.node_id) == [7]

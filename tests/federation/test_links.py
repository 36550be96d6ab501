"""Peer links: documents, signatures, the lifecycle table, revocations, the registry."""

from __future__ import annotations

import dataclasses
import json

import pytest

from node.federation.canonical import b64encode
from node.federation.identity import NodeIdentity
from node.federation.links import (
    Link,
    LinkError,
    LinkStatus,
    Revocations,
    SignedLink,
    parse_grant_spec,
    parse_link_text,
    parse_revocations,
    verify_link,
)
from node.federation.registry import PeerEntry, PeerRegistry

from .support import T0, make_link

A = NodeIdentity.generate(T0 - 86400)
B = NodeIdentity.generate(T0 - 86400)
C = NodeIdentity.generate(T0 - 86400)
NONE = Revocations()


def test_link_file_round_trip():
    signed = make_link(
        A,
        B.node_id,
        "buffers:read,jobs:submit",
        limits={"jobs:submit.max_concurrent": 4},
        endpoints=("http://127.0.0.2:5533",),
    )
    parsed = parse_link_text(signed.to_text())
    assert parsed == signed
    assert parsed.issuer_keys.node_id == A.node_id
    assert parsed.link.grants == {"buffers:read": {}, "jobs:submit": {"max_concurrent": 4}}
    assert verify_link(parsed, parsed.issuer_keys, NONE, T0).valid


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["link"].update(grants={"buffers:delete": {}}), "unknown capability"),
        (lambda d: d["link"].update(grants={}), "non-empty"),
        (lambda d: d["link"].update(grants={"jobs:submit": {"max_concurrent": 0}}), "positive integer"),
        (lambda d: d["link"].update(grants={"jobs:submit": {"max_gpus": 1}}), "no limit"),
        (lambda d: d["link"].update(not_after=d["link"]["not_before"]), "later than"),
        (lambda d: d["link"].update(subject=d["link"]["issuer"]), "cannot grant itself"),
        (lambda d: d["link"].update(serial=True), "non-negative integer"),
        (lambda d: d["link"].update(subject_endpoints=["ftp://x"]), "http"),
        (lambda d: d["link"].update(extra=1), "unknown fields"),
        (lambda d: d["link"].pop("serial"), "missing fields"),
        (lambda d: d["signature"].update(value="abc"), "link"),
        (lambda d: d["issuer_keys"].update(node_id=C.node_id), "link"),
    ],
)
def test_malformed_link_documents(mutate, message):
    doc = make_link(A, B.node_id).to_document()
    mutate(doc)
    with pytest.raises(LinkError, match=message):
        parse_link_text(json.dumps(doc))


def test_grant_spec():
    assert parse_grant_spec("buffers:read, results:read") == {"buffers:read": {}, "results:read": {}}
    with pytest.raises(LinkError):
        parse_grant_spec("buffers:read", {"jobs:submit.max_concurrent": 2})
    with pytest.raises(LinkError):
        parse_grant_spec("")


# -- the lifecycle table --------------------------------------------------------------
#
# Each row: how the link was made, what the verifier knows, when it is checked, and the
# status it must get. "rotated" rows sign with the old key, then A rotates at T0 with a
# one-hour overlap.

A_ROTATED = A.rotate(T0, overlap=3600)


def _tampered():
    signed = make_link(A, B.node_id)
    return dataclasses.replace(signed, link=dataclasses.replace(signed.link, serial=99))


LIFECYCLE = [
    ("valid", make_link(A, B.node_id), A.keyset, NONE, T0, LinkStatus.VALID),
    (
        "not yet valid",
        make_link(A, B.node_id, not_before=T0 + 10),
        A.keyset,
        NONE,
        T0,
        LinkStatus.NOT_YET_VALID,
    ),
    ("valid from not_before", make_link(A, B.node_id, not_before=T0), A.keyset, NONE, T0, LinkStatus.VALID),
    ("expired", make_link(A, B.node_id, not_after=T0), A.keyset, NONE, T0, LinkStatus.EXPIRED),
    ("last second", make_link(A, B.node_id, not_after=T0 + 1), A.keyset, NONE, T0, LinkStatus.VALID),
    (
        "revoked serial",
        make_link(A, B.node_id, serial=7),
        A.keyset,
        Revocations(links=frozenset({(A.node_id, 7)})),
        T0,
        LinkStatus.REVOKED,
    ),
    (
        "other serial revoked",
        make_link(A, B.node_id, serial=8),
        A.keyset,
        Revocations(links=frozenset({(A.node_id, 7)})),
        T0,
        LinkStatus.VALID,
    ),
    (
        "revoked signing key",
        make_link(A, B.node_id),
        A.keyset,
        Revocations(keys=frozenset({A.public_key})),
        T0,
        LinkStatus.SIGNER_KEY_REVOKED,
    ),
    (
        "rotated: old key in overlap",
        make_link(A, B.node_id),
        A_ROTATED.keyset,
        NONE,
        T0 + 3600,
        LinkStatus.VALID,
    ),
    (
        "rotated: new key in overlap",
        make_link(A_ROTATED, B.node_id),
        A_ROTATED.keyset,
        NONE,
        T0 + 10,
        LinkStatus.VALID,
    ),
    (
        "rotated: old key after overlap",
        make_link(A, B.node_id),
        A_ROTATED.keyset,
        NONE,
        T0 + 3601,
        LinkStatus.SIGNER_KEY_EXPIRED,
    ),
    (
        "rotated: new key after overlap",
        make_link(A_ROTATED, B.node_id),
        A_ROTATED.keyset,
        NONE,
        T0 + 3601,
        LinkStatus.VALID,
    ),
    (
        "wrong signer",
        dataclasses.replace(make_link(C, B.node_id), link=make_link(A, B.node_id).link),
        A.keyset,
        NONE,
        T0,
        LinkStatus.WRONG_SIGNER,
    ),
    ("tampered", _tampered(), A.keyset, NONE, T0, LinkStatus.BAD_SIGNATURE),
    ("unknown issuer", make_link(A, B.node_id), None, NONE, T0, LinkStatus.UNKNOWN_ISSUER),
    ("issuer keys of another node", make_link(A, B.node_id), C.keyset, NONE, T0, LinkStatus.UNKNOWN_ISSUER),
]


@pytest.mark.parametrize(
    "name, signed, keys, revocations, now, status", LIFECYCLE, ids=[r[0] for r in LIFECYCLE]
)
def test_link_lifecycle(name, signed, keys, revocations, now, status):
    assert verify_link(signed, keys, revocations, now).status is status


@pytest.mark.parametrize(
    "name, signed, keys, revocations, now, status", LIFECYCLE, ids=[r[0] for r in LIFECYCLE]
)
def test_link_lifecycle_through_the_registry(name, signed, keys, revocations, now, status):
    """The same table, as B asks "may A's grant be relied on?" and A asks "does B get in?"."""
    if keys is None or keys.node_id != A.node_id:
        return
    # outgoing at B: links A signed for B
    b_side = PeerRegistry(
        B.keyset, {A.node_id: PeerEntry(A.node_id)}, [signed], revocations, {A.node_id: keys}
    )
    assert b_side.outgoing(A.node_id, "buffers:read", now).allowed is (status is LinkStatus.VALID)
    # incoming at A: the same links, which A signed itself
    own = keys
    a_side = PeerRegistry(own, {B.node_id: PeerEntry(B.node_id)}, [signed], revocations)
    decision = a_side.incoming(B.node_id, "buffers:read", now)
    assert decision.allowed is (status is LinkStatus.VALID), decision.reason


def test_registry_direction_rules():
    """A acts only on grants it signed; it relies only on grants B signed."""
    a_to_b = make_link(A, B.node_id, "buffers:read")
    b_to_a = make_link(B, A.node_id, "results:read")
    c_to_b = make_link(C, B.node_id, "jobs:submit")  # not between A and B
    # a link in B's name, claiming to grant A jobs:submit, but signed by A
    forged = dataclasses.replace(a_to_b, link=dataclasses.replace(b_to_a.link, grants={"jobs:submit": {}}))
    reg = PeerRegistry(A.keyset, {B.node_id: PeerEntry(B.node_id)}, [a_to_b, b_to_a, c_to_b, forged])
    assert reg.incoming(B.node_id, "buffers:read", T0).allowed
    assert not reg.incoming(B.node_id, "results:read", T0).allowed  # B granted it to A, not A to B
    assert reg.outgoing(B.node_id, "results:read", T0).allowed
    assert not reg.outgoing(B.node_id, "buffers:read", T0).allowed
    assert not reg.outgoing(B.node_id, "jobs:submit", T0).allowed  # forged: wrong signer
    assert not reg.incoming(C.node_id, "jobs:submit", T0).allowed  # C is no peer
    assert reg.granting_us("results:read", T0) == [B.node_id]
    assert c_to_b in reg.ignored
    assert reg.keyset(B.node_id) == B.keyset  # learned from the link's issuer_keys


def test_registry_picks_highest_serial_limits_and_reports():
    old = make_link(A, B.node_id, "jobs:submit", serial=1, limits={"jobs:submit.max_concurrent": 1})
    new = make_link(A, B.node_id, "jobs:submit", serial=2, limits={"jobs:submit.max_concurrent": 8})
    reg = PeerRegistry(A.keyset, {B.node_id: PeerEntry(B.node_id)}, [old, new])
    assert reg.incoming(B.node_id, "jobs:submit", T0).grant.limits == {"max_concurrent": 8}
    revoked = PeerRegistry(
        A.keyset,
        {B.node_id: PeerEntry(B.node_id)},
        [old, new],
        Revocations(links=frozenset({(A.node_id, 2)})),
    )
    assert revoked.incoming(B.node_id, "jobs:submit", T0).grant.limits == {"max_concurrent": 1}
    both = PeerRegistry(
        A.keyset,
        {B.node_id: PeerEntry(B.node_id)},
        [old, new],
        Revocations(links=frozenset({(A.node_id, 1), (A.node_id, 2)})),
    )
    decision = both.incoming(B.node_id, "jobs:submit", T0)
    assert not decision.allowed and "revoked" in decision.reason
    summary = reg.grants_summary(B.node_id, T0)
    assert [g["status"] for g in summary["to_peer"]] == ["valid", "valid"]


def test_registry_key_sets_only_move_forward():
    reg = PeerRegistry(A.keyset, {B.node_id: PeerEntry(B.node_id)}, [])
    b2 = B.rotate(T0, 60)
    fork = B.rotate(T0 + 1, 60)
    assert reg.learn_keyset(B.keyset)
    assert reg.learn_keyset(b2.keyset)
    assert not reg.learn_keyset(B.keyset)  # older
    assert not reg.learn_keyset(fork.keyset)  # a fork
    assert reg.keyset(B.node_id) == b2.keyset
    assert not reg.learn_keyset(C.keyset)  # not a peer


def test_endpoints_from_config_or_own_links():
    link = make_link(A, B.node_id, endpoints=("http://127.0.0.2:1234",))
    reg = PeerRegistry(A.keyset, {B.node_id: PeerEntry(B.node_id)}, [link])
    assert reg.endpoints(B.node_id, T0) == ("http://127.0.0.2:1234",)
    reg = PeerRegistry(A.keyset, {B.node_id: PeerEntry(B.node_id, urls=("http://x:1",))}, [link])
    assert reg.endpoints(B.node_id, T0) == ("http://x:1",)


def test_revocations_file():
    text = (
        f"links:\n  - serial: 3\n  - serial: 4\n    issuer: {C.node_id}\n"
        f"keys:\n  - key: {b64encode(C.public_key)}\n"
    )
    rev = parse_revocations(text, default_issuer=A.node_id)
    assert rev.links == {(A.node_id, 3), (C.node_id, 4)}
    assert rev.keys == {C.public_key}
    assert parse_revocations(rev.to_yaml(), default_issuer=A.node_id) == rev
    assert parse_revocations("", default_issuer=A.node_id) == Revocations()
    for bad in (
        "links: [{serial: x}]",
        "foo: 1",
        "keys: [{key: zz}]",
        "links: [{serial: 1, issuer: bob}]",
        ": :",
    ):
        with pytest.raises(LinkError):
            parse_revocations(bad, default_issuer=A.node_id)


def test_only_the_issuer_signs():
    link = Link(A.node_id, B.node_id, {"buffers:read": {}}, T0, T0 + 1, 1, T0)
    from node.federation.links import sign_link

    with pytest.raises(LinkError):
        sign_link(link, B)
    assert isinstance(sign_link(link, A), SignedLink)

"""Published revocation lists: what a node tells its peers it no longer stands behind (pure).

A node's revocations file takes effect at once for requests *it* receives. Its peers rely on
the links it issued them for their *outgoing* decisions (whom to ask for buffers, results,
jobs), so it also publishes what it revoked, as a document it signs::

    {"list": {"type": "seamless-node-revocations", "version": 1,
              "issuer": <node id>, "list_version": 1764312000, "issued_at": <unix s>,
              "serials": [3, 7], "keys": [<base64url public key>, ...]},
     "signature": {"key": <issuer public key>, "value": <Ed25519 signature>}}

The signature covers ``DOMAIN_REVOCATIONS`` + the canonical JSON of ``list``. ``serials``
are links the issuer issued and revoked; ``keys`` are keys of the issuer's own key set it
revoked (a leaked key, an old key after a rotation). ``list_version`` grows with every
change of content (see ``next_version``).

``judge`` decides whether a fetched list replaces the one held for that peer: it must be
signed by the peer itself (a key of its key set, valid now and not revoked, neither by us
nor by the list we hold), not be from the future, and carry a higher version than the list
held (an older one is a rollback; the same version with other content, an equivocation).
A held list signed with a key revoked here does not count for that (``standing``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Collection

from .canonical import DOMAIN_REVOCATIONS, b64decode, b64encode, canonical_json
from .identity import KeySet, NodeIdentity, is_node_id, verify_signature

LIST_TYPE = "seamless-node-revocations"
#: most serials / keys one list may hold (bounds the cost of checking and storing one)
MAX_ENTRIES = 100_000
_INT_MAX = 2**63 - 1


class RevocationListError(ValueError):
    """A revocation list document that cannot be parsed."""


def _is_int(value: object, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= _INT_MAX


@dataclass(frozen=True)
class RevocationList:
    issuer: str
    list_version: int
    issued_at: int
    serials: frozenset[int] = frozenset()
    keys: frozenset[bytes] = frozenset()

    def to_body(self) -> dict[str, Any]:
        return {
            "type": LIST_TYPE,
            "version": 1,
            "issuer": self.issuer,
            "list_version": self.list_version,
            "issued_at": self.issued_at,
            "serials": sorted(self.serials),
            "keys": sorted(b64encode(k) for k in self.keys),
        }

    def message(self) -> bytes:
        return DOMAIN_REVOCATIONS + canonical_json(self.to_body())

    def same_content(self, other: "RevocationList") -> bool:
        return (self.issuer, self.serials, self.keys) == (other.issuer, other.serials, other.keys)

    @classmethod
    def from_body(cls, body: object) -> "RevocationList":
        if not isinstance(body, dict):
            raise RevocationListError("list must be an object")
        expected = {"type", "version", "issuer", "list_version", "issued_at", "serials", "keys"}
        if set(body) != expected:
            raise RevocationListError(f"list fields must be exactly {', '.join(sorted(expected))}")
        if body["type"] != LIST_TYPE or body["version"] != 1:
            raise RevocationListError(f"not a {LIST_TYPE} document of version 1")
        if not is_node_id(body["issuer"]):
            raise RevocationListError("issuer is not a node id")
        if not _is_int(body["list_version"], 1) or not _is_int(body["issued_at"]):
            raise RevocationListError("list_version and issued_at must be (positive) integers")
        serials, keys = body["serials"], body["keys"]
        if not isinstance(serials, list) or not isinstance(keys, list):
            raise RevocationListError("serials and keys must be lists")
        if len(serials) > MAX_ENTRIES or len(keys) > MAX_ENTRIES:
            raise RevocationListError(f"at most {MAX_ENTRIES} serials and keys")
        if not all(_is_int(s) for s in serials):
            raise RevocationListError("serials must be non-negative integers")
        try:
            raw_keys = frozenset(b64decode(k, length=32) for k in keys)
        except ValueError as exc:
            raise RevocationListError(f"bad key: {exc}") from None
        return cls(body["issuer"], body["list_version"], body["issued_at"], frozenset(serials), raw_keys)


@dataclass(frozen=True)
class SignedRevocationList:
    body: RevocationList
    key: bytes
    signature: bytes

    @property
    def issuer(self) -> str:
        return self.body.issuer

    @property
    def list_version(self) -> int:
        return self.body.list_version

    def to_document(self) -> dict[str, Any]:
        return {
            "list": self.body.to_body(),
            "signature": {"key": b64encode(self.key), "value": b64encode(self.signature)},
        }


def sign_revocation_list(body: RevocationList, identity: NodeIdentity) -> SignedRevocationList:
    if body.issuer != identity.node_id:
        raise RevocationListError("a node can only sign its own revocation list")
    return SignedRevocationList(body, identity.public_key, identity.sign(body.message()))


def parse_revocation_list(doc: object) -> SignedRevocationList:
    """Structure only (RevocationListError); whether it counts is ``judge``'s business."""
    if not isinstance(doc, dict) or set(doc) != {"list", "signature"} or not isinstance(
        doc["signature"], dict
    ):
        raise RevocationListError("expected {list, signature: {key, value}}")
    body = RevocationList.from_body(doc["list"])
    try:
        key = b64decode(doc["signature"].get("key"), length=32)
        signature = b64decode(doc["signature"].get("value"), length=64)
    except ValueError as exc:
        raise RevocationListError(f"bad signature field: {exc}") from None
    return SignedRevocationList(body, key, signature)


def own_content(
    issuer: str, keyset: KeySet, links: Collection[tuple[str, int]], keys: Collection[bytes]
) -> tuple[frozenset[int], frozenset[bytes]]:
    """What a node publishes from its revocations: serials of links *it* issued, and the
    revoked keys that are its own (revocations of other nodes' keys are its private business)."""
    own_keys = {p.public_key for p in keyset.periods}
    return (
        frozenset(serial for link_issuer, serial in links if link_issuer == issuer),
        frozenset(k for k in keys if k in own_keys),
    )


def next_version(previous: int | None, now: int) -> int:
    """The version of a list whose content changed: above the previous one, and at least the
    current time, so that a publisher that lost its state still outranks what it published."""
    return max((previous or 0) + 1, now, 1)


class Judgement(enum.Enum):
    ACCEPTED = "accepted"  # newer than the list held: it replaces it
    UNCHANGED = "unchanged"  # the list held, again (maybe signed anew)
    WRONG_ISSUER = "wrong-issuer"  # a list of another node
    UNKNOWN_KEY = "unknown-key"  # not signed by a key of the issuer's key set
    BAD_SIGNATURE = "bad-signature"
    REVOKED_KEY = "revoked-key"  # signed by a key revoked (by us, or by the list held)
    EXPIRED_KEY = "expired-key"  # signed by a key the issuer rotated out
    FUTURE = "from-the-future"
    ROLLBACK = "rollback"  # an older version than the one held
    CONFLICT = "conflict"  # the version held, with other content

    @property
    def ok(self) -> bool:
        return self in (Judgement.ACCEPTED, Judgement.UNCHANGED)


def check_signature(signed: SignedRevocationList, issuer_keys: KeySet | None) -> Judgement | None:
    """Is it signed by a key of *issuer_keys*? None when it is (any time), else why not."""
    if issuer_keys is None or issuer_keys.node_id != signed.issuer or issuer_keys.find(signed.key) is None:
        return Judgement.UNKNOWN_KEY
    if not verify_signature(signed.key, signed.signature, signed.body.message()):
        return Judgement.BAD_SIGNATURE
    return None


def standing(held: SignedRevocationList | None, revoked_keys: Collection[bytes]) -> RevocationList | None:
    """The list held, for version comparisons: none if it was signed with a key revoked here
    (a leaked key's list must not block the peer's genuine lists by a made-up version)."""
    if held is None or held.key in revoked_keys:
        return None
    return held.body


def judge(
    signed: SignedRevocationList,
    *,
    peer: str,
    peer_keys: KeySet | None,
    held: RevocationList | None,
    revoked_keys: Collection[bytes],
    now: int,
    max_skew: int = 60,
) -> Judgement:
    """May *signed*, fetched from *peer*, replace *held* (the list we hold from it)?"""
    if signed.issuer != peer:
        return Judgement.WRONG_ISSUER
    bad = check_signature(signed, peer_keys)
    if bad is not None:
        return bad
    assert peer_keys is not None
    if signed.key in revoked_keys or (held is not None and signed.key in held.keys):
        return Judgement.REVOKED_KEY
    period = peer_keys.find(signed.key)
    if period is None or not period.valid_at(now, early=max_skew):
        return Judgement.EXPIRED_KEY
    if signed.body.issued_at > now + max_skew:
        return Judgement.FUTURE
    if held is None or signed.list_version > held.list_version:
        return Judgement.ACCEPTED
    if signed.list_version < held.list_version:
        return Judgement.ROLLBACK
    return Judgement.UNCHANGED if signed.body.same_content(held) else Judgement.CONFLICT

"""Signed result claims, and the store that keeps them with their signer.

A transformation result cannot be checked by hashing (security.md rule 6): it is a
*claim*, ``(transformation, result, signer, time)`` signed by the signer's node key::

    {"transformation": <cs>, "result": <cs>, "signer": <node id>, "time": <unix s>,
     "key": <signer's public key>, "signature": <Ed25519 over DOMAIN_CLAIM + canonical
     JSON of the first four fields>}

``verify_claim`` is pure. A claim counts only if the signature is good, the key belongs to
the signer's key set and was valid at the claim's time, the key is not revoked, the time
is not in the future, and the signer and transformation are the ones asked about.

``ClaimStore`` keeps claims in ``<data_dir>/federation/claims.db`` (SQLite), one per
(transformation, signer). Whether a stored claim may be *used* is decided when it is read
(see service.FederationService.lookup_result): its signer must hold ``results:write``
trust here at that moment, and its key must not be revoked; a revoked key or a lost grant
takes its claims out of use at once, without touching the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Collection

from ..checksum import is_checksum
from .canonical import DOMAIN_CLAIM, b64decode, b64encode, canonical_json
from .identity import KeySet, NodeIdentity, is_node_id, verify_signature
from .sqlite_file import SqliteFile


@dataclass(frozen=True)
class Claim:
    transformation: str
    result: str
    signer: str
    time: int
    key: bytes
    signature: bytes

    def message(self) -> bytes:
        return claim_message(self.transformation, self.result, self.signer, self.time)

    def to_document(self) -> dict[str, Any]:
        return {
            "transformation": self.transformation,
            "result": self.result,
            "signer": self.signer,
            "time": self.time,
            "key": b64encode(self.key),
            "signature": b64encode(self.signature),
        }


def claim_message(transformation: str, result: str, signer: str, time: int) -> bytes:
    body = {"transformation": transformation, "result": result, "signer": signer, "time": time}
    return DOMAIN_CLAIM + canonical_json(body)


def make_claim(identity: NodeIdentity, transformation: str, result: str, now: int) -> Claim:
    message = claim_message(transformation, result, identity.node_id, now)
    return Claim(transformation, result, identity.node_id, now, identity.public_key, identity.sign(message))


def parse_claim(doc: object) -> Claim:
    """Structure only (ValueError); whether it counts is verify_claim's business."""
    if not isinstance(doc, dict) or set(doc) != {
        "transformation",
        "result",
        "signer",
        "time",
        "key",
        "signature",
    }:
        raise ValueError("a claim is {transformation, result, signer, time, key, signature}")
    if not is_checksum(doc["transformation"]) or not is_checksum(doc["result"]):
        raise ValueError("claim checksums must be 64 lowercase hex characters")
    if not is_node_id(doc["signer"]):
        raise ValueError("claim signer is not a node id")
    if not isinstance(doc["time"], int) or isinstance(doc["time"], bool) or doc["time"] < 0:
        raise ValueError("claim time must be a non-negative integer")
    return Claim(
        doc["transformation"],
        doc["result"],
        doc["signer"],
        doc["time"],
        b64decode(doc["key"], length=32),
        b64decode(doc["signature"], length=64),
    )


class ClaimStatus(enum.Enum):
    VALID = "valid"
    WRONG_SIGNER = "wrong-signer"  # not signed in the name of the node that answered
    WRONG_TRANSFORMATION = "wrong-transformation"
    UNKNOWN_KEY = "unknown-key"
    REVOKED_KEY = "revoked-key"
    KEY_NOT_VALID_THEN = "key-not-valid-then"
    FUTURE = "from-the-future"
    BAD_SIGNATURE = "bad-signature"


def verify_claim(
    claim: Claim,
    *,
    signer_keys: KeySet | None,
    now: int,
    expected_signer: str | None = None,
    expected_transformation: str | None = None,
    revoked_keys: Collection[bytes] = (),
    max_skew: int = 60,
) -> ClaimStatus:
    if expected_signer is not None and claim.signer != expected_signer:
        return ClaimStatus.WRONG_SIGNER
    if expected_transformation is not None and claim.transformation != expected_transformation:
        return ClaimStatus.WRONG_TRANSFORMATION
    if signer_keys is None or signer_keys.node_id != claim.signer:
        return ClaimStatus.UNKNOWN_KEY
    period = signer_keys.find(claim.key)
    if period is None:
        return ClaimStatus.UNKNOWN_KEY
    if claim.key in revoked_keys:
        return ClaimStatus.REVOKED_KEY
    if claim.time > now + max_skew:
        return ClaimStatus.FUTURE
    if not period.valid_at(claim.time, early=max_skew):
        return ClaimStatus.KEY_NOT_VALID_THEN
    if not verify_signature(claim.key, claim.signature, claim.message()):
        return ClaimStatus.BAD_SIGNATURE
    return ClaimStatus.VALID


class ClaimStore(SqliteFile):
    """Claims by (transformation, signer) in a small SQLite file (blocking API, one lock)."""

    what = "the claim store"
    schema = (
        "CREATE TABLE IF NOT EXISTS claims ("
        " transformation TEXT NOT NULL, signer TEXT NOT NULL, result TEXT NOT NULL,"
        " time INTEGER NOT NULL, key TEXT NOT NULL, signature TEXT NOT NULL,"
        " PRIMARY KEY (transformation, signer)) WITHOUT ROWID",
    )

    def put(self, claims: list[Claim]) -> None:
        """Store (or replace, if newer) each signer's claim about a transformation."""
        with self._lock:
            db = self._db()
            db.execute("BEGIN")
            for c in claims:
                db.execute(
                    "INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (transformation, signer) "
                    "DO UPDATE SET result=excluded.result, time=excluded.time, key=excluded.key, "
                    "signature=excluded.signature WHERE excluded.time >= claims.time",
                    (c.transformation, c.signer, c.result, c.time, b64encode(c.key), b64encode(c.signature)),
                )
            db.execute("COMMIT")

    def get(self, transformation: str) -> list[Claim]:
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT transformation, result, signer, time, key, signature FROM claims "
                    "WHERE transformation = ? ORDER BY time DESC",
                    (transformation,),
                )
                .fetchall()
            )
        return [Claim(t, r, s, tm, b64decode(k), b64decode(sig)) for t, r, s, tm, k, sig in rows]

    def purge_signer(self, signer: str) -> int:
        with self._lock:
            return self._db().execute("DELETE FROM claims WHERE signer = ?", (signer,)).rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM claims").fetchone()[0])

"""Signed requests between nodes: pure functions, bytes and values in, verdicts out.

A request from node O to node D carries these headers::

    X-Seamless-Origin          O's node id
    X-Seamless-Destination     D's node id
    X-Seamless-Timestamp       Unix seconds when O signed
    X-Seamless-Nonce           32 random hex characters, never reused
    X-Seamless-Content-SHA256  SHA-256 of the request body (of b"" when there is none)
    X-Seamless-On-Behalf-Of    optional: the node id of the original submitter (forwarding)
    X-Seamless-Key             the public key that signed (one of O's key set)
    X-Seamless-Signature       Ed25519 signature over the canonical request (below)

The canonical request is ``DOMAIN_REQUEST`` followed by the method, the request target
exactly as sent (raw path, ``?`` and raw query), the body hash, origin, destination, the
on-behalf-of id (empty when absent), timestamp and nonce, one per line. Changing any of
them (a tampered path or query, a body swapped under its hash, a request replayed to
another node) breaks the signature.

``verify_request`` checks everything that can be checked without state; the nonce must
then be recorded (see replay.NonceStore) to refuse replays. Every refusal names one
``Reason``; all of them mean HTTP 401.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Collection, Mapping

from .canonical import DOMAIN_REQUEST, b64decode, b64encode
from .identity import KeySet, NodeIdentity, is_node_id, verify_signature

H_ORIGIN = "X-Seamless-Origin"
H_DESTINATION = "X-Seamless-Destination"
H_TIMESTAMP = "X-Seamless-Timestamp"
H_NONCE = "X-Seamless-Nonce"
H_BODY = "X-Seamless-Content-SHA256"
H_ON_BEHALF = "X-Seamless-On-Behalf-Of"
H_KEY = "X-Seamless-Key"
H_SIGNATURE = "X-Seamless-Signature"
REQUIRED = (H_ORIGIN, H_DESTINATION, H_TIMESTAMP, H_NONCE, H_BODY, H_KEY, H_SIGNATURE)

#: largest accepted difference between the signer's clock and ours, in seconds
MAX_SKEW = 60
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_NONCE_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)
_HEX64_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
_TIME_RE = re.compile(r"[0-9]{1,12}", re.ASCII)
_METHOD_RE = re.compile(r"[A-Z]{1,16}", re.ASCII)


class Reason(enum.Enum):
    """Why a signed request was refused (every one of them answers 401)."""

    OK = "ok"
    MISSING_HEADER = "missing-header"
    MALFORMED = "malformed-header"
    WRONG_DESTINATION = "wrong-destination"
    UNKNOWN_ORIGIN = "unknown-origin"
    UNKNOWN_KEY = "unknown-key"
    REVOKED_KEY = "revoked-key"
    EXPIRED_KEY = "expired-key"
    BODY_MISMATCH = "body-mismatch"
    BAD_SIGNATURE = "bad-signature"
    STALE = "stale-timestamp"
    REPLAY = "replayed-nonce"


@dataclass(frozen=True)
class SignedRequest:
    """The signature headers of one request, parsed and well-formed."""

    origin: str
    destination: str
    timestamp: int
    nonce: str
    body_sha256: str
    on_behalf_of: str
    key: bytes
    signature: bytes


@dataclass(frozen=True)
class Verdict:
    reason: Reason
    detail: str = ""
    request: SignedRequest | None = None

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value


def canonical_request(
    method: str,
    target: str,
    body_sha256: str,
    origin: str,
    destination: str,
    on_behalf_of: str,
    timestamp: int,
    nonce: str,
) -> bytes:
    parts = [method.upper(), target, body_sha256, origin, destination, on_behalf_of, str(timestamp), nonce]
    for part in parts:
        if "\n" in part or "\r" in part:
            raise ValueError("request fields cannot contain line breaks")
    return DOMAIN_REQUEST + "\n".join(parts).encode("utf-8", "surrogateescape")


def new_nonce() -> str:
    return secrets.token_hex(16)


def sign_request(
    identity: NodeIdentity,
    *,
    method: str,
    target: str,
    body: bytes | None = None,
    body_sha256: str | None = None,
    destination: str,
    timestamp: int,
    nonce: str | None = None,
    on_behalf_of: str = "",
) -> dict[str, str]:
    """The signature headers for a request (give *body*, or its hash as *body_sha256*)."""
    if body_sha256 is None:
        body_sha256 = hashlib.sha256(body or b"").hexdigest()
    nonce = nonce or new_nonce()
    message = canonical_request(
        method, target, body_sha256, identity.node_id, destination, on_behalf_of, timestamp, nonce
    )
    headers = {
        H_ORIGIN: identity.node_id,
        H_DESTINATION: destination,
        H_TIMESTAMP: str(timestamp),
        H_NONCE: nonce,
        H_BODY: body_sha256,
        H_KEY: b64encode(identity.public_key),
        H_SIGNATURE: b64encode(identity.sign(message)),
    }
    if on_behalf_of:
        headers[H_ON_BEHALF] = on_behalf_of
    return headers


def parse_headers(headers: Mapping[str, str]) -> SignedRequest | Verdict:
    """The signature headers, or a Verdict saying which one is missing or malformed."""
    lowered = {k.lower(): v for k, v in headers.items()}
    values: dict[str, str] = {}
    for name in REQUIRED:
        value = lowered.get(name.lower())
        if value is None:
            return Verdict(Reason.MISSING_HEADER, f"no {name} header")
        values[name] = value
    on_behalf = lowered.get(H_ON_BEHALF.lower(), "")
    try:
        for name in (H_ORIGIN, H_DESTINATION):
            if not is_node_id(values[name]):
                raise ValueError(f"{name} is not a node id")
        if on_behalf and not is_node_id(on_behalf):
            raise ValueError(f"{H_ON_BEHALF} is not a node id")
        if not _TIME_RE.fullmatch(values[H_TIMESTAMP]):
            raise ValueError(f"{H_TIMESTAMP} is not a whole number of seconds")
        if not _NONCE_RE.fullmatch(values[H_NONCE]):
            raise ValueError(f"{H_NONCE} must be 32 lowercase hex characters")
        if not _HEX64_RE.fullmatch(values[H_BODY]):
            raise ValueError(f"{H_BODY} must be 64 lowercase hex characters")
        key = b64decode(values[H_KEY], length=32)
        signature = b64decode(values[H_SIGNATURE], length=64)
    except ValueError as exc:
        return Verdict(Reason.MALFORMED, str(exc))
    return SignedRequest(
        origin=values[H_ORIGIN],
        destination=values[H_DESTINATION],
        timestamp=int(values[H_TIMESTAMP]),
        nonce=values[H_NONCE],
        body_sha256=values[H_BODY],
        on_behalf_of=on_behalf,
        key=key,
        signature=signature,
    )


def verify_request(
    *,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body_sha256: str | None,
    self_id: str,
    keysets: Mapping[str, KeySet],
    revoked_keys: Collection[bytes] = (),
    now: int,
    max_skew: int = MAX_SKEW,
) -> Verdict:
    """Check a request's signature headers against what we know; no state is changed.

    *body_sha256* is the hash of the body as received, or None when the caller checks the
    body against the signed hash itself (a streamed upload whose name is its hash).
    *keysets* holds the key sets of the nodes we accept requests from.
    """
    parsed = parse_headers(headers)
    if isinstance(parsed, Verdict):
        return parsed
    if not _METHOD_RE.fullmatch(method.upper()) or "\n" in target or "\r" in target:
        return Verdict(Reason.MALFORMED, "malformed request line")
    if parsed.destination != self_id:
        return Verdict(
            Reason.WRONG_DESTINATION, f"addressed to {parsed.destination}, this is {self_id}", parsed
        )
    keyset = keysets.get(parsed.origin)
    if keyset is None:
        return Verdict(Reason.UNKNOWN_ORIGIN, f"{parsed.origin} is not a known peer", parsed)
    period = keyset.find(parsed.key)
    if period is None:
        return Verdict(Reason.UNKNOWN_KEY, f"the key is not one of {parsed.origin}'s keys", parsed)
    if parsed.key in revoked_keys:
        return Verdict(Reason.REVOKED_KEY, "the key has been revoked", parsed)
    if not period.valid_at(now, early=max_skew):
        return Verdict(Reason.EXPIRED_KEY, "the key is not valid now (rotated out or not yet active)", parsed)
    if body_sha256 is not None and body_sha256 != parsed.body_sha256:
        return Verdict(Reason.BODY_MISMATCH, "the body does not match its signed hash", parsed)
    message = canonical_request(
        method,
        target,
        parsed.body_sha256,
        parsed.origin,
        parsed.destination,
        parsed.on_behalf_of,
        parsed.timestamp,
        parsed.nonce,
    )
    if not verify_signature(parsed.key, parsed.signature, message):
        return Verdict(Reason.BAD_SIGNATURE, "the signature does not match the request", parsed)
    if abs(now - parsed.timestamp) > max_skew:
        return Verdict(
            Reason.STALE, f"signed at {parsed.timestamp}, now is {now} (more than {max_skew} s apart)", parsed
        )
    return Verdict(Reason.OK, "", parsed)

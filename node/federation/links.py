"""Peer links: signed grants from one node (the issuer) to another (the subject).

A link file is JSON::

    {"link": {"type": "seamless-node-link", "version": 1,
              "issuer": <node id>, "subject": <node id>,
              "subject_endpoints": ["https://b.example.org:5533"],
              "grants": {"buffers:read": {}, "jobs:submit": {"max_concurrent": 4}},
              "not_before": <unix s>, "not_after": <unix s>, "serial": 7, "issued_at": <unix s>},
     "signature": {"key": <issuer public key>, "value": <Ed25519 signature>},
     "issuer_keys": <the issuer's key set document>}

The signature covers ``DOMAIN_LINK`` + the canonical JSON of ``link``. ``issuer_keys`` is
not signed by the link but is self-certifying (its node id is the hash of its first key),
so the subject learns the issuer's keys from the link itself.

``verify_link`` is pure: it takes the link, the issuer's key set, the revocations and the
time, and returns a ``LinkStatus``. A link counts only while it is valid *now*: inside its
window, not revoked (by serial or through its signing key), and signed by a key of the
issuer that is itself valid now (a link signed with a key that has been rotated out must
be issued again). Nothing here is transitive: a link says what its issuer allows its
subject, nothing more.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from ..errors import NodeError
from .canonical import DOMAIN_LINK, b64decode, b64encode, canonical_json
from .identity import IdentityError, KeySet, NodeIdentity, is_node_id, verify_signature

LINK_TYPE = "seamless-node-link"
#: every capability a link can grant, and the limits each accepts
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "buffers:read": ("max_concurrent", "max_per_minute"),
    "buffers:write": ("max_concurrent", "max_per_minute"),
    "results:read": ("max_concurrent", "max_per_minute"),
    "results:write": ("max_concurrent", "max_per_minute"),
    "jobs:submit": ("max_concurrent", "max_per_minute"),
    "compile:submit": ("max_concurrent", "max_per_minute"),
    "forward": ("max_concurrent", "max_per_minute"),
}
MAX_ENDPOINTS = 16
_URL_RE = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?", re.ASCII)


class LinkError(NodeError):
    """A link document that cannot be parsed or built."""

    http_status = 400


class LinkStatus(enum.Enum):
    VALID = "valid"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    UNKNOWN_ISSUER = "unknown-issuer"  # no key set known for the issuer
    WRONG_SIGNER = "wrong-signer"  # signed by a key that is not the issuer's
    SIGNER_KEY_EXPIRED = "signer-key-expired"  # the issuer's key was rotated out
    SIGNER_KEY_REVOKED = "signer-key-revoked"
    BAD_SIGNATURE = "bad-signature"


@dataclass(frozen=True)
class Link:
    issuer: str
    subject: str
    grants: Mapping[str, Mapping[str, int]]
    not_before: int
    not_after: int
    serial: int
    issued_at: int
    subject_endpoints: tuple[str, ...] = ()

    def to_body(self) -> dict[str, Any]:
        return {
            "type": LINK_TYPE,
            "version": 1,
            "issuer": self.issuer,
            "subject": self.subject,
            "subject_endpoints": list(self.subject_endpoints),
            "grants": {cap: dict(limits) for cap, limits in self.grants.items()},
            "not_before": self.not_before,
            "not_after": self.not_after,
            "serial": self.serial,
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_body(cls, body: object) -> "Link":
        """Validate a link body (every field, its type and range); LinkError otherwise."""
        if not isinstance(body, dict):
            raise LinkError("link: expected an object")
        expected = {
            "type",
            "version",
            "issuer",
            "subject",
            "subject_endpoints",
            "grants",
            "not_before",
            "not_after",
            "serial",
            "issued_at",
        }
        if set(body) != expected:
            missing, extra = expected - set(body), set(body) - expected
            raise LinkError(f"link: missing fields {sorted(missing)}, unknown fields {sorted(extra)}")
        if body["type"] != LINK_TYPE or body["version"] != 1:
            raise LinkError("link: not a seamless-node link (version 1)")
        for name in ("issuer", "subject"):
            if not is_node_id(body[name]):
                raise LinkError(f"link: {name} is not a node id")
        if body["issuer"] == body["subject"]:
            raise LinkError("link: a node cannot grant itself")
        for name in ("not_before", "not_after", "serial", "issued_at"):
            if not _is_int(body[name]) or body[name] < 0:
                raise LinkError(f"link: {name} must be a non-negative integer")
        if body["not_after"] <= body["not_before"]:
            raise LinkError("link: not_after must be later than not_before")
        return cls(
            issuer=body["issuer"],
            subject=body["subject"],
            grants=parse_grants(body["grants"]),
            not_before=body["not_before"],
            not_after=body["not_after"],
            serial=body["serial"],
            issued_at=body["issued_at"],
            subject_endpoints=parse_endpoints(body["subject_endpoints"]),
        )

    def message(self) -> bytes:
        return DOMAIN_LINK + canonical_json(self.to_body())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_endpoints(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_ENDPOINTS:
        raise LinkError(f"link: subject_endpoints must be a list of at most {MAX_ENDPOINTS} URLs")
    for url in value:
        if not isinstance(url, str) or not _URL_RE.fullmatch(url):
            raise LinkError(f"link: endpoint {url!r} is not an http(s) URL")
    return tuple(value)


def parse_grants(value: object) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict) or not value:
        raise LinkError("link: grants must be a non-empty object {capability: {limit: value}}")
    grants: dict[str, dict[str, int]] = {}
    for cap, limits in value.items():
        if cap not in CAPABILITIES:
            raise LinkError(f"link: unknown capability {cap!r} (known: {', '.join(CAPABILITIES)})")
        if not isinstance(limits, dict):
            raise LinkError(f"link: limits of {cap} must be an object")
        for key, limit in limits.items():
            if key not in CAPABILITIES[cap]:
                raise LinkError(f"link: {cap} has no limit {key!r} (known: {', '.join(CAPABILITIES[cap])})")
            if not _is_int(limit) or limit < 1:
                raise LinkError(f"link: {cap}.{key} must be a positive integer")
        grants[cap] = dict(limits)
    return grants


def parse_grant_spec(spec: str, limits: Mapping[str, int] | None = None) -> dict[str, dict[str, int]]:
    """``"buffers:read,jobs:submit"`` plus ``{"jobs:submit.max_concurrent": 4}`` -> grants."""
    caps = [c.strip() for c in spec.split(",") if c.strip()]
    grants: dict[str, dict[str, int]] = {cap: {} for cap in caps}
    for name, value in (limits or {}).items():
        cap, _, key = name.rpartition(".")
        if cap not in grants:
            raise LinkError(f"limit {name}: {cap or name!r} is not among the granted capabilities")
        grants[cap][key] = value
    return parse_grants(grants)


@dataclass(frozen=True)
class SignedLink:
    link: Link
    key: bytes
    signature: bytes
    issuer_keys: KeySet | None = field(default=None, compare=False)

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "link": self.link.to_body(),
            "signature": {"key": b64encode(self.key), "value": b64encode(self.signature)},
        }
        if self.issuer_keys is not None:
            doc["issuer_keys"] = self.issuer_keys.to_document()
        return doc

    def to_text(self) -> str:
        return json.dumps(self.to_document(), indent=2, sort_keys=True) + "\n"


def sign_link(link: Link, identity: NodeIdentity) -> SignedLink:
    if link.issuer != identity.node_id:
        raise LinkError("a node can only sign links it issues")
    return SignedLink(link, identity.public_key, identity.sign(link.message()), identity.keyset)


def parse_link_document(doc: object, *, source: str = "link") -> SignedLink:
    """Parse a link file's JSON (structure only: use verify_link to decide whether it counts)."""
    try:
        if not isinstance(doc, dict) or not isinstance(doc.get("signature"), dict):
            raise LinkError("expected {link, signature[, issuer_keys]}")
        link = Link.from_body(doc.get("link"))
        key = b64decode(doc["signature"].get("key"), length=32)
        signature = b64decode(doc["signature"].get("value"), length=64)
        issuer_keys = None
        if doc.get("issuer_keys") is not None:
            issuer_keys = KeySet.from_document(doc["issuer_keys"], node_id=link.issuer)
    except (LinkError, IdentityError, ValueError) as exc:
        raise LinkError(f"{source}: {exc}") from None
    return SignedLink(link, key, signature, issuer_keys)


def parse_link_text(text: str | bytes, *, source: str = "link") -> SignedLink:
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LinkError(f"{source}: not a JSON link document: {exc}") from None
    return parse_link_document(doc, source=source)


@dataclass(frozen=True)
class Revocations:
    """Links (issuer, serial) and public keys that must not be relied on any more."""

    links: frozenset[tuple[str, int]] = frozenset()
    keys: frozenset[bytes] = frozenset()

    def revokes(self, link: SignedLink) -> bool:
        return (link.link.issuer, link.link.serial) in self.links or link.key in self.keys

    def to_yaml(self) -> str:
        doc = {
            "links": [{"issuer": i, "serial": s} for i, s in sorted(self.links)],
            "keys": [{"key": b64encode(k)} for k in sorted(self.keys)],
        }
        return yaml.safe_dump(doc, sort_keys=False)


def parse_revocations(text: str, *, default_issuer: str, source: str = "revocations") -> Revocations:
    """Parse a revocations file (YAML: ``links: [{serial, issuer?}]``, ``keys: [{key}]``)."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise LinkError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or set(doc) - {"links", "keys"}:
        raise LinkError(f"{source}: expected a mapping with 'links' and/or 'keys'")
    links, keys = set(), set()
    for entry in doc.get("links") or []:
        if not isinstance(entry, dict) or not _is_int(entry.get("serial")):
            raise LinkError(f"{source}: each link revocation needs an integer serial")
        issuer = entry.get("issuer", default_issuer)
        if not is_node_id(issuer):
            raise LinkError(f"{source}: {issuer!r} is not a node id")
        links.add((issuer, entry["serial"]))
    for entry in doc.get("keys") or []:
        try:
            keys.add(b64decode(entry.get("key") if isinstance(entry, dict) else entry, length=32))
        except ValueError as exc:
            raise LinkError(f"{source}: bad revoked key: {exc}") from None
    return Revocations(frozenset(links), frozenset(keys))


@dataclass(frozen=True)
class LinkVerdict:
    status: LinkStatus
    detail: str = ""

    @property
    def valid(self) -> bool:
        return self.status is LinkStatus.VALID


def verify_link(
    signed: SignedLink, issuer_keys: KeySet | None, revocations: Revocations, now: int
) -> LinkVerdict:
    """Does this link count at time *now*? (Pure; see the module docstring.)"""
    link = signed.link
    if issuer_keys is None or issuer_keys.node_id != link.issuer:
        return LinkVerdict(LinkStatus.UNKNOWN_ISSUER, f"no keys known for issuer {link.issuer}")
    period = issuer_keys.find(signed.key)
    if period is None:
        return LinkVerdict(LinkStatus.WRONG_SIGNER, "signed by a key that is not the issuer's")
    if not verify_signature(signed.key, signed.signature, link.message()):
        return LinkVerdict(LinkStatus.BAD_SIGNATURE, "the signature does not match the link")
    if signed.key in revocations.keys:
        return LinkVerdict(LinkStatus.SIGNER_KEY_REVOKED, "the key that signed it has been revoked")
    if (link.issuer, link.serial) in revocations.links:
        return LinkVerdict(LinkStatus.REVOKED, f"serial {link.serial} has been revoked")
    if not period.valid_at(now):
        return LinkVerdict(
            LinkStatus.SIGNER_KEY_EXPIRED, "signed by a key the issuer has rotated out; re-issue it"
        )
    if now < link.not_before:
        return LinkVerdict(LinkStatus.NOT_YET_VALID, f"valid from {link.not_before}")
    if now >= link.not_after:
        return LinkVerdict(LinkStatus.EXPIRED, f"expired at {link.not_after}")
    return LinkVerdict(LinkStatus.VALID)

"""Node identity: an Ed25519 key pair, a node id derived from it, and key rotation.

Theory of operation
-------------------
A node's id is the SHA-256 of its first ("genesis") raw public key, in lowercase base32
without padding (52 characters). The id never changes, so peers, links and configuration
keep naming the node across key rotations.

Rotating the key appends a *rotation* to the node's key set: the new public key, the time
it takes over (``at``) and the time the previous key stops being accepted
(``previous_until``; the overlap period), signed by the previous key (authority) and by the
new one (possession). The key set document is public and self-certifying: anyone holding a
node id can check a key set against it, whoever delivered it. The validity of every key
follows from the chain::

    genesis      valid from creation         until rotation[0].previous_until
    rotation[i]  valid from rotation[i].at   until rotation[i+1].previous_until (or forever)

Verifiers keep the key set they know and accept a new one only if it extends it (the same
chain with rotations appended), so a stolen *expired* key cannot fork the history. A key
that leaks before it expires is revoked explicitly (see links.Revocations).

The private key lives in a JSON key file, mode 0600, written atomically (temp file, fsync,
rename, fsync of the directory). Only the newest private key is kept: a node always signs
with its newest key, and peers accept the old one until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ..atomic_file import write_atomic
from ..errors import NodeError
from .canonical import DOMAIN_ROTATION, b64decode, b64encode, canonical_json

NODE_ID_RE = re.compile(r"[a-z2-7]{52}", re.ASCII)
#: most rotations a key set may hold (bounds the cost of checking one)
MAX_ROTATIONS = 256
KEY_FILE_VERSION = 1


class IdentityError(NodeError):
    """A key file or key set is missing, malformed, unsafe or does not verify."""

    http_status = 500


def node_id_for(public_key: bytes) -> str:
    """The node id belonging to a raw 32-byte Ed25519 public key."""
    digest = hashlib.sha256(public_key).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def is_node_id(value: object) -> bool:
    return isinstance(value, str) and NODE_ID_RE.fullmatch(value) is not None


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when *signature* is a valid Ed25519 signature of *message* by *public_key*."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Rotation:
    key: bytes
    at: int
    previous_until: int
    sig_previous: bytes
    sig_new: bytes


@dataclass(frozen=True)
class KeyPeriod:
    public_key: bytes
    valid_from: int
    valid_until: int | None  # None: until the next rotation says otherwise

    def valid_at(self, t: int, *, early: int = 0) -> bool:
        """Valid at time *t*; *early* tolerates a key used that many seconds before its start."""
        return self.valid_from - early <= t and (self.valid_until is None or t <= self.valid_until)


def _rotation_message(node_id: str, index: int, previous: bytes, key: bytes, at: int, until: int) -> bytes:
    body = {
        "node_id": node_id,
        "index": index,
        "previous": b64encode(previous),
        "key": b64encode(key),
        "at": at,
        "previous_until": until,
    }
    return DOMAIN_ROTATION + canonical_json(body)


@dataclass(frozen=True)
class KeySet:
    """The public keys of one node over time (see the module docstring)."""

    node_id: str
    genesis: bytes
    created: int
    rotations: tuple[Rotation, ...] = ()
    periods: tuple[KeyPeriod, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        keys = [self.genesis] + [r.key for r in self.rotations]
        starts = [self.created] + [r.at for r in self.rotations]
        ends: list[int | None] = [r.previous_until for r in self.rotations] + [None]
        periods = tuple(KeyPeriod(k, s, e) for k, s, e in zip(keys, starts, ends, strict=True))
        object.__setattr__(self, "periods", periods)

    @property
    def current(self) -> bytes:
        return self.periods[-1].public_key

    def find(self, public_key: bytes) -> KeyPeriod | None:
        for period in self.periods:
            if period.public_key == public_key:
                return period
        return None

    def extends(self, other: "KeySet") -> bool:
        """True when this key set is *other* with zero or more rotations appended."""
        n = len(other.rotations)
        return (
            self.node_id == other.node_id
            and self.genesis == other.genesis
            and self.created == other.created
            and self.rotations[:n] == other.rotations
        )

    # -- the public document ---------------------------------------------------------

    def to_document(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "genesis": b64encode(self.genesis),
            "created": self.created,
            "rotations": [
                {
                    "key": b64encode(r.key),
                    "at": r.at,
                    "previous_until": r.previous_until,
                    "sig_previous": b64encode(r.sig_previous),
                    "sig_new": b64encode(r.sig_new),
                }
                for r in self.rotations
            ],
        }

    @classmethod
    def from_document(cls, doc: object, *, node_id: str | None = None) -> "KeySet":
        """Parse and verify a key set document; IdentityError says what is wrong."""
        try:
            if not isinstance(doc, dict):
                raise ValueError("expected an object")
            claimed = doc["node_id"]
            genesis = b64decode(doc["genesis"], length=32)
            created = doc["created"]
            raw_rotations = doc["rotations"]
            if (
                not isinstance(created, int)
                or isinstance(created, bool)
                or not isinstance(raw_rotations, list)
            ):
                raise ValueError("bad field types")
            if len(raw_rotations) > MAX_ROTATIONS:
                raise ValueError(f"more than {MAX_ROTATIONS} rotations")
            rotations = []
            for r in raw_rotations:
                at, until = r["at"], r["previous_until"]
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (at, until)):
                    raise ValueError("rotation times must be integers")
                rotations.append(
                    Rotation(
                        key=b64decode(r["key"], length=32),
                        at=at,
                        previous_until=until,
                        sig_previous=b64decode(r["sig_previous"], length=64),
                        sig_new=b64decode(r["sig_new"], length=64),
                    )
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise IdentityError(f"malformed key set: {exc}") from None
        if node_id_for(genesis) != claimed:
            raise IdentityError("key set does not belong to the node id it names")
        if node_id is not None and claimed != node_id:
            raise IdentityError(f"key set is for node {claimed}, expected {node_id}")
        keyset = cls(claimed, genesis, created, tuple(rotations))
        keyset.check_chain()
        return keyset

    def check_chain(self) -> None:
        seen = {self.genesis}
        previous, last_at = self.genesis, self.created
        for index, r in enumerate(self.rotations):
            if r.key in seen:
                raise IdentityError(f"rotation {index} reuses an earlier key")
            if r.at < last_at or r.previous_until < r.at:
                raise IdentityError(f"rotation {index} has inconsistent times")
            message = _rotation_message(self.node_id, index, previous, r.key, r.at, r.previous_until)
            if not verify_signature(previous, r.sig_previous, message):
                raise IdentityError(f"rotation {index} is not signed by the previous key")
            if not verify_signature(r.key, r.sig_new, message):
                raise IdentityError(f"rotation {index} is not signed by its new key")
            seen.add(r.key)
            previous, last_at = r.key, r.at


class NodeIdentity:
    """The private side: the newest private key and the node's key set."""

    def __init__(self, private_key: Ed25519PrivateKey, keyset: KeySet) -> None:
        if raw_public(private_key) != keyset.current:
            raise IdentityError("the private key is not the newest key of the key set")
        self._private = private_key
        self.keyset = keyset

    @property
    def node_id(self) -> str:
        return self.keyset.node_id

    @property
    def public_key(self) -> bytes:
        return self.keyset.current

    @classmethod
    def generate(cls, now: int) -> "NodeIdentity":
        key = Ed25519PrivateKey.generate()
        public = raw_public(key)
        return cls(key, KeySet(node_id_for(public), public, now))

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def rotate(self, now: int, overlap: int) -> "NodeIdentity":
        """A new identity whose newest key is fresh; the old key stays valid for *overlap* s."""
        if overlap < 0:
            raise IdentityError("the overlap period cannot be negative")
        new = Ed25519PrivateKey.generate()
        new_public = raw_public(new)
        ks = self.keyset
        index = len(ks.rotations)
        at = max(now, ks.periods[-1].valid_from)
        message = _rotation_message(ks.node_id, index, ks.current, new_public, at, at + overlap)
        rotation = Rotation(new_public, at, at + overlap, self._private.sign(message), new.sign(message))
        return NodeIdentity(new, KeySet(ks.node_id, ks.genesis, ks.created, ks.rotations + (rotation,)))

    # -- the key file ----------------------------------------------------------------

    def to_file_bytes(self) -> bytes:
        raw = self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        doc = {
            "seamless_node_key": KEY_FILE_VERSION,
            "node_id": self.node_id,
            "private_key": b64encode(raw),
            "keyset": self.keyset.to_document(),
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("ascii")

    @classmethod
    def from_file_bytes(cls, data: bytes, *, source: str = "key file") -> "NodeIdentity":
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("seamless_node_key") != KEY_FILE_VERSION:
                raise ValueError("not a seamless-node key file (version 1)")
            private = Ed25519PrivateKey.from_private_bytes(b64decode(doc["private_key"], length=32))
        except (KeyError, TypeError, ValueError) as exc:
            raise IdentityError(f"{source}: {exc}") from None
        keyset = KeySet.from_document(doc.get("keyset"), node_id=doc.get("node_id"))
        return cls(private, keyset)


def save_identity(path: str, identity: NodeIdentity) -> None:
    """Write the key file atomically and durably with mode 0600 (replacing an existing one)."""
    write_atomic(path, identity.to_file_bytes())


def load_identity(path: str) -> NodeIdentity:
    """Read a key file; refuse one that is a symlink, not a regular file, or readable by others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise IdentityError(
            f"no node key at {path}; create one with `seamless-node keygen --data-dir DIR`"
        ) from None
    except OSError as exc:
        raise IdentityError(f"cannot open key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise IdentityError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise IdentityError(
                f"key file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run `chmod 600 {path}`"
            )
        data = f.read(1 << 20)
    return NodeIdentity.from_file_bytes(data, source=path)

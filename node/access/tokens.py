"""Bearer tokens: made once, shown once, kept only as a hash.

A token is ``snt_`` followed by 43 base64url characters: 256 random bits from the
operating system (``secrets``). ``seamless-node token create`` prints it once; the node
keeps only its SHA-256 in the token file (``access.tokens_file``, default
``<data_dir>/tokens.json``, mode 0600), with a name, the scopes it grants, when it was
made, when it expires and, once revoked, when it was revoked.

Why a fast hash: slow password hashes (bcrypt, scrypt, Argon2) exist to make guessing a
*low-entropy* secret from its stolen hash expensive. A 256-bit random token cannot be
guessed however fast the hash is (2^256 tries), so SHA-256 loses nothing, and it lets the
node find a presented token by its hash in microseconds on every request. The lookup is
by hash, so its timing depends on the hash, never on how much of a secret was guessed
right; the stored and computed hashes are then compared in constant time.

The token file is replaced atomically (temp file, fsync, rename, fsync of the
directory) under a lock, so concurrent commands do not lose each other's changes and a
crash leaves the old or the new file, never a mix. The running node (``TokenBook``)
looks at the file's identity (inode, size, mtime) whenever a token is presented and
re-reads it when it changed: a new or revoked token counts from the next request, no
restart needed. A token file that cannot be read, is malformed, is a symlink or can be
written by other users accepts no token at all (and says why in the log).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from typing import Iterator

from ..atomic_file import write_atomic
from .scopes import parse_scopes

log = logging.getLogger("seamless_node.access")

PREFIX = "snt_"
TOKEN_RE = re.compile(r"snt_[A-Za-z0-9_-]{43}", re.ASCII)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", re.ASCII)
FORMAT_VERSION = 1


class TokenError(ValueError):
    """A token command cannot be carried out (the message says why)."""


def new_token() -> str:
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """What the node keeps of one token (never the token itself)."""

    hash: str
    name: str
    scopes: frozenset[str]
    created: float
    expires: float | None = None
    revoked: float | None = None

    @property
    def id(self) -> str:
        """A short public id (a prefix of the hash) for listings and revocation."""
        return self.hash[:12]

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def to_json(self) -> dict[str, object]:
        return {
            "hash": self.hash,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
        }

    @classmethod
    def from_json(cls, doc: object) -> "TokenRecord":
        if not isinstance(doc, dict):
            raise ValueError("a token entry must be a mapping")
        digest = doc.get("hash")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest, re.ASCII):
            raise ValueError("a token entry needs its hash (64 lowercase hex characters)")
        name = doc.get("name")
        if not isinstance(name, str):
            raise ValueError("a token entry needs a name")
        scopes = doc.get("scopes")
        if not isinstance(scopes, list):
            raise ValueError(f"token {name}: scopes must be a list")
        times = {}
        for key in ("created", "expires", "revoked"):
            value = doc.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"token {name}: {key} must be a time in seconds")
            times[key] = None if value is None else float(value)
        created = times["created"] or 0.0
        return cls(digest, name, parse_scopes(scopes), created, times["expires"], times["revoked"])


def parse_file(data: bytes) -> list[TokenRecord]:
    """The records of a token file's bytes; ValueError when malformed."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION or not isinstance(
        doc.get("tokens"), list
    ):
        raise ValueError(f"expected {{\"version\": {FORMAT_VERSION}, \"tokens\": [...]}}")
    return [TokenRecord.from_json(entry) for entry in doc["tokens"]]


def _read_file(path: str) -> tuple[list[TokenRecord], os.stat_result | None]:
    """The records and the file's status; ([], None) when there is no file. OSError or
    ValueError when it cannot be trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return [], None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_mode & 0o022:
            raise ValueError("writable by other users (chmod 600 it)")
        return parse_file(f.read()), info


def load_tokens(path: str) -> list[TokenRecord]:
    """Every record of the token file (none if it does not exist); TokenError otherwise."""
    try:
        return _read_file(path)[0]
    except (OSError, ValueError) as exc:
        raise TokenError(f"{path}: cannot use the token file: {exc}") from None


def _write_file(path: str, records: list[TokenRecord]) -> None:
    body = json.dumps(
        {"version": FORMAT_VERSION, "tokens": [r.to_json() for r in records]}, indent=1
    ).encode() + b"\n"
    write_atomic(path, body)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create_token(
    path: str, name: str, scopes: frozenset[str], expires_in: float | None, now: float | None = None
) -> tuple[str, TokenRecord]:
    """Make a token, record its hash; return (the token, its record). The token itself
    is not kept anywhere: the caller shows it once."""
    if not _NAME_RE.fullmatch(name):
        raise TokenError(f"not a token name: {name!r} (letters, digits and ._@-, at most 64)")
    if not scopes:
        raise TokenError("a token needs at least one scope")
    now = time.time() if now is None else now
    with _locked(path):
        records = load_tokens(path)
        if any(r.name == name and r.state(now) == "active" for r in records):
            raise TokenError(f"an active token is already named {name!r} (revoke it or choose another name)")
        token = new_token()
        record = TokenRecord(
            token_hash(token), name, scopes, now, None if expires_in is None else now + expires_in
        )
        _write_file(path, records + [record])
    return token, record


def revoke_tokens(path: str, which: str, now: float | None = None) -> list[TokenRecord]:
    """Revoke the active tokens named *which*, or the one whose id is *which*; return them."""
    now = time.time() if now is None else now
    with _locked(path):
        records = load_tokens(path)
        hits = [r for r in records if r.state(now) != "revoked" and (r.name == which or r.id == which)]
        if not hits:
            raise TokenError(f"no token named {which!r} or with that id is left to revoke")
        revoked = {r.hash for r in hits}
        _write_file(path, [
            TokenRecord(r.hash, r.name, r.scopes, r.created, r.expires, now) if r.hash in revoked else r
            for r in records
        ])
    return hits


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of presenting a token: its record when valid, else why not."""

    record: TokenRecord | None
    problem: str | None = None


class TokenBook:
    """The node's live view of the token file (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._by_hash: dict[str, TokenRecord] = {}
        self._signature: tuple[int, ...] | None = None
        self._broken: str | None = None

    def _refresh(self) -> None:
        try:
            info = os.stat(self.path, follow_symlinks=False)
            signature: tuple[int, ...] | None = (
                info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
            )
        except FileNotFoundError:
            signature = None
        except OSError as exc:
            signature = (-1,)
            self._fail(str(exc))
            return
        if signature == self._signature:
            return
        self._signature = signature
        try:
            records, _ = _read_file(self.path)
        except (OSError, ValueError) as exc:
            self._fail(str(exc))
            return
        self._by_hash = {r.hash: r for r in records}
        self._broken = None

    def _fail(self, reason: str) -> None:
        if self._broken != reason:
            log.error("token file %s accepts no token: %s", self.path, reason)
        self._broken = reason
        self._by_hash = {}

    def check(self, token: str, now: float | None = None) -> TokenCheck:
        """Whether *token* is valid now, and its record."""
        if not TOKEN_RE.fullmatch(token):
            return TokenCheck(None, "malformed token")
        self._refresh()
        digest = token_hash(token)
        record = self._by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.hash, digest):
            return TokenCheck(None, "unknown token")
        state = record.state(time.time() if now is None else now)
        if state != "active":
            return TokenCheck(None, f"{state} token")
        return TokenCheck(record)

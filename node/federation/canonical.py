"""Byte-exact encodings shared by every signed federation document.

A signature is only as good as the agreement on what was signed. Signed documents (key
rotations, peer links, result claims, revocation lists) are signed over their *canonical
JSON*: keys sorted, no whitespace, ASCII only, and only strings, integers, booleans, null,
lists and objects (no floats: their text form is not unique). Every signature also
covers a fixed context string (``DOMAIN_*``), so a signature made for one kind of document
can never be replayed as another kind.

Binary values (public keys, signatures) travel as unpadded URL-safe base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any

DOMAIN_ROTATION = b"seamless-node key rotation v1\n"
DOMAIN_LINK = b"seamless-node peer link v1\n"
DOMAIN_CLAIM = b"seamless-node result claim v1\n"
DOMAIN_REQUEST = b"seamless-node request v1\n"
DOMAIN_REVOCATIONS = b"seamless-node revocation list v1\n"

_B64_RE = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)


class CanonicalError(ValueError):
    """A value that has no canonical form (a float, a non-string key, ...)."""


def _check(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise CanonicalError("document nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise CanonicalError("integer out of range")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"object key {key!r} is not a string")
            _check(item, depth + 1)
        return
    raise CanonicalError(
        f"{type(value).__name__} values cannot be signed (only str, int, bool, null, list, dict)"
    )


def canonical_json(value: Any) -> bytes:
    """The one byte string that a signature over *value* covers."""
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: object, *, length: int | None = None) -> bytes:
    """Decode unpadded URL-safe base64; ValueError for anything else (or a wrong length)."""
    if not isinstance(text, str) or not _B64_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded URL-safe base64")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not unpadded URL-safe base64") from None
    if b64encode(data) != text:  # one spelling per value
        raise ValueError("not canonical base64")
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, got {len(data)}")
    return data


def now() -> int:
    """The current time as whole Unix seconds (documents carry integer times)."""
    return int(time.time())


def format_time(t: int | None) -> str:
    if t is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


_DURATION_RE = re.compile(r"\s*([0-9]+)\s*(s|m|h|d|w|y)?\s*", re.ASCII)
_DURATION_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> int:
    """``90d``, ``12h``, ``30m``, ``3600`` -> seconds."""
    m = _DURATION_RE.fullmatch(text)
    if not m:
        raise ValueError(f"expected a duration such as 90d, 12h or 3600, got {text!r}")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]

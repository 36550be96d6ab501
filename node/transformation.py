"""Transformation dicts: validation, identity and checksum (docs/jobless.md, "What a job is").

A transformation is a dict of pins ``name: [celltype, subcelltype, checksum]`` plus dunder
keys. Its checksum is the SHA-256 of the plain buffer of its *identity dict*: the dict
without the keys that say how rather than what (``__meta__``, ``__env__``, ...,
``META__*``). Any other ``__x__`` key is an error. ``parse_transformation`` checks a dict
received from a client and returns a ``Transformation`` value; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping

from .celltypes import CELLTYPES, PLAIN_ALIASES, plain_bytes
from .checksum import is_checksum
from .errors import NodeError

#: dunder keys that define the computation (kept in the identity dict)
KEPT_DUNDERS = frozenset(("__language__", "__output__", "__as__", "__format__", "__schema__"))
#: dunder keys that describe how to run it (dropped before hashing)
DROPPED_DUNDERS = frozenset((
    "__meta__", "__env__", "__compilation__", "__record_probe__", "__code_checksum__",
    "__code_text__", "__compilers__", "__languages__", "__compiled__", "__header__", "__deps__",
))
DROPPED_PREFIX = "META__"
PIN_CELLTYPES = frozenset(CELLTYPES + PLAIN_ALIASES)


class TransformationError(NodeError, ValueError):
    """A transformation dict that breaks the rules; the message names the key."""

    http_status = 400


def _is_dunder(key: str) -> bool:
    return key.startswith("__") and key.endswith("__") and len(key) > 4


def identity_dict(transformation: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a transformation that defines it (what is hashed)."""
    if not isinstance(transformation, Mapping):
        raise TransformationError(f"a transformation must be a dict, got {type(transformation).__name__}")
    out: dict[str, Any] = {}
    for key, value in transformation.items():
        if not isinstance(key, str):
            raise TransformationError(f"transformation keys must be strings, got {key!r}")
        if key in KEPT_DUNDERS:
            out[key] = value
        elif key in DROPPED_DUNDERS or key.startswith(DROPPED_PREFIX):
            continue
        elif key.startswith("__"):
            raise TransformationError(f"unknown transformation dunder key: {key}")
        else:
            out[key] = list(_pin_triple(key, value))
    return out


def transformation_buffer(transformation: Mapping[str, Any]) -> bytes:
    """The plain buffer whose checksum names the transformation."""
    return plain_bytes(identity_dict(transformation)) + b"\n"


def transformation_checksum(transformation: Mapping[str, Any]) -> str:
    return hashlib.sha256(transformation_buffer(transformation)).hexdigest()


def _pin_triple(name: str, value: Any) -> tuple[str, str | None, str | None]:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise TransformationError(
            f"pin {name!r} must be [celltype, subcelltype, checksum], got {value!r:.100}"
        )
    celltype, subcelltype, checksum = value
    if not isinstance(celltype, str):
        raise TransformationError(f"pin {name!r}: celltype must be a string, got {celltype!r:.60}")
    if subcelltype is not None and not isinstance(subcelltype, str):
        raise TransformationError(f"pin {name!r}: subcelltype must be a string or null")
    if checksum is not None and not is_checksum(checksum):
        raise TransformationError(
            f"pin {name!r}: checksum must be 64 lowercase hex characters or null, got {checksum!r:.80}"
        )
    return celltype, subcelltype, checksum


@dataclass(frozen=True)
class Pin:
    name: str  # the name the code sees (after __as__)
    key: str  # the key in the transformation dict
    celltype: str
    subcelltype: str | None
    checksum: str


@dataclass(frozen=True)
class Transformation:
    """A validated transformation, ready to be executed."""

    checksum: str
    language: str
    output_name: str
    output_celltype: str
    output_subcelltype: str | None
    code_checksum: str
    code_celltype: str
    pins: tuple[Pin, ...]
    #: pin key -> {"filesystem": {...}, "celltype": ...} from __format__
    formats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: buffers given inline with the transformation, verified against the checksums it
    #: names (checksum -> bytes; see node.inline_values.parse_verified)
    inline: dict[str, bytes] = field(default_factory=dict)
    #: the checksum of the environment dict (__env__), not part of the identity
    env_checksum: str | None = None

    @property
    def input_checksums(self) -> list[str]:
        return [self.code_checksum] + [p.checksum for p in self.pins]


def _check_pin_name(name: str, language: str) -> None:
    bad = not name or "\0" in name or name.startswith("/") or ".." in name.split("/")
    if language == "python" and not name.isidentifier():
        bad = True
    if bad:
        raise TransformationError(f"invalid pin name {name!r} for a {language} transformation")


def parse_transformation(
    transformation: Mapping[str, Any], tf_dunder: Mapping[str, Any] | None = None
) -> Transformation:
    """Validate a transformation dict (and the dunder keys sent beside it)."""
    ident = identity_dict(transformation)
    checksum = hashlib.sha256(plain_bytes(ident) + b"\n").hexdigest()
    extra = dict(tf_dunder or {})
    extra.update({k: v for k, v in transformation.items() if k in DROPPED_DUNDERS})
    language = ident.get("__language__", "python")
    if not isinstance(language, str):
        raise TransformationError("__language__ must be a string")
    output = ident.get("__output__")
    if not isinstance(output, (list, tuple)) or len(output) != 3:
        raise TransformationError("__output__ must be [name, celltype, subcelltype]")
    out_name, out_celltype, out_sub = output
    if not isinstance(out_name, str) or not isinstance(out_celltype, str):
        raise TransformationError(
            "__output__ must be [name, celltype, subcelltype] with string name and celltype"
        )
    if out_celltype not in PIN_CELLTYPES:
        raise TransformationError(f"__output__: unknown celltype {out_celltype!r}")
    as_ = ident.get("__as__") or {}
    formats = ident.get("__format__") or {}
    if not isinstance(as_, dict) or not isinstance(formats, dict):
        raise TransformationError("__as__ and __format__ must be dicts")
    pins = []
    code: tuple[str, str | None, str | None] | None = None
    for key, value in transformation.items():
        if key.startswith("__"):
            continue
        celltype, subcelltype, pin_cs = _pin_triple(key, value)
        if key == "code":
            code = (celltype, subcelltype, pin_cs)
            continue
        if celltype not in PIN_CELLTYPES:
            raise TransformationError(f"pin {key!r}: unknown celltype {celltype!r}")
        if pin_cs is None:
            raise TransformationError(f"pin {key!r} has no checksum (an unresolved dependency)")
        name = as_.get(key, key)
        if not isinstance(name, str):
            raise TransformationError(f"__as__ entry for {key!r} must be a string")
        if not key.startswith(DROPPED_PREFIX):
            _check_pin_name(name, language)
        pins.append(Pin(name, key, celltype, subcelltype, pin_cs))
    if code is None:
        raise TransformationError("the transformation has no code pin")
    # the code that runs is the buffer the code pin names, whatever the dunder keys say
    # (__code_checksum__ and __code_text__ are checked by node.inline_values)
    code_cs = code[2]
    if code_cs is None:
        raise TransformationError("the code pin has no checksum")
    meta = extra.get("__meta__")
    return Transformation(
        checksum=checksum,
        language=language,
        output_name=out_name,
        output_celltype=out_celltype,
        output_subcelltype=out_sub,
        code_checksum=code_cs,
        code_celltype=code[0],
        pins=tuple(sorted(pins, key=lambda p: p.key)),
        formats=formats,
        meta=meta if isinstance(meta, dict) else {},
        env_checksum=env if is_checksum(env := extra.get("__env__")) else None,
    )


__all__ = [
    "DROPPED_DUNDERS",
    "KEPT_DUNDERS",
    "Pin",
    "Transformation",
    "TransformationError",
    "identity_dict",
    "parse_transformation",
    "transformation_buffer",
    "transformation_checksum",
]

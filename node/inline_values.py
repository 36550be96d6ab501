"""Values sent inline with a transformation, verified against the checksums it names.

A transformation names every input by checksum; its own checksum covers those checksums
and nothing else. Clients may send some of the bytes along anyway, in dunder keys that
are *not* hashed into the transformation (docs/jobless.md, "What a job is"):

``__code_text__``
    the source text of the code, which the real Seamless 1.x client sends with every
    Python transformation (seamless-transformer keeps it as a fallback for a code buffer
    that cannot be resolved);
``__code_checksum__``
    the checksum of the buffer to run as code ("syntactic"). Seamless 1.x puts the same
    checksum in the ``code`` pin.

Because these keys are outside the identity dict, anything a client puts there changes
nothing about the transformation's checksum. Taken on trust, they would let a client run
one piece of code under the name of another, and the node would record (and sign) that
result for a transformation it never computed. So a value given inline is used only when
its buffer, serialized as the celltype of the pin it stands for (``node.celltypes``, byte
for byte what Seamless does), hashes to the checksum the transformation names for that
pin; and a checksum given beside the transformation must be the one the transformation
names. Anything else is refused (``InlineMismatch``, HTTP 400) with the pin, the
checksum expected and the one the bytes give, before a job exists.

``parse_verified`` is what every door that takes a job calls (``JobService.submit``, the
federation's ``JobReceiver``): ``parse_transformation`` plus ``verify_inline``, giving a
``Transformation`` whose ``inline`` holds the verified buffers (checksum -> bytes). Both
are pure; the job service stores those buffers like any upload, and the job then gathers
every input by checksum, from the store. ``parse_transformation`` alone ignores inline
values: it never lets them stand for a buffer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .celltypes import CelltypeError, serialize
from .transformation import DROPPED_DUNDERS, Transformation, TransformationError, parse_transformation

#: dunder keys whose value stands for the code buffer
CODE_TEXT = "__code_text__"
CODE_CHECKSUM = "__code_checksum__"


class InlineMismatch(TransformationError):
    """A value sent inline does not hash to the checksum the transformation names (400)."""


def parse_verified(
    transformation: Mapping[str, Any], tf_dunder: Mapping[str, Any] | None = None
) -> Transformation:
    """``parse_transformation``, with every value given inline verified (see above)."""
    tf = parse_transformation(transformation, tf_dunder)
    in_dict = {k: v for k, v in transformation.items() if k in DROPPED_DUNDERS}
    sources = [("the transformation", in_dict), ("tf_dunder", tf_dunder or {})]
    inline = verify_inline(sources, code_checksum=tf.code_checksum, code_celltype=tf.code_celltype)
    return replace(tf, inline=inline) if inline else tf


def verify_inline(
    sources: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    code_checksum: str,
    code_celltype: str,
) -> dict[str, bytes]:
    """The buffers given inline in *sources*, each verified; InlineMismatch otherwise.

    *sources* are ``(where, dunder keys)`` pairs (the transformation dict itself, the
    ``tf_dunder`` beside it), each checked on its own: a wrong value is refused even where
    another source would win. *code_checksum* and *code_celltype* are what the
    transformation's ``code`` pin names."""
    verified: dict[str, bytes] = {}
    for where, keys in sources:
        named = keys.get(CODE_CHECKSUM)
        if named is not None and named != code_checksum:
            raise InlineMismatch(
                f"{CODE_CHECKSUM} in {where} is {str(named)[:80]!r}, but the code pin names "
                f"{code_checksum}: only the code the transformation names can run under its checksum"
            )
        text = keys.get(CODE_TEXT)
        if text is None:
            continue
        if not isinstance(text, str):
            raise InlineMismatch(f"{CODE_TEXT} in {where} must be a string, got {type(text).__name__}")
        buffer = _code_buffer(text, code_celltype, where)
        got = hashlib.sha256(buffer).hexdigest()
        if got != code_checksum:
            raise InlineMismatch(
                f"{CODE_TEXT} in {where} does not hash to the code pin's checksum {code_checksum}: "
                f"the text, as a {code_celltype} buffer, gives {got}"
            )
        verified[got] = buffer
    return verified


def _code_buffer(text: str, celltype: str, where: str) -> bytes:
    try:
        return serialize(text, celltype)
    except CelltypeError as exc:
        raise InlineMismatch(f"{CODE_TEXT} in {where}: the code pin's celltype: {exc}") from None


__all__ = ["CODE_CHECKSUM", "CODE_TEXT", "InlineMismatch", "parse_verified", "verify_inline"]

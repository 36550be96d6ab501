"""Values <-> buffers, per Seamless celltype (the celltypes of Seamless 1.x), byte-exact with
Seamless 1.x.

``serialize(value, celltype)`` gives the buffer whose SHA-256 is the value's checksum;
``deserialize(buffer, celltype)`` gives the value back. Both are pure functions.

========================  =============================================================
celltype                  buffer
========================  =============================================================
plain                     JSON, keys sorted, indent 2, non-ASCII raw, plus ``\\n``
                          (the exact bytes of orjson, which Seamless uses: ``1e16``, not
                          ``1e+16``)
str, int, float, bool,    the value (converted to the type) as JSON, plus ``\\n``
checksum
text, python, ipython,    the text, trailing newlines stripped, plus one ``\\n``
yaml
bytes                     the raw bytes
binary                    a ``.npy`` file (``np.save(..., allow_pickle=False)``)
mixed                     JSON (ASCII-escaped), a ``.npy`` file, or the Seamless mixed
                          stream for structures holding arrays (``node.mixed``)
deepcell, deepfolder,     serialized as plain (a dict of checksums)
folder, module
========================  =============================================================

numpy is imported only when a value needs it (binary and mixed-with-arrays).
"""

from __future__ import annotations

import ast
import builtins
from typing import Any

import orjson

from .errors import NodeError

TEXT_CELLTYPES = ("text", "python", "ipython", "yaml")
SCALAR_CELLTYPES = ("str", "int", "float", "bool")
CELLTYPES = (
    "mixed", "plain", "binary", "bytes", "checksum", *TEXT_CELLTYPES, *SCALAR_CELLTYPES,
)
#: serialized as plain: the value is a (deep) structure of checksums
PLAIN_ALIASES = ("deepcell", "deepfolder", "folder", "module")


class CelltypeError(NodeError, ValueError):
    """A value cannot be serialized (or a buffer deserialized) as the given celltype."""

    http_status = 400


def _canonical(celltype: str | None) -> str:
    if celltype is None:
        return "mixed"
    if celltype in PLAIN_ALIASES:
        return "plain"
    if celltype not in CELLTYPES:
        raise CelltypeError(
            f"unknown celltype {celltype!r}; known: {', '.join(CELLTYPES + PLAIN_ALIASES)}"
        )
    return celltype


def plain_bytes(value: Any) -> bytes:
    """JSON as Seamless writes plain cells: sorted keys, indent 2, raw UTF-8, no newline."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise CelltypeError(f"value is not valid plain JSON: {exc}") from None


def _plain_loads(buffer: bytes) -> Any:
    try:
        return orjson.loads(buffer.decode().rstrip("\n"))
    except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CelltypeError(f"buffer is not JSON: {exc}") from None


def serialize(value: Any, celltype: str | None) -> bytes:
    """The buffer of *value* as *celltype* (None means mixed)."""
    celltype = _canonical(celltype)
    if celltype == "str":
        if not isinstance(value, bool):
            value = str(value)
        return plain_bytes(value) + b"\n"
    if celltype in ("int", "float", "bool"):
        if isinstance(value, bytes):
            value = value.decode()
        try:
            value = getattr(builtins, celltype)(value)
        except (TypeError, ValueError) as exc:
            raise CelltypeError(f"cannot convert the value to {celltype}: {exc}") from None
        return plain_bytes(value) + b"\n"
    if celltype in TEXT_CELLTYPES:
        if isinstance(value, bytes):
            value = value.decode()
        return (str(value).rstrip("\n") + "\n").encode()
    if celltype in ("plain", "checksum"):
        return plain_bytes(value) + b"\n"
    if celltype == "bytes":
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        tobytes = getattr(value, "tobytes", None)
        if callable(tobytes):
            return bytes(tobytes())
        return str(value).rstrip("\n").encode()
    from . import mixed

    if celltype == "binary":
        if isinstance(value, bytes):
            return value
        return mixed.serialize(mixed.as_array(value))
    return mixed.serialize(value)


def deserialize(buffer: bytes, celltype: str | None) -> Any:
    """The value held by *buffer*, read as *celltype* (None means mixed).

    ``bytes`` gives the raw bytes (Seamless gives its Buffer object, whose ``content``
    these are); text celltypes give the text without its trailing newlines (``python``
    and ``yaml`` are also checked for syntax, as Seamless does)."""
    celltype = _canonical(celltype)
    if celltype == "bytes":
        return bytes(buffer)
    if celltype in TEXT_CELLTYPES:
        try:
            text = buffer.decode().rstrip("\n")
        except UnicodeDecodeError as exc:
            raise CelltypeError(f"a {celltype} buffer must be UTF-8 text: {exc}") from None
        _validate_text(text, celltype)
        return text
    if celltype == "plain":
        return _plain_loads(buffer)
    if celltype in SCALAR_CELLTYPES:
        value = _plain_loads(buffer)
        kind = getattr(builtins, celltype)
        if not isinstance(value, kind):
            try:
                value = kind(value)
            except (TypeError, ValueError) as exc:
                raise CelltypeError(f"buffer does not hold a {celltype}: {exc}") from None
        return value
    if celltype == "checksum":
        value = _plain_loads(buffer) if buffer[:1] == b'"' else buffer.decode().strip()
        return value
    from . import mixed

    value, storage = mixed.deserialize(bytes(buffer))
    if celltype == "binary" and storage != "pure-binary":
        raise CelltypeError("a binary buffer must be a numpy .npy file")
    return value


def _validate_text(text: str, celltype: str) -> None:
    try:
        if celltype == "python":
            ast.parse(text, filename="<code>")
        elif celltype == "yaml":
            import yaml

            yaml.safe_load(text)
    except (SyntaxError, ValueError) as exc:
        raise CelltypeError(f"buffer is not valid {celltype}: {exc}") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise CelltypeError(f"buffer is not valid {celltype}: {exc}") from None


__all__ = [
    "CELLTYPES",
    "CelltypeError",
    "PLAIN_ALIASES",
    "TEXT_CELLTYPES",
    "deserialize",
    "plain_bytes",
    "serialize",
]

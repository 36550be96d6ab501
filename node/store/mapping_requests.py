"""Database requests as values: parse and validate, no I/O.

A request to the database role is a JSON object with a ``type`` (docs/database.md).
``parse_query`` turns a read request into a ``Query``, ``parse_update`` a write request
into an ``Update``; both raise ``MalformedRequest`` (HTTP 400) with a message that names
the offending field. Everything the store needs is checked here, so the store never sees
a wrong type, a checksum that is not 64 lowercase hex characters, or an unknown type.

Errors (all NodeError, with the HTTP status used when they end a request)::

    DatabaseError
    ├── MalformedRequest      not a valid request (400)
    ├── DatabaseReadOnly      a write to a read-only database (405)
    ├── DatabaseUnavailable   the database is not open (503)
    ├── DatabaseFull          no space left for the write (507)
    └── DatabaseFailure       SQLite failed (500)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..checksum import is_checksum
from ..errors import NodeError

PROTOCOL = ["seamless", "database", "2.2"]

READ_TYPES = (
    "protocol",
    "transformation",
    "rev_transformations",
    "buffer_info",
    "syntactic_to_semantic",
    "semantic_to_syntactic",
    "expression",
    "rev_expression",
    "metadata",
    "irreproducible",
    "bucket_probe",
    "compilation",
)
WRITE_TYPES = (
    "transformation",
    "buffer_info",
    "semantic_to_syntactic",
    "expression",
    "metadata",
    "irreproducible",
    "bucket_probe",
    "compilation",
)
BUCKET_KINDS = frozenset(("node", "environment", "node_env", "queue", "queue_node"))
_BOOL_INFO = (
    "is_utf8",
    "is_json",
    "is_json_numeric_array",
    "is_json_numeric_scalar",
    "is_numpy",
    "is_seamless_mixed",
)
_TEXT_INFO = ("json_type", "dtype")
_CHECKSUM_INFO = ("str2text", "text2str", "binary2bytes", "bytes2binary", "binary2json", "json2binary")


class DatabaseError(NodeError):
    """The database role could not do what was asked."""


class MalformedRequest(DatabaseError):
    http_status = 400


class DatabaseReadOnly(DatabaseError):
    http_status = 405


class DatabaseUnavailable(DatabaseError):
    http_status = 503


class DatabaseFull(DatabaseError):
    http_status = 507


class DatabaseFailure(DatabaseError):
    http_status = 500


@dataclass(frozen=True)
class Query:
    """A read. ``path`` is the expression path as stored (JSON text)."""

    type: str
    checksum: str | None = None
    celltype: str | None = None
    subcelltype: str | None = None
    path: str | None = None
    target_celltype: str | None = None
    result: str | None = None
    bucket_kind: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Update:
    """A write. ``value`` is already validated and normalised for its type."""

    type: str
    checksum: str | None
    value: Any = None
    result: str | None = None
    celltype: str | None = None
    subcelltype: str | None = None
    path: str | None = None
    target_celltype: str | None = None
    bucket_kind: str | None = None
    label: str | None = None
    captured_at: str | None = None


#: deepest JSON nesting accepted in a request (SQLite's json() refuses beyond 1000)
MAX_DEPTH = 64


def check_depth(value: object, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON nested deeper than *limit* (iteratively: no recursion to exhaust)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                raise MalformedRequest(f"Malformed request: JSON nested deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _malformed(what: str, detail: str) -> MalformedRequest:
    return MalformedRequest(f"Malformed {what}: {detail}")


def _field(rq: dict[str, Any], key: str, what: str) -> Any:
    if key not in rq:
        raise _malformed(what, f"missing field {key!r}")
    return rq[key]


def _checksum(rq: dict[str, Any], key: str, what: str) -> str:
    value = _field(rq, key, what)
    if not is_checksum(value):
        raise _malformed(
            what, f"{key!r} must be a checksum (64 lowercase hex characters), got {_shown(value)}"
        )
    return value  # type: ignore[no-any-return]


def _text(
    rq: dict[str, Any], key: str, what: str, *, max_length: int | None = None, nonempty: bool = False
) -> str:
    value = _field(rq, key, what)
    if not isinstance(value, str):
        raise _malformed(what, f"{key!r} must be a string, got {_shown(value)}")
    if nonempty and not value:
        raise _malformed(what, f"{key!r} must not be empty")
    if max_length is not None and len(value) > max_length:
        raise _malformed(what, f"{key!r} is longer than {max_length} characters")
    return value


def _json_dict(rq: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    """A dict, or (as upstream accepts) a JSON text of a dict."""
    value = _field(rq, key, what)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _malformed(what, f"{key!r} must be a JSON object") from None
    if not isinstance(value, dict):
        raise _malformed(what, f"{key!r} must be a JSON object, got {_shown(value)}")
    return value


def _path(rq: dict[str, Any], what: str) -> tuple[list[Any], str]:
    path = _field(rq, "path", what)
    if not isinstance(path, list) or not all(
        isinstance(p, (str, int)) and not isinstance(p, bool) for p in path
    ):
        raise _malformed(what, f"'path' must be a list of strings and integers, got {_shown(path)}")
    return path, json.dumps(path)  # stored exactly as seamless-database stores it


def _envelope(rq: object, allowed: tuple[str, ...], verb: str) -> str:
    if not isinstance(rq, dict):
        raise MalformedRequest(f"Malformed request: expected a JSON object, got {type(rq).__name__}")
    type_ = rq.get("type")
    if type_ is None:
        raise MalformedRequest("Malformed request: missing field 'type'")
    if type_ not in allowed:
        raise MalformedRequest(
            f"Unknown request type {_shown(type_)} for a {verb}; known: {', '.join(allowed)}"
        )
    return type_  # type: ignore[no-any-return]


def parse_query(rq: object) -> Query:
    """Validate a read request (sent with GET upstream)."""
    type_ = _envelope(rq, READ_TYPES, "read")
    assert isinstance(rq, dict)
    what = f"{type_} request"
    if type_ == "protocol":
        return Query(type_)
    if type_ == "bucket_probe":
        return Query(
            type_,
            bucket_kind=_text(rq, "bucket_kind", what),
            label=_text(rq, "label", what),
        )
    checksum = _checksum(rq, "checksum", what)
    if type_ in ("syntactic_to_semantic", "semantic_to_syntactic"):
        subcelltype = _field(rq, "subcelltype", what)
        if subcelltype is not None and not isinstance(subcelltype, str):
            raise _malformed(what, f"'subcelltype' must be a string, got {_shown(subcelltype)}")
        return Query(type_, checksum, celltype=_text(rq, "celltype", what), subcelltype=subcelltype)
    if type_ == "expression":
        _, path = _path(rq, what)
        return Query(
            type_,
            checksum,
            celltype=_text(rq, "celltype", what),
            path=path,
            target_celltype=_text(rq, "target_celltype", what),
        )
    if type_ == "irreproducible":
        result = rq.get("result")
        if result is not None:
            result = _checksum(rq, "result", what)
        return Query(type_, checksum, result=result)
    return Query(type_, checksum)


def parse_update(rq: object) -> Update:
    """Validate a write request (sent with PUT upstream)."""
    type_ = _envelope(rq, WRITE_TYPES, "write")
    assert isinstance(rq, dict)
    what = f"{type_} request"
    if type_ == "bucket_probe":
        kind = _text(rq, "bucket_kind", what)
        if kind not in BUCKET_KINDS:
            raise _malformed(what, f"'bucket_kind' must be one of {', '.join(sorted(BUCKET_KINDS))}")
        return Update(
            type_,
            None,
            value=_json_dict(rq, "freshness_tokens", what),
            result=_checksum(rq, "bucket_checksum", what),
            bucket_kind=kind,
            label=_text(rq, "label", what, nonempty=True),
            captured_at=_text(rq, "captured_at", what, nonempty=True),
        )
    checksum = _checksum(rq, "checksum", what)
    if type_ in ("transformation", "compilation"):
        return Update(type_, checksum, value=_checksum(rq, "value", what))
    if type_ == "buffer_info":
        return Update(type_, checksum, value=_buffer_info(rq, checksum, what))
    if type_ == "semantic_to_syntactic":
        value = _field(rq, "value", what)
        if not isinstance(value, list) or not all(is_checksum(v) for v in value):
            raise _malformed(what, "'value' must be a list of checksums (64 lowercase hex characters)")
        return Update(
            type_,
            checksum,
            value=list(dict.fromkeys(value)),
            celltype=_text(rq, "celltype", what),
            subcelltype=_text(rq, "subcelltype", what),
        )
    if type_ == "expression":
        path_list, path = _path(rq, what)
        celltype = _text(rq, "celltype", what, max_length=20)
        if len(path) > 100:
            raise _malformed(what, "'path' is longer than 100 characters as JSON")
        if path_list and celltype not in ("mixed", "plain", "binary"):
            raise _malformed(what, "an expression with a path needs celltype mixed, plain or binary")
        return Update(
            type_,
            checksum,
            value=_checksum(rq, "value", what),
            celltype=celltype,
            path=path,
            target_celltype=_text(rq, "target_celltype", what, max_length=20),
        )
    if type_ == "metadata":
        result = _checksum(rq, "result", what)
        record = _json_dict(rq, "value", what)
        _check_execution_record(checksum, result, record, what)
        return Update(type_, checksum, value=record, result=result)
    assert type_ == "irreproducible"
    return Update(type_, checksum, result=_checksum(rq, "result", what))


def _check_execution_record(checksum: str, result: str, record: dict[str, Any], what: str) -> None:
    version = record.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _malformed(what, "the record needs an integer 'schema_version'")
    if record.get("tf_checksum") != checksum:
        raise _malformed(what, "the record's 'tf_checksum' differs from the request's 'checksum'")
    if record.get("result_checksum") != result:
        raise _malformed(what, "the record's 'result_checksum' differs from the request's 'result'")
    fields = record.get("checksum_fields")
    if fields is not None and (
        not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields)
    ):
        raise _malformed(what, "the record's 'checksum_fields' must be a list of non-empty strings")


def _buffer_info(rq: dict[str, Any], checksum: str, what: str) -> dict[str, Any]:
    """Check the known keys of a buffer info; keep unknown ones (newer clients add keys)."""
    info = _field(rq, "value", what)
    if not isinstance(info, dict):
        raise _malformed(what, f"'value' must be a JSON object, got {_shown(info)}")
    info = dict(info)
    if "checksum" in info:
        if info.pop("checksum") not in (checksum, None):
            raise _malformed(what, "the buffer info's 'checksum' differs from the request's")
    for key, value in info.items():
        if value is None:
            continue
        if key in ("length", "members"):
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif key in _BOOL_INFO:
            ok = isinstance(value, bool)
        elif key in _TEXT_INFO:
            ok = isinstance(value, str)
        elif key == "shape":
            ok = isinstance(value, list) and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
            )
        elif key in _CHECKSUM_INFO:
            ok = is_checksum(value)
        else:
            ok = True
        if not ok:
            raise _malformed(what, f"buffer info {key!r} has a wrong value: {_shown(value)}")
    return info

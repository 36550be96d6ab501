"""How each kind of read is answered from one ``seamless.db``: one function per type.

A ``Source`` is one open file as one reader sees it: its connection and the tables it has
(a file written by an older seamless-database may lack some; a missing table reads as
empty). Each function returns the answer from that one file, or None / [] when the file
does not know it; MappingStore combines the files.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable

from .mapping_requests import Query

#: read types whose answer is a list: the union over all files
LIST_TYPES = (
    "rev_transformations",
    "syntactic_to_semantic",
    "semantic_to_syntactic",
    "rev_expression",
    "irreproducible",
)


@dataclass
class Source:
    """One database file as seen by one reader: a connection and the tables it has."""

    conn: sqlite3.Connection
    tables: set[str]
    own: bool


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _one(source: Source, table: str, sql: str, *args: Any) -> Any:
    if table not in source.tables:
        return None
    row = source.conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _many(source: Source, table: str, sql: str, *args: Any) -> list[Any]:
    if table not in source.tables:
        return []
    return source.conn.execute(sql, args).fetchall()


def is_irreproducible(own: Source, checksum: str | None, result: str) -> bool:
    sql = 'SELECT 1 FROM "irreproducible_transformation" WHERE checksum = ? AND result = ? LIMIT 1'
    return _one(own, "irreproducible_transformation", sql, checksum, result) is not None


def _buffer_info(s: Source, q: Query) -> Any:
    text = _one(s, "buffer_info", 'SELECT buffer_info FROM "buffer_info" WHERE checksum = ?', q.checksum)
    return None if text is None else _loads(text)


def _metadata(s: Source, q: Query) -> Any:
    text = _one(s, "meta_data", 'SELECT metadata FROM "meta_data" WHERE checksum = ?', q.checksum)
    return None if text is None else _loads(text)


def _bucket_probe(s: Source, q: Query) -> Any:
    rows = _many(
        s,
        "bucket_probe",
        'SELECT bucket_kind, label, bucket_checksum, captured_at, freshness_tokens FROM "bucket_probe" '
        "WHERE bucket_kind = ? AND label = ?",
        q.bucket_kind,
        q.label,
    )
    if not rows:
        return None
    kind, label, checksum, captured_at, tokens = rows[0]
    return {
        "bucket_kind": kind,
        "label": label,
        "bucket_checksum": checksum,
        "captured_at": captured_at,
        "freshness_tokens": _loads(tokens),
    }


def _irreproducible_rows(s: Source, q: Query) -> list[Any]:
    rows = _many(
        s,
        "irreproducible_transformation",
        'SELECT checksum, result, metadata FROM "irreproducible_transformation" '
        "WHERE checksum = ? ORDER BY id",
        q.checksum,
    )
    return [
        {"checksum": c, "result": r, "metadata": _loads(m)}
        for c, r, m in rows
        if q.result is None or r == q.result
    ]


def _rev_expression(s: Source, q: Query) -> list[Any]:
    rows = _many(
        s,
        "expression",
        'SELECT input_checksum, path, celltype, target_celltype FROM "expression" WHERE result = ?',
        q.checksum,
    )
    return [
        {"checksum": c, "path": _loads(p), "celltype": ct, "target_celltype": tct, "result": q.checksum}
        for c, p, ct, tct in rows
    ]


READS: dict[str, Callable[[Source, Query], Any]] = {
    "transformation": lambda s, q: _one(
        s, "transformation", 'SELECT result FROM "transformation" WHERE checksum = ?', q.checksum
    ),
    "compilation": lambda s, q: _one(
        s, "compilation", 'SELECT result FROM "compilation" WHERE checksum = ?', q.checksum
    ),
    "expression": lambda s, q: _one(
        s,
        "expression",
        'SELECT result FROM "expression" '
        "WHERE input_checksum = ? AND path = ? AND celltype = ? AND target_celltype = ?",
        q.checksum,
        q.path,
        q.celltype,
        q.target_celltype,
    ),
    "buffer_info": _buffer_info,
    "metadata": _metadata,
    "bucket_probe": _bucket_probe,
    "rev_transformations": lambda s, q: [
        r[0]
        for r in _many(
            s,
            "rev_transformation",
            'SELECT checksum FROM "rev_transformation" WHERE result = ? ORDER BY id',
            q.checksum,
        )
    ],
    "syntactic_to_semantic": lambda s, q: [
        r[0]
        for r in _many(
            s,
            "syntactic_to_semantic",
            'SELECT semantic FROM "syntactic_to_semantic" '
            "WHERE syntactic = ? AND celltype = ? AND subcelltype = ?",
            q.checksum,
            q.celltype,
            q.subcelltype,
        )
    ],
    "semantic_to_syntactic": lambda s, q: [
        r[0]
        for r in _many(
            s,
            "syntactic_to_semantic",
            'SELECT syntactic FROM "syntactic_to_semantic" '
            "WHERE semantic = ? AND celltype = ? AND subcelltype = ?",
            q.checksum,
            q.celltype,
            q.subcelltype,
        )
    ],
    "rev_expression": _rev_expression,
    "irreproducible": _irreproducible_rows,
}

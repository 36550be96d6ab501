"""How each kind of write changes a ``seamless.db``: one function per request type.

Each function runs inside the writer's open transaction and returns ``(status, message)``:
200 "OK", or the refusal seamless-database 2.1.0 answers in the same situation (same
status, same text, which real clients match on). Values arrive validated
(mapping_requests); only SQLite errors can escape.

Where upstream leaves a mess, the node does not: a transformation write keeps exactly one
reverse row per (transformation, result) and drops the reverse row of a replaced result;
a (transformation, result) pair is marked irreproducible once.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable

from .mapping_requests import Update

Result = tuple[int, str]
OK: Result = (200, "OK")


def _conflict(message: str) -> Result:
    return (409, message)


def _transformation_result(conn: sqlite3.Connection, checksum: str) -> str | None:
    row = conn.execute('SELECT result FROM "transformation" WHERE checksum = ?', (checksum,)).fetchone()
    return None if row is None else row[0]


def _metadata_row(conn: sqlite3.Connection, checksum: str) -> tuple[str, str] | None:
    return conn.execute('SELECT result, metadata FROM "meta_data" WHERE checksum = ?', (checksum,)).fetchone()


def _ensure_rev(conn: sqlite3.Connection, checksum: str, result: str) -> None:
    present = conn.execute(
        'SELECT 1 FROM "rev_transformation" WHERE result = ? AND checksum = ? LIMIT 1', (result, checksum)
    ).fetchone()
    if present is None:
        conn.execute('INSERT INTO "rev_transformation" (result, checksum) VALUES (?, ?)', (result, checksum))


def _set_transformation(conn: sqlite3.Connection, checksum: str, result: str) -> None:
    old = _transformation_result(conn, checksum)
    if old is None:
        conn.execute('INSERT INTO "transformation" (checksum, result) VALUES (?, ?)', (checksum, result))
    elif old != result:
        conn.execute('UPDATE "transformation" SET result = ? WHERE checksum = ?', (result, checksum))
        conn.execute('DELETE FROM "rev_transformation" WHERE result = ? AND checksum = ?', (old, checksum))
    _ensure_rev(conn, checksum, result)


def write_transformation(conn: sqlite3.Connection, u: Update) -> Result:
    assert u.checksum is not None
    _set_transformation(conn, u.checksum, u.value)
    return OK


def write_compilation(conn: sqlite3.Connection, u: Update) -> Result:
    conn.execute(
        'INSERT INTO "compilation" (checksum, result) VALUES (?, ?) '
        "ON CONFLICT (checksum) DO UPDATE SET result = excluded.result",
        (u.checksum, u.value),
    )
    return OK


def write_buffer_info(conn: sqlite3.Connection, u: Update) -> Result:
    row = conn.execute('SELECT buffer_info FROM "buffer_info" WHERE checksum = ?', (u.checksum,)).fetchone()
    info: dict[str, Any] = {}
    if row is not None:
        try:
            old = json.loads(row[0])
            if isinstance(old, dict):
                info = old
        except ValueError:
            pass  # an unreadable record is replaced
    info.update((k, v) for k, v in u.value.items() if v is not None)
    conn.execute(
        'INSERT OR REPLACE INTO "buffer_info" (checksum, buffer_info) VALUES (?, ?)',
        (u.checksum, json.dumps(info, sort_keys=True, indent=2)),
    )
    return OK


def write_semantic_to_syntactic(conn: sqlite3.Connection, u: Update) -> Result:
    conn.executemany(
        'INSERT OR IGNORE INTO "syntactic_to_semantic" (syntactic, celltype, subcelltype, semantic) '
        "VALUES (?, ?, ?, ?)",
        [(syntactic, u.celltype, u.subcelltype, u.checksum) for syntactic in u.value],
    )
    return OK


def write_expression(conn: sqlite3.Connection, u: Update) -> Result:
    conn.execute(
        'INSERT INTO "expression" (input_checksum, path, celltype, target_celltype, result) '
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (input_checksum, path, celltype, target_celltype) "
        "DO UPDATE SET result = excluded.result",
        (u.checksum, u.path, u.celltype, u.target_celltype, u.value),
    )
    return OK


def _has_irreproducible(conn: sqlite3.Connection, checksum: str) -> bool:
    sql = 'SELECT 1 FROM "irreproducible_transformation" WHERE checksum = ? LIMIT 1'
    return conn.execute(sql, (checksum,)).fetchone() is not None


def _same_record(stored: str, record: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(stored) == record)
    except ValueError:
        return False


def write_metadata(conn: sqlite3.Connection, u: Update) -> Result:
    """Write-once execution record; also records the transformation result."""
    checksum, result = u.checksum, u.result
    assert checksum is not None and result is not None
    if _has_irreproducible(conn, checksum):
        return _conflict("Transformation already has irreproducible records")
    tf_result = _transformation_result(conn, checksum)
    if tf_result is not None and tf_result != result:
        return _conflict("Transformation result does not match execution record result")
    existing = _metadata_row(conn, checksum)
    if existing is not None:
        if existing[0] != result:
            return _conflict("Execution record result does not match stored metadata result")
        if not _same_record(existing[1], u.value):
            return _conflict("Execution record already exists with different metadata")
    else:
        conn.execute(
            'INSERT INTO "meta_data" (checksum, result, metadata) VALUES (?, ?, json(?))',
            (checksum, result, json.dumps(u.value)),
        )
    _set_transformation(conn, checksum, result)
    return OK


def write_irreproducible(conn: sqlite3.Connection, u: Update) -> Result:
    """Move a (transformation, result) out of the cache, keeping its record aside."""
    checksum, result = u.checksum, u.result
    assert checksum is not None and result is not None
    tf_result = _transformation_result(conn, checksum)
    if tf_result is not None and tf_result != result:
        return (404, "Transformation does not have the irreproducible result")
    existing = _metadata_row(conn, checksum)
    metadata: Any = ""
    if existing is not None:
        if existing[0] != result:
            return _conflict("Stored metadata result does not match irreproducible result")
        try:
            metadata = json.loads(existing[1])
        except ValueError:
            metadata = existing[1]
    marked = conn.execute(
        'SELECT 1 FROM "irreproducible_transformation" WHERE checksum = ? AND result = ? LIMIT 1',
        (checksum, result),
    ).fetchone()
    if marked is None:
        conn.execute(
            'INSERT INTO "irreproducible_transformation" (result, checksum, metadata) VALUES (?, ?, json(?))',
            (result, checksum, json.dumps(metadata)),
        )
    if tf_result is not None:
        conn.execute('DELETE FROM "transformation" WHERE checksum = ?', (checksum,))
        conn.execute('DELETE FROM "rev_transformation" WHERE result = ? AND checksum = ?', (result, checksum))
    if existing is not None:
        conn.execute('DELETE FROM "meta_data" WHERE checksum = ?', (checksum,))
    return OK


def write_bucket_probe(conn: sqlite3.Connection, u: Update) -> Result:
    conn.execute(
        'INSERT INTO "bucket_probe" (bucket_kind, label, bucket_checksum, captured_at, freshness_tokens) '
        "VALUES (?, ?, ?, ?, json(?)) ON CONFLICT (bucket_kind, label) DO UPDATE SET "
        "bucket_checksum = excluded.bucket_checksum, captured_at = excluded.captured_at, "
        "freshness_tokens = excluded.freshness_tokens",
        (u.bucket_kind, u.label, u.result, u.captured_at, json.dumps(u.value)),
    )
    return OK


_WRITES: dict[str, Callable[[sqlite3.Connection, Update], Result]] = {
    "transformation": write_transformation,
    "compilation": write_compilation,
    "buffer_info": write_buffer_info,
    "semantic_to_syntactic": write_semantic_to_syntactic,
    "expression": write_expression,
    "metadata": write_metadata,
    "irreproducible": write_irreproducible,
    "bucket_probe": write_bucket_probe,
}


def apply_update(conn: sqlite3.Connection, update: Update) -> Result:
    return _WRITES[update.type](conn, update)

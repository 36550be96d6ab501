"""Moving entries between ``seamless.db`` files: ``merge_file(target, source)``.

Used by ``seamless-node db import`` (a colleague's file into the node's) and ``db export``
(the node's file into a fresh standalone one). Works on files written by the node or by
seamless-database 2.1.0, in one transaction on the target, and may run while a node
serves the target (SQLite locks the file; the node's writes wait for the merge).

Rules: what the target already has wins (its results, buffer infos, expressions,
execution records are kept); a bucket probe is replaced by a newer capture; a
transformation result that the target marked irreproducible is not imported, and an
irreproducible mark that comes in removes the matching result and record. Reverse
mappings are rebuilt from the transformations, so they are exact in the target.
"""

from __future__ import annotations

import os
import sqlite3

from .mapping_schema import check_schema, create_schema, table_columns
from .mappings import _uri, open_readonly

_IRREPRODUCIBLE = (
    "EXISTS (SELECT 1 FROM main.irreproducible_transformation i "
    "WHERE i.checksum = {t}.checksum AND i.result = {t}.result)"
)

# (table, SQL) in order; each copies from src into main and reports rows changed
_STEPS = [
    (
        "transformation",
        "INSERT OR IGNORE INTO main.transformation (checksum, result) SELECT s.checksum, s.result "
        "FROM src.transformation s WHERE NOT " + _IRREPRODUCIBLE.format(t="s"),
    ),
    (
        "meta_data",
        "INSERT OR IGNORE INTO main.meta_data (checksum, result, metadata) "
        "SELECT m.checksum, m.result, m.metadata "
        "FROM src.meta_data m WHERE NOT EXISTS (SELECT 1 FROM main.transformation t "
        "WHERE t.checksum = m.checksum AND t.result != m.result) AND NOT EXISTS "
        "(SELECT 1 FROM main.irreproducible_transformation i WHERE i.checksum = m.checksum)",
    ),
    (
        "compilation",
        "INSERT OR IGNORE INTO main.compilation (checksum, result) "
        "SELECT checksum, result FROM src.compilation",
    ),
    (
        "buffer_info",
        "INSERT OR IGNORE INTO main.buffer_info (checksum, buffer_info) "
        "SELECT checksum, buffer_info FROM src.buffer_info",
    ),
    (
        "syntactic_to_semantic",
        "INSERT OR IGNORE INTO main.syntactic_to_semantic (syntactic, celltype, subcelltype, semantic) "
        "SELECT syntactic, celltype, subcelltype, semantic FROM src.syntactic_to_semantic",
    ),
    (
        "expression",
        "INSERT OR IGNORE INTO main.expression (input_checksum, path, celltype, target_celltype, validator, "
        "validator_language, result) SELECT input_checksum, path, celltype, target_celltype, validator, "
        "validator_language, result FROM src.expression",
    ),
    (
        "irreproducible_transformation",
        "INSERT INTO main.irreproducible_transformation (result, checksum, metadata) "
        "SELECT s.result, s.checksum, s.metadata FROM src.irreproducible_transformation s "
        "WHERE s.id IN (SELECT MIN(id) FROM src.irreproducible_transformation GROUP BY checksum, result) "
        "AND NOT " + _IRREPRODUCIBLE.format(t="s"),
    ),
    (
        "bucket_probe",
        "INSERT INTO main.bucket_probe (bucket_kind, label, bucket_checksum, captured_at, freshness_tokens) "
        "SELECT bucket_kind, label, bucket_checksum, captured_at, freshness_tokens "
        "FROM src.bucket_probe WHERE true "
        "ON CONFLICT (bucket_kind, label) DO UPDATE SET bucket_checksum = excluded.bucket_checksum, "
        "captured_at = excluded.captured_at, freshness_tokens = excluded.freshness_tokens "
        "WHERE excluded.captured_at > bucket_probe.captured_at",
    ),
]

# invariants restored in the target after the copy
_FIXUPS = [
    # an execution record implies its transformation result
    "INSERT OR IGNORE INTO main.transformation (checksum, result) "
    "SELECT checksum, result FROM main.meta_data",
    "DELETE FROM main.transformation WHERE " + _IRREPRODUCIBLE.format(t="transformation"),
    "DELETE FROM main.meta_data WHERE " + _IRREPRODUCIBLE.format(t="meta_data"),
    "DELETE FROM main.rev_transformation WHERE NOT EXISTS (SELECT 1 FROM main.transformation t "
    "WHERE t.checksum = rev_transformation.checksum AND t.result = rev_transformation.result)",
    "INSERT INTO main.rev_transformation (result, checksum) "
    "SELECT t.result, t.checksum FROM main.transformation t WHERE NOT EXISTS "
    "(SELECT 1 FROM main.rev_transformation r WHERE r.result = t.result AND r.checksum = t.checksum)",
]


def merge_file(target: str, source: str) -> dict[str, int]:
    """Copy the entries of *source* into *target* (created if absent); rows added per table."""
    if os.path.abspath(target) == os.path.abspath(source):
        raise ValueError("source and target are the same file")
    probe = open_readonly(source)
    try:
        source_tables = check_schema(probe, source, writable=False)
        legacy = "meta_data" in source_tables and "result" not in table_columns(probe, "meta_data")
    finally:
        probe.close()
    if legacy:
        source_tables.discard("meta_data")  # records without their result cannot be checked
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    # a URI connection, so that ATTACH takes the source as a read-only URI too
    conn = sqlite3.connect(_uri(target, mode="rwc"), uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        _attach(conn, source)
        conn.execute("BEGIN IMMEDIATE")
        try:
            check_schema(conn, target, writable=True)
            create_schema(conn)
            added = {}
            for table, sql in _STEPS:
                if table in source_tables:
                    added[table] = max(conn.execute(sql).rowcount, 0)
            for sql in _FIXUPS:
                conn.execute(sql)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("DETACH DATABASE src")
        return added
    finally:
        conn.close()


def _attach(conn: sqlite3.Connection, source: str) -> None:
    """Attach *source* read-only as ``src`` (immutable when SQLite needs it)."""
    last: sqlite3.Error | None = None
    for params in ({"mode": "ro"}, {"mode": "ro", "immutable": "1"}):
        try:
            conn.execute("ATTACH DATABASE ? AS src", (_uri(source, **params),))
            conn.execute("SELECT COUNT(*) FROM src.sqlite_master").fetchone()
            return
        except sqlite3.Error as exc:
            last = exc
            try:
                conn.execute("DETACH DATABASE src")
            except sqlite3.Error:
                pass
    raise sqlite3.OperationalError(f"cannot open {source} read-only: {last}")

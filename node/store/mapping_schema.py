"""The tables of a ``seamless.db``: those of seamless-database 2.1.0, plus ``compilation``.

The node writes the same tables, columns and indexes (by name and definition) as
seamless-database 2.1.0 creates through peewee, so a file moves freely between the two:
seamless-database opens a node's file (it ignores the extra ``compilation`` table) and the
node opens and serves seamless-database's. How values are stored follows upstream too:

* ``buffer_info.buffer_info``: ``json.dumps(info, sort_keys=True, indent=2)``;
* ``meta_data.metadata``, ``irreproducible_transformation.metadata`` and
  ``bucket_probe.freshness_tokens``: SQLite's ``json()`` of ``json.dumps(value)``;
* ``expression.path``: ``json.dumps(path)``;
* ``rev_transformation``: no unique key; upstream may hold duplicate rows, readers dedupe.
"""

from __future__ import annotations

import sqlite3

from ..errors import NodeError

CS = "CHAR(64) NOT NULL"  # a checksum column, as peewee's FixedCharField(64) declares it

#: table -> column definitions, in the order (and the spelling) peewee creates them
_DEFINITIONS: dict[str, str] = {
    "bucket_probe": f'"bucket_kind" VARCHAR(20) NOT NULL, "label" TEXT NOT NULL, "bucket_checksum" {CS}, '
    '"captured_at" TEXT NOT NULL, "freshness_tokens" TEXT NOT NULL, PRIMARY KEY ("bucket_kind", "label")',
    "buffer_info": f'"checksum" {CS} PRIMARY KEY, "buffer_info" TEXT NOT NULL',
    "expression": f'"input_checksum" {CS}, "path" VARCHAR(100) NOT NULL, "celltype" VARCHAR(20) NOT NULL, '
    '"target_celltype" VARCHAR(20) NOT NULL, "validator" CHAR(64), "validator_language" VARCHAR(20), '
    f'"result" {CS}, PRIMARY KEY ("input_checksum", "path", "celltype", "target_celltype")',
    "irreproducible_transformation": f'"id" INTEGER NOT NULL PRIMARY KEY, "result" {CS}, "checksum" {CS}, '
    '"metadata" TEXT NOT NULL',
    "meta_data": f'"checksum" {CS} PRIMARY KEY, "result" {CS}, "metadata" TEXT NOT NULL',
    "rev_transformation": f'"id" INTEGER NOT NULL PRIMARY KEY, "result" {CS}, "checksum" {CS}',
    "syntactic_to_semantic": f'"syntactic" {CS}, "celltype" TEXT NOT NULL, "subcelltype" TEXT NOT NULL, '
    f'"semantic" {CS}, PRIMARY KEY ("syntactic", "celltype", "subcelltype", "semantic")',
    "transformation": f'"checksum" {CS} PRIMARY KEY, "result" {CS}',
    # seamless-node's own: module definition checksum -> compiled binary checksum
    "compilation": f'"checksum" {CS} PRIMARY KEY, "result" {CS}',
}
#: table -> indexed columns; each index is named <table>_<column>, as peewee names them
_INDEXES: dict[str, list[str]] = {
    "bucket_probe": ["bucket_checksum"],
    "buffer_info": [],
    "expression": ["result"],
    "irreproducible_transformation": ["result", "checksum"],
    "meta_data": ["result"],
    "rev_transformation": ["result"],
    "syntactic_to_semantic": ["syntactic", "semantic"],
    "transformation": ["result"],
    "compilation": ["result"],
}

#: (table, CREATE TABLE, [(index name, CREATE INDEX)]), in creation order
TABLES: list[tuple[str, str, list[tuple[str, str]]]] = [
    (
        table,
        f'CREATE TABLE IF NOT EXISTS "{table}" ({definition})',
        [(f"{table}_{c}", f'CREATE INDEX "{table}_{c}" ON "{table}" ("{c}")') for c in _INDEXES[table]],
    )
    for table, definition in _DEFINITIONS.items()
]

COLUMNS = {
    "bucket_probe": ["bucket_kind", "label", "bucket_checksum", "captured_at", "freshness_tokens"],
    "buffer_info": ["checksum", "buffer_info"],
    "expression": [
        "input_checksum",
        "path",
        "celltype",
        "target_celltype",
        "validator",
        "validator_language",
        "result",
    ],
    "irreproducible_transformation": ["id", "result", "checksum", "metadata"],
    "meta_data": ["checksum", "result", "metadata"],
    "rev_transformation": ["id", "result", "checksum"],
    "syntactic_to_semantic": ["syntactic", "celltype", "subcelltype", "semantic"],
    "transformation": ["checksum", "result"],
    "compilation": ["checksum", "result"],
}
_LEGACY_META_DATA = {"checksum", "metadata"}


class SchemaError(NodeError):
    """A database file whose tables are not those of seamless-database 2.x."""


def table_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


def existing_tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def check_schema(conn: sqlite3.Connection, where: str, *, writable: bool) -> set[str]:
    """Verify the known tables present; return their names. A legacy two-column
    ``meta_data`` table can be read; in a writable file it is replaced when empty (as
    seamless-database does) and refused otherwise."""
    tables = existing_tables(conn) & set(COLUMNS)
    for table in sorted(tables):
        columns = table_columns(conn, table)
        if set(columns) == set(COLUMNS[table]):
            continue
        if table == "meta_data" and set(columns) == _LEGACY_META_DATA:
            if not writable:
                continue
            if conn.execute('SELECT COUNT(*) FROM "meta_data"').fetchone()[0] == 0:
                conn.execute('DROP TABLE "meta_data"')
                tables.discard(table)
                continue
            raise SchemaError(
                f"{where}: the 'meta_data' table has the legacy layout (checksum, metadata) and is not "
                "empty; it cannot be upgraded in place (open the file read-only, or export it first)"
            )
        raise SchemaError(f"{where}: table {table!r} has columns {columns}, expected {COLUMNS[table]}")
    return tables


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables and indexes that are missing (in a transaction of the caller)."""
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    for _table, create_table, table_indexes in TABLES:
        conn.execute(create_table)
        for name, create_index in table_indexes:
            if name not in indexes:
                conn.execute(create_index)

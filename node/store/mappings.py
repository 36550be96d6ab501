"""MappingStore: the node's result database, a ``seamless.db`` SQLite file (blocking API).

Theory of operation
-------------------
One writer connection and a small pool of reader sets, all on the node's own file, which
runs in WAL mode: readers never block the writer nor each other. ``write_batch`` applies
many validated ``Update`` values in one transaction (one fsync at most, one thread hop),
each under its own savepoint, so that one refused write (a 409 conflict) does not undo the
others; it returns one ``Outcome`` per update, in order, and only once the COMMIT is done:
an acknowledged write is in the WAL, which survives a crash of the process
(``synchronous=NORMAL``; ``full`` also survives a power loss).

Reads consult the own file first, then the read-only extra files in their order (a
colleague's shared ``seamless.db``): single values come from the first file that has them,
lists are the union. A result in an extra file is hidden when the own file has marked
that (transformation, result) pair irreproducible.

A file that is not writable (or ``readonly=True``) is opened with ``mode=ro``; if SQLite
cannot open it that way (a WAL file in a read-only directory), with ``immutable=1``.
On a clean close the file goes back to the rollback journal, so what is left on disk is a
single file, as seamless-database writes it.

All methods block: call them from a worker thread (see mapping_service.MappingService).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import quote

from .mapping_requests import (
    PROTOCOL,
    DatabaseFailure,
    DatabaseFull,
    DatabaseReadOnly,
    Query,
    Update,
)
from .mapping_schema import COLUMNS, SchemaError, check_schema, create_schema
from .mapping_writes import apply_update

log = logging.getLogger("seamless_node.database")

#: read types whose answer is a list: the union over all files
_LIST_TYPES = ("rev_transformations", "syntactic_to_semantic", "semantic_to_syntactic", "rev_expression", "irreproducible")


@dataclass(frozen=True)
class Outcome:
    """What became of one write: 200 "OK", or a refusal (404, 409) with upstream's text."""

    status: int
    message: str = "OK"

    @property
    def ok(self) -> bool:
        return self.status == 200


OK = Outcome(200)


def _uri(path: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(os.path.abspath(path), safe='/:')}?{query}"


def open_readonly(path: str) -> sqlite3.Connection:
    """A read-only connection; ``immutable=1`` when SQLite cannot open the file otherwise."""
    if not os.path.isfile(path):
        raise SchemaError(f"database file {path} does not exist")
    for params in ({"mode": "ro"}, {"mode": "ro", "immutable": "1"}):
        try:
            conn = sqlite3.connect(_uri(path, **params), uri=True, check_same_thread=False, isolation_level=None)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            error: sqlite3.DatabaseError = exc
            continue
        if "immutable" in params:
            log.warning("%s: opened as immutable (SQLite could not open it read-only otherwise)", path)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn
    raise SchemaError(f"cannot open database file {path}: {error}")


def classify(exc: sqlite3.Error, doing: str) -> Exception:
    """Turn an SQLite error into the node error that tells the client what happened."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return DatabaseFull(f"{doing}: no space left for the database")
    if code == sqlite3.SQLITE_READONLY:
        return DatabaseReadOnly(f"{doing}: the database file is read-only")
    return DatabaseFailure(f"{doing}: SQLite error: {exc}")


@dataclass
class _Source:
    """One database file as seen by one reader: a connection and the tables it has."""

    conn: sqlite3.Connection
    tables: set[str]
    own: bool


@dataclass
class _ReaderSet:
    sources: list[_Source] = field(default_factory=list)


class MappingStore:
    def __init__(
        self,
        path: str,
        *,
        readonly: bool = False,
        extra_files: Iterable[str] = (),
        synchronous: str = "normal",
        readers: int = 4,
    ) -> None:
        self.path = path
        self.readonly = readonly
        self.readonly_reason = "configured read-only" if readonly else None
        self.extra_files = tuple(extra_files)
        self.synchronous = synchronous
        self.reader_count = max(1, readers)
        self._writer: sqlite3.Connection | None = None
        self._readers: queue.SimpleQueue[_ReaderSet] = queue.SimpleQueue()
        self._all_readers: list[_ReaderSet] = []
        self._tables: set[str] = set()
        self._extra_tables: list[set[str]] = []

    # ---------------------------------------------------------------- opening and closing

    def open(self) -> None:
        if not self.readonly:
            reason = self._why_readonly()
            if reason:
                log.warning("%s: opening read-only: %s", self.path, reason)
                self.readonly, self.readonly_reason = True, reason
        try:
            if self.readonly:
                conn = open_readonly(self.path)
                self._tables = check_schema(conn, self.path, writable=False)
                conn.close()
            else:
                self._open_writer()
            for extra in self.extra_files:
                conn = open_readonly(extra)
                self._extra_tables.append(check_schema(conn, extra, writable=False))
                conn.close()
            for _ in range(self.reader_count):
                reader = self._open_reader_set()
                self._all_readers.append(reader)
                self._readers.put(reader)
        except BaseException:
            self.close()
            raise

    def _why_readonly(self) -> str | None:
        if os.path.exists(self.path):
            # no write bit at all counts too: root may write anything, but should not here
            if not os.access(self.path, os.W_OK) or not os.stat(self.path).st_mode & 0o222:
                return "the file is not writable"
            directory = os.path.dirname(os.path.abspath(self.path))
            if not os.access(directory, os.W_OK):
                return "its directory is not writable (SQLite needs it for its journal)"
        return None

    def _open_writer(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._writer = conn
        conn.execute("PRAGMA busy_timeout = 10000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            log.warning("%s: could not switch to WAL mode (journal_mode is %s)", self.path, mode)
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.synchronous == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA cache_size = -64000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            check_schema(conn, self.path, writable=True)
            create_schema(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._tables = set(COLUMNS)

    def _open_reader_set(self) -> _ReaderSet:
        reader = _ReaderSet()
        if self.readonly:
            own = open_readonly(self.path)
        else:
            own = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            own.execute("PRAGMA busy_timeout = 10000")
            own.execute("PRAGMA query_only = 1")
        reader.sources.append(_Source(own, self._tables, own=True))
        for extra, tables in zip(self.extra_files, self._extra_tables):
            reader.sources.append(_Source(open_readonly(extra), tables, own=False))
        return reader

    def close(self) -> None:
        for reader in self._all_readers:
            for source in reader.sources:
                source.conn.close()
        self._all_readers.clear()
        self._readers = queue.SimpleQueue()
        if self._writer is not None:
            conn, self._writer = self._writer, None
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("PRAGMA journal_mode = DELETE")  # leave one plain file behind
            except sqlite3.Error as exc:  # another process has it open: stay in WAL
                log.info("%s: left in WAL mode (%s)", self.path, exc)
            conn.close()

    # ------------------------------------------------------------------------------ reads

    def read(self, query: Query) -> Any:
        """The answer to *query*, or None when no file knows it (HTTP 404)."""
        return self.read_many([query])[0]

    def read_many(self, queries: list[Query]) -> list[Any]:
        reader = self._readers.get()
        try:
            return [self._read(reader, q) for q in queries]
        except sqlite3.Error as exc:
            raise classify(exc, "database read failed") from exc
        finally:
            self._readers.put(reader)

    def _read(self, reader: _ReaderSet, q: Query) -> Any:
        if q.type == "protocol":
            return list(PROTOCOL)
        reads = _READS[q.type]
        if q.type in _LIST_TYPES:
            merged: list[Any] = []
            for source in reader.sources:
                for item in reads(source, q):
                    if item not in merged:
                        merged.append(item)
            return merged or None
        for source in reader.sources:
            value = reads(source, q)
            if value is None:
                continue
            if q.type == "transformation" and not source.own and _irreproducible(reader.sources[0], q.checksum, value):
                continue
            return value
        return None

    # ----------------------------------------------------------------------------- writes

    def write_batch(self, updates: list[Update]) -> list[Outcome]:
        """Apply *updates* in one transaction; one Outcome each, after the commit."""
        conn = self._writer
        if conn is None:
            raise DatabaseReadOnly(f"the database is read-only ({self.readonly_reason or 'not open'})")
        outcomes: list[Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for update in updates:
                conn.execute("SAVEPOINT one")
                try:
                    status, message = apply_update(conn, update)
                    outcome = OK if status == 200 else Outcome(status, message)
                except sqlite3.Error as exc:
                    conn.execute("ROLLBACK TO one")  # raises if SQLite ended the transaction
                    error = classify(exc, f"{update.type} write failed")
                    outcome = Outcome(getattr(error, "http_status", 500), str(error))
                conn.execute("RELEASE one")
                outcomes.append(outcome)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise classify(exc, "database write failed") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    # ---------------------------------------------------------------------------- helpers

    def counts(self) -> dict[str, int]:
        """Rows per table in the own file."""
        reader = self._readers.get()
        try:
            own = reader.sources[0]
            return {t: own.conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in sorted(own.tables)}
        finally:
            self._readers.put(reader)


# ---------------------------------------------------------------------------------- reads


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _one(source: _Source, table: str, sql: str, *args: Any) -> Any:
    if table not in source.tables:
        return None
    row = source.conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _many(source: _Source, table: str, sql: str, *args: Any) -> list[Any]:
    if table not in source.tables:
        return []
    return source.conn.execute(sql, args).fetchall()


def _irreproducible(own: _Source, checksum: str | None, result: str) -> bool:
    sql = 'SELECT 1 FROM "irreproducible_transformation" WHERE checksum = ? AND result = ? LIMIT 1'
    return _one(own, "irreproducible_transformation", sql, checksum, result) is not None


def _buffer_info(s: _Source, q: Query) -> Any:
    text = _one(s, "buffer_info", 'SELECT buffer_info FROM "buffer_info" WHERE checksum = ?', q.checksum)
    return None if text is None else _loads(text)


def _metadata(s: _Source, q: Query) -> Any:
    text = _one(s, "meta_data", 'SELECT metadata FROM "meta_data" WHERE checksum = ?', q.checksum)
    return None if text is None else _loads(text)


def _bucket_probe(s: _Source, q: Query) -> Any:
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


def _irreproducible_rows(s: _Source, q: Query) -> list[Any]:
    rows = _many(
        s,
        "irreproducible_transformation",
        'SELECT checksum, result, metadata FROM "irreproducible_transformation" WHERE checksum = ? ORDER BY id',
        q.checksum,
    )
    return [
        {"checksum": c, "result": r, "metadata": _loads(m)}
        for c, r, m in rows
        if q.result is None or r == q.result
    ]


def _rev_expression(s: _Source, q: Query) -> list[Any]:
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


_READS: dict[str, Callable[[_Source, Query], Any]] = {
    "transformation": lambda s, q: _one(
        s, "transformation", 'SELECT result FROM "transformation" WHERE checksum = ?', q.checksum
    ),
    "compilation": lambda s, q: _one(s, "compilation", 'SELECT result FROM "compilation" WHERE checksum = ?', q.checksum),
    "expression": lambda s, q: _one(
        s,
        "expression",
        'SELECT result FROM "expression" WHERE input_checksum = ? AND path = ? AND celltype = ? AND target_celltype = ?',
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
        for r in _many(s, "rev_transformation", 'SELECT checksum FROM "rev_transformation" WHERE result = ? ORDER BY id', q.checksum)
    ],
    "syntactic_to_semantic": lambda s, q: [
        r[0]
        for r in _many(
            s,
            "syntactic_to_semantic",
            'SELECT semantic FROM "syntactic_to_semantic" WHERE syntactic = ? AND celltype = ? AND subcelltype = ?',
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
            'SELECT syntactic FROM "syntactic_to_semantic" WHERE semantic = ? AND celltype = ? AND subcelltype = ?',
            q.checksum,
            q.celltype,
            q.subcelltype,
        )
    ],
    "rev_expression": _rev_expression,
    "irreproducible": _irreproducible_rows,
}

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

import logging
import os
import queue
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import quote

from .mapping_reads import LIST_TYPES, READS, Source, is_irreproducible
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
            conn = sqlite3.connect(
                _uri(path, **params), uri=True, check_same_thread=False, isolation_level=None
            )
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


class ReadWouldWait(Exception):
    """A point read on the event loop found the database locked (take a thread)."""


@dataclass
class _ReaderSet:
    sources: list[Source] = field(default_factory=list)


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
        #: the event loop's own connections, for point reads that must never wait
        self._now_reader: _ReaderSet | None = None
        self._tables: set[str] = set()
        self._extra_tables: list[set[str]] = []
        self._absent = False  # read-only and no file: an empty database

    # ---------------------------------------------------------------- opening and closing

    def open(self) -> None:
        if not self.readonly:
            reason = self._why_readonly()
            if reason:
                log.warning("%s: opening read-only: %s", self.path, reason)
                self.readonly, self.readonly_reason = True, reason
        try:
            if self.readonly and not os.path.exists(self.path):
                log.warning("%s does not exist: serving an empty read-only database", self.path)
                self._absent = True
            elif self.readonly:
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
            self._now_reader = self._open_reader_set()
            for source in self._now_reader.sources:
                source.conn.execute("PRAGMA busy_timeout = 0")
            self._all_readers.append(self._now_reader)
        except sqlite3.Error as exc:  # not a database, unreadable, locked...
            self.close()
            raise SchemaError(f"cannot open database file {self.path}: {exc}") from exc
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
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warning("%s: could not switch to WAL mode (journal_mode is %s)", self.path, mode)
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.synchronous == 'full' else 'NORMAL'}")
            conn.execute("PRAGMA cache_size = -64000")
            conn.execute("BEGIN IMMEDIATE")
            check_schema(conn, self.path, writable=True)
            create_schema(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        self._writer = conn
        self._tables = set(COLUMNS)

    def _open_reader_set(self) -> _ReaderSet:
        reader = _ReaderSet()
        if self._absent:
            own = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        elif self.readonly:
            own = open_readonly(self.path)
        else:
            own = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            own.execute("PRAGMA busy_timeout = 10000")
            own.execute("PRAGMA query_only = 1")
        reader.sources.append(Source(own, self._tables, own=True))
        for extra, tables in zip(self.extra_files, self._extra_tables, strict=True):
            reader.sources.append(Source(open_readonly(extra), tables, own=False))
        return reader

    def close(self) -> None:
        for reader in self._all_readers:
            for source in reader.sources:
                source.conn.close()
        self._all_readers.clear()
        self._now_reader = None
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

    def can_read_now(self, query: Query) -> bool:
        """Whether *query* is a point lookup that ``read_now`` may answer."""
        return self._now_reader is not None and query.type not in LIST_TYPES

    def read_now(self, query: Query) -> Any:
        """A point read on the calling (event loop) thread: never waits for a lock
        (ReadWouldWait instead); see MappingService.read."""
        assert self._now_reader is not None
        try:
            return self._read(self._now_reader, query)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise ReadWouldWait(str(exc)) from None
            raise classify(exc, "database read failed") from exc
        except sqlite3.Error as exc:
            raise classify(exc, "database read failed") from exc

    def _read(self, reader: _ReaderSet, q: Query) -> Any:
        if q.type == "protocol":
            return list(PROTOCOL)
        reads = READS[q.type]
        if q.type in LIST_TYPES:
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
            if (
                q.type == "transformation"
                and not source.own
                and is_irreproducible(reader.sources[0], q.checksum, value)
            ):
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
            return {
                t: own.conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in sorted(own.tables)
            }
        finally:
            self._readers.put(reader)

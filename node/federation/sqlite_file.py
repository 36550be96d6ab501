"""A small private SQLite file for federation state (nonces, claims).

One connection in autocommit mode, WAL journal, ``synchronous=NORMAL`` (a committed
write survives a process crash), guarded by a lock so that worker threads can share it.
"""

from __future__ import annotations

import os
import sqlite3
import threading


class SqliteFile:
    #: statements run on open, creating the tables if needed
    schema: tuple[str, ...] = ()
    #: named in the error raised when used before open()
    what = "the store"

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in self.schema:
            conn.execute(statement)
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.what} is not open")
        return self._conn

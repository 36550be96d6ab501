"""NonceStore: refuse a signed request seen before, also across a restart.

A signed request is accepted only within ``window`` seconds of its timestamp (signing.
MAX_SKEW), so a nonce needs remembering only while its timestamp is inside that window:
``record`` refuses a (origin, nonce) pair it holds, stores new ones, and now and then drops
rows whose timestamp is older than ``now - window - 1`` (such requests are refused as stale
anyway). The table lives in a small SQLite file under the data directory (WAL,
``synchronous=NORMAL``: a committed nonce survives a crash of the node process), so a
request captured before a restart cannot be replayed after it.

The API is blocking; call it from a worker thread. One connection, used under a lock.
"""

from __future__ import annotations

import sqlite3

from .sqlite_file import SqliteFile

PRUNE_EVERY = 10.0  # seconds between prunes


class NonceStore(SqliteFile):
    what = "the nonce store"
    schema = (
        "CREATE TABLE IF NOT EXISTS nonces ("
        " origin TEXT NOT NULL, nonce TEXT NOT NULL, timestamp INTEGER NOT NULL,"
        " PRIMARY KEY (origin, nonce)) WITHOUT ROWID",
        "CREATE INDEX IF NOT EXISTS nonces_by_time ON nonces (timestamp)",
    )

    def __init__(self, path: str, *, window: int = 60) -> None:
        super().__init__(path)
        self.window = window
        self._last_prune = float("-inf")

    def record(self, origin: str, nonce: str, timestamp: int, now: int) -> bool:
        """Store the nonce; False if this origin used it before (a replay)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise RuntimeError("the nonce store is not open")
            if now - self._last_prune >= PRUNE_EVERY:
                conn.execute("DELETE FROM nonces WHERE timestamp < ?", (now - self.window - 1,))
                self._last_prune = now
            try:
                conn.execute(
                    "INSERT INTO nonces (origin, nonce, timestamp) VALUES (?, ?, ?)",
                    (origin, nonce, timestamp),
                )
            except sqlite3.IntegrityError:
                return False
            return True

    def count(self) -> int:
        with self._lock:
            assert self._conn is not None
            return int(self._conn.execute("SELECT COUNT(*) FROM nonces").fetchone()[0])

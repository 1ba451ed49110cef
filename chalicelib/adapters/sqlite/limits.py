"""SQLite store of the request limits (``chalicelib.limits``): counters and gauges, each change one
conditional statement, as the DynamoDB store's UpdateItems are."""

from __future__ import annotations

from chalicelib.adapters.sqlite.db import Database


class SqliteLimitStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def increment(self, key: str, expires_at_s: int) -> int:
        with self.db.write() as conn:
            row = conn.execute(
                "INSERT INTO limits (key, n, expires_at) VALUES (?, 1, ?) "
                "ON CONFLICT (key) DO UPDATE SET n = n + 1, expires_at = excluded.expires_at RETURNING n",
                (key, expires_at_s),
            ).fetchone()
        return int(row[0])

    def read(self, key: str) -> int:
        with self.db.connection() as conn:
            row = conn.execute("SELECT n FROM limits WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def acquire(self, key: str, limit: int, now_ms: int, stale_after_ms: int) -> bool:
        with self.db.write() as conn:
            row = conn.execute("SELECT n, touched_ms FROM limits WHERE key = ?", (key,)).fetchone()
            taken = int(row[0]) if row else 0
            if taken >= limit:
                if int(row[1]) >= now_ms - stale_after_ms:
                    return False
                # Untouched for longer than any payment lasts: only leaked units are left.
                taken = 0
            conn.execute(
                "INSERT INTO limits (key, n, touched_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET n = excluded.n, touched_ms = excluded.touched_ms",
                (key, taken + 1, now_ms),
            )
        return True

    def release(self, key: str, now_ms: int) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE limits SET n = n - 1, touched_ms = ? WHERE key = ? AND n > 0", (now_ms, key))

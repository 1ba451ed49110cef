"""SQLite store of the request limits (``chalicelib.limits``): counters and gauges, each change one
conditional statement, as the DynamoDB store's UpdateItems are (``Database.write_one``: no
transaction around a single statement)."""

from __future__ import annotations

from chalicelib.adapters.sqlite.db import Database


class SqliteLimitStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def increment(self, key: str, expires_at_s: int) -> int:
        (row,) = self.db.write_returning(
            "INSERT INTO limits (key, n, expires_at) VALUES (?, 1, ?) "
            "ON CONFLICT (key) DO UPDATE SET n = n + 1, expires_at = excluded.expires_at RETURNING n",
            (key, expires_at_s),
        )
        return int(row[0])

    def read(self, key: str) -> int:
        with self.db.connection() as conn:
            row = conn.execute("SELECT n FROM limits WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def acquire(self, key: str, limit: int, now_ms: int, stale_after_ms: int) -> bool:
        # Taken below the limit: one more. At the limit but untouched for longer than any payment
        # lasts: only leaked units are left, so it starts again at one. Otherwise the update's
        # WHERE refuses, and no row comes back.
        rows = self.db.write_returning(
            "INSERT INTO limits (key, n, touched_ms) VALUES (?, 1, ?) "
            "ON CONFLICT (key) DO UPDATE SET "
            "n = CASE WHEN limits.n >= ? THEN 1 ELSE limits.n + 1 END, touched_ms = excluded.touched_ms "
            "WHERE limits.n < ? OR limits.touched_ms < ? "
            "RETURNING n",
            (key, now_ms, limit, limit, now_ms - stale_after_ms),
        )
        return bool(rows)

    def release(self, key: str, now_ms: int) -> None:
        self.db.write_one("UPDATE limits SET n = n - 1, touched_ms = ? WHERE key = ? AND n > 0", (now_ms, key))

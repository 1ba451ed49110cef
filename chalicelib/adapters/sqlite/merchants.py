"""SQLite repository of merchants: settings, and login credentials (only a slow salted hash is stored)."""

from __future__ import annotations

from typing import Any

from chalicelib.adapters.sqlite.db import Database


class SqliteMerchantRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Read back as the DynamoDB items read, ``pk`` included; no notify_url attribute when none was given.
    def get_login(self, login: str) -> dict[str, Any] | None:
        with self.db.connection() as conn:
            row = conn.execute("SELECT * FROM logins WHERE login = ?", (login,)).fetchone()
        return {"pk": f"LOGIN#{login}", **dict(row)} if row else None

    def get_merchant(self, merchant_id: str) -> dict[str, Any] | None:
        with self.db.connection() as conn:
            row = conn.execute("SELECT * FROM merchants WHERE merchant_id = ?", (merchant_id,)).fetchone()
        if row is None:
            return None
        return {
            "pk": f"MERCHANT#{merchant_id}",
            **{key: value for key, value in dict(row).items() if value is not None},
        }

    def put_merchant(
        self, merchant_id: str, notify_url: str | None, notify_passphrase: str, basket_policy: str = "lenient"
    ) -> None:
        self.db.write_one(
            "INSERT OR REPLACE INTO merchants (merchant_id, notify_url, notify_passphrase, basket_policy) "
            "VALUES (?, ?, ?, ?)",
            (merchant_id, notify_url, notify_passphrase, basket_policy),
        )

    def delete_login(self, login: str) -> bool:
        return self.db.write_one("DELETE FROM logins WHERE login = ?", (login,)) == 1

    def put_login(self, login: str, merchant_id: str, password_hash: str) -> None:
        self.db.write_one(
            "INSERT OR REPLACE INTO logins (login, merchant_id, password_hash) VALUES (?, ?, ?)",
            (login, merchant_id, password_hash),
        )

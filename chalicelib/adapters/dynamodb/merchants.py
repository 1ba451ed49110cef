"""DynamoDB repository of merchants: ``pk`` = ``MERCHANT#{id}`` (settings) or ``LOGIN#{login}``
(credential hash: only a slow salted hash is stored)."""

from __future__ import annotations

from typing import Any

from chalicelib.adapters.aws import client, from_item, to_item


class DynamoMerchantRepository:
    """Merchant settings and login credentials (only a slow salted hash is stored)."""

    def __init__(self, table: str) -> None:
        self.table = table

    def _get(self, pk: str) -> dict[str, Any] | None:
        found = client("dynamodb").get_item(TableName=self.table, Key={"pk": {"S": pk}}, ConsistentRead=True)
        item = found.get("Item")
        return from_item(item) if item else None

    def get_login(self, login: str) -> dict[str, Any] | None:
        return self._get(f"LOGIN#{login}")

    def get_merchant(self, merchant_id: str) -> dict[str, Any] | None:
        return self._get(f"MERCHANT#{merchant_id}")

    def put_merchant(
        self, merchant_id: str, notify_url: str | None, notify_passphrase: str, basket_policy: str = "lenient"
    ) -> None:
        client("dynamodb").put_item(
            TableName=self.table,
            Item=to_item(
                {
                    "pk": f"MERCHANT#{merchant_id}",
                    "merchant_id": merchant_id,
                    "notify_url": notify_url,
                    "notify_passphrase": notify_passphrase,
                    "basket_policy": basket_policy,
                }
            ),
        )

    def put_login(self, login: str, merchant_id: str, password_hash: str) -> None:
        client("dynamodb").put_item(
            TableName=self.table,
            Item=to_item(
                {"pk": f"LOGIN#{login}", "login": login, "merchant_id": merchant_id, "password_hash": password_hash}
            ),
        )

    def delete_login(self, login: str) -> bool:
        found = client("dynamodb").delete_item(
            TableName=self.table, Key={"pk": {"S": f"LOGIN#{login}"}}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in found

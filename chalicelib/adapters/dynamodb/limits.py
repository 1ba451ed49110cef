"""Limit counters and gauges as items of the merchants table (``pk`` = ``LIMIT#…``), expired by the
table's TTL attribute ``expires_at``. Every change is one atomic UpdateItem; a gauge is taken only
under a condition, so concurrent Lambda instances never take more than its limit."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from chalicelib.adapters.aws import client

# Counters and gauges stay a day after their last change at most.
_RETENTION_S = 86_400


def _key(key: str) -> dict[str, Any]:
    return {"pk": {"S": f"LIMIT#{key}"}}


def _condition_failed(error: ClientError) -> bool:
    return bool(error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


class DynamoLimitStore:
    def __init__(self, table: str) -> None:
        self.table = table

    def increment(self, key: str, expires_at_s: int) -> int:
        found = client("dynamodb").update_item(
            TableName=self.table,
            Key=_key(key),
            UpdateExpression="ADD n :one SET expires_at = :expires",
            ExpressionAttributeValues={":one": {"N": "1"}, ":expires": {"N": str(expires_at_s)}},
            ReturnValues="UPDATED_NEW",
        )
        return int(found["Attributes"]["n"]["N"])

    def read(self, key: str) -> int:
        found = client("dynamodb").get_item(TableName=self.table, Key=_key(key), ProjectionExpression="n")
        return int(found.get("Item", {}).get("n", {}).get("N", "0"))

    def acquire(self, key: str, limit: int, now_ms: int, stale_after_ms: int) -> bool:
        dynamodb = client("dynamodb")
        expires = str(now_ms // 1000 + _RETENTION_S)
        try:
            dynamodb.update_item(
                TableName=self.table,
                Key=_key(key),
                UpdateExpression="ADD n :one SET touched_ms = :now, expires_at = :expires",
                ConditionExpression="attribute_not_exists(n) OR n < :limit",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":now": {"N": str(now_ms)},
                    ":expires": {"N": expires},
                    ":limit": {"N": str(limit)},
                },
            )
            return True
        except ClientError as error:
            if not _condition_failed(error):
                raise
        # Full. If nothing took or gave back a unit for longer than any payment lasts, every unit
        # taken was leaked by a process that died: start again, unless another process just did.
        item = dynamodb.get_item(TableName=self.table, Key=_key(key), ConsistentRead=True).get("Item", {})
        touched = item.get("touched_ms", {}).get("N")
        if touched is None or int(touched) >= now_ms - stale_after_ms:
            return False
        try:
            dynamodb.update_item(
                TableName=self.table,
                Key=_key(key),
                UpdateExpression="SET n = :one, touched_ms = :now, expires_at = :expires",
                ConditionExpression="touched_ms = :touched",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":now": {"N": str(now_ms)},
                    ":expires": {"N": expires},
                    ":touched": {"N": touched},
                },
            )
            return True
        except ClientError as error:
            if not _condition_failed(error):
                raise
            return False

    def release(self, key: str, now_ms: int) -> None:
        try:
            client("dynamodb").update_item(
                TableName=self.table,
                Key=_key(key),
                UpdateExpression="ADD n :minus SET touched_ms = :now",
                ConditionExpression="n > :zero",
                ExpressionAttributeValues={":minus": {"N": "-1"}, ":now": {"N": str(now_ms)}, ":zero": {"N": "0"}},
            )
        except ClientError as error:
            # Already at zero: the gauge was reclaimed as stale while this payment waited.
            if not _condition_failed(error):
                raise

"""DynamoDB repositories of the Console side: transactions, order details, the IPN inbox.

Every write is conditional, so redelivered stream records and queue messages change nothing twice:
- transactions: ``transaction_reference``; a ``version`` attribute guards every write;
  GSIs ``by-merchant-created`` (merchant_id, created_at) and ``by-merchant-order`` (merchant_order, created_at).
- order details: ``merchant_order``; a newer ``attempt`` replaces an older one, never the reverse.
- ipn: ``transaction_reference``; the first IPN of a reference is kept, repeats are refused.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from botocore.exceptions import ClientError

from chalicelib.adapters.aws import client, from_item, to_item
from chalicelib.adapters.dynamo import _condition_failed as _is_condition_failure
from chalicelib.ports import ConditionFailed
from chalicelib.transactions import OrderDetails, Transaction, merchant_order

_TX_FIELDS = {f.name for f in fields(Transaction)}
_DETAILS_FIELDS = {f.name for f in fields(OrderDetails)}


def transaction_from_item(values: dict[str, Any]) -> Transaction:
    known = {key: value for key, value in values.items() if key in _TX_FIELDS}
    known["flags"] = [str(flag) for flag in known.get("flags") or []]
    known["notified_statuses"] = [int(code) for code in known.get("notified_statuses") or []]
    return Transaction(**known)


class DynamoTransactionRepository:
    def __init__(self, table: str) -> None:
        self.table = table

    def get(self, reference: str) -> Transaction | None:
        found = client("dynamodb").get_item(
            TableName=self.table, Key={"transaction_reference": {"S": reference}}, ConsistentRead=True
        )
        item = found.get("Item")
        return transaction_from_item(from_item(item)) if item else None

    def put(self, tx: Transaction, expected_version: int) -> None:
        """Write ``tx`` if the stored one is still at ``expected_version`` (0: does not exist yet)."""
        item = to_item({**asdict(tx), "merchant_order": tx.merchant_order})
        if expected_version == 0:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(transaction_reference)"}
        else:
            condition = {
                "ConditionExpression": "version = :v",
                "ExpressionAttributeValues": {":v": {"N": str(expected_version)}},
            }
        self._write(
            tx.transaction_reference, lambda: client("dynamodb").put_item(TableName=self.table, Item=item, **condition)
        )

    def mark_enqueued(self, reference: str, status_code: int) -> None:
        """The pending notification of ``status_code`` is in the queue; ConditionFailed if it moved on."""
        self._update(
            reference,
            "SET notify_enqueued = :t, version = version + :one",
            "notify_pending_status = :s AND notify_enqueued = :f",
            {":t": {"BOOL": True}, ":f": {"BOOL": False}, ":s": {"N": str(status_code)}},
        )

    def record_delivery(self, reference: str, status_code: int) -> None:
        """A merchant server acknowledged ``status_code``; ConditionFailed if it already had."""
        self._update(
            reference,
            "SET notified_statuses = list_append(if_not_exists(notified_statuses, :empty), :codes), "
            "version = version + :one",
            "attribute_exists(transaction_reference) AND NOT contains(notified_statuses, :s)",
            {":empty": {"L": []}, ":codes": {"L": [{"N": str(status_code)}]}, ":s": {"N": str(status_code)}},
        )

    def _update(self, reference: str, update: str, condition: str, values: dict[str, Any]) -> None:
        values = {**values, ":one": {"N": "1"}}
        self._write(
            reference,
            lambda: client("dynamodb").update_item(
                TableName=self.table,
                Key={"transaction_reference": {"S": reference}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            ),
        )

    @staticmethod
    def _write(reference: str, call: Any) -> None:
        try:
            call()
        except ClientError as exc:
            if _is_condition_failure(exc):
                raise ConditionFailed(f"transaction {reference} changed meanwhile") from exc
            raise

    def list_for_order(self, merchant_id: str, order_id: str) -> list[Transaction]:
        found: list[Transaction] = []
        start: dict[str, Any] | None = None
        while True:
            items, start = self.query(
                "by-merchant-order", "merchant_order", merchant_order(merchant_id, order_id), None, None, {}, 100, start
            )
            found.extend(items)
            if start is None:
                return found

    def query(
        self,
        index: str,
        partition: str,
        value: str,
        created_from: str | None,
        created_to: str | None,
        equals: dict[str, str | int],
        limit: int,
        start_key: dict[str, Any] | None,
    ) -> tuple[list[Transaction], dict[str, Any] | None]:
        """One Query page of an index, newest first; ``equals`` become a filter expression."""
        values: dict[str, Any] = {":p": {"S": value}}
        key_condition = f"{partition} = :p"
        if created_from is not None or created_to is not None:
            values[":from"] = {"S": created_from or ""}
            # "~" sorts after every digit: an open upper bound for RFC 3339 strings.
            values[":to"] = {"S": created_to or "~"}
            key_condition += " AND created_at BETWEEN :from AND :to"
        names: dict[str, str] = {}
        filters = []
        for index_no, (attribute, wanted) in enumerate(sorted(equals.items())):
            names[f"#f{index_no}"] = attribute
            values[f":f{index_no}"] = {"N": str(wanted)} if isinstance(wanted, int) else {"S": wanted}
            filters.append(f"#f{index_no} = :f{index_no}")
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
            kwargs["ExpressionAttributeNames"] = names
        if start_key:
            kwargs["ExclusiveStartKey"] = start_key
        page = client("dynamodb").query(**kwargs)
        return [transaction_from_item(from_item(item)) for item in page["Items"]], page.get("LastEvaluatedKey")


class DynamoOrderDetailsRepository:
    def __init__(self, table: str) -> None:
        self.table = table

    def get(self, merchant_id: str, order_id: str) -> OrderDetails | None:
        found = client("dynamodb").get_item(
            TableName=self.table,
            Key={"merchant_order": {"S": merchant_order(merchant_id, order_id)}},
            ConsistentRead=True,
        )
        item = found.get("Item")
        if not item:
            return None
        values = from_item(item)
        # Absent attributes are the None values to_item leaves out.
        row: dict[str, Any] = {name: values.get(name) for name in _DETAILS_FIELDS}
        return OrderDetails(**row)

    def put_if_newer(self, details: OrderDetails) -> bool:
        """Store the details unless those of this attempt or a newer one are already there."""
        try:
            client("dynamodb").put_item(
                TableName=self.table,
                Item=to_item({**asdict(details), "merchant_order": details.merchant_order}),
                ConditionExpression="attribute_not_exists(merchant_order) OR attempt < :a",
                ExpressionAttributeValues={":a": {"N": str(details.attempt)}},
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True


class DynamoIpnInbox:
    """IPNs exactly as verified, kept before the gateway is answered."""

    def __init__(self, table: str) -> None:
        self.table = table

    def store(self, reference: str, merchant_id: str, body_json: str, body_sha256: str, received_at_ms: int) -> bool:
        """False when this transaction_reference was already received."""
        try:
            client("dynamodb").put_item(
                TableName=self.table,
                Item=to_item(
                    {
                        "transaction_reference": reference,
                        "merchant_id": merchant_id,
                        "body_json": body_json,
                        "body_sha256": body_sha256,
                        "received_at_ms": received_at_ms,
                    }
                ),
                ConditionExpression="attribute_not_exists(transaction_reference)",
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def get(self, reference: str) -> dict[str, Any] | None:
        found = client("dynamodb").get_item(
            TableName=self.table, Key={"transaction_reference": {"S": reference}}, ConsistentRead=True
        )
        item = found.get("Item")
        return from_item(item) if item else None

    def mark_merged(self, reference: str, merged_at_ms: int) -> None:
        client("dynamodb").update_item(
            TableName=self.table,
            Key={"transaction_reference": {"S": reference}},
            UpdateExpression="SET merged_at_ms = if_not_exists(merged_at_ms, :m)",
            ConditionExpression="attribute_exists(transaction_reference)",
            ExpressionAttributeValues={":m": {"N": str(merged_at_ms)}},
        )

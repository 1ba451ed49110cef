"""DynamoDB repositories of the Console side: transactions, order details, the IPN inbox.

Every write is conditional, so redelivered stream records and queue messages change nothing twice:
- transactions: ``transaction_reference``; a ``version`` attribute guards every write;
  GSIs ``by-merchant-created`` (merchant_id, created_at) and ``by-merchant-order`` (merchant_order, created_at).
- order details: ``merchant_order``; a newer ``attempt`` replaces an older one, never the reverse.
- ipn: ``transaction_reference``; the first IPN of a reference is kept, repeats are refused.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from chalicelib.adapters.aws import client, from_item, to_item
from chalicelib.adapters.dynamodb.conditions import conditional, holds
from chalicelib.adapters.records import as_record
from chalicelib.console.domain import OrderDetails, Transaction, TransactionQuery
from chalicelib.console.ports import Position
from chalicelib.keys import order_key

BY_CREATED = "by-merchant-created"
BY_ORDER = "by-merchant-order"

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
        item = to_item({**as_record(tx), "merchant_order": tx.merchant_order})
        if expected_version == 0:
            condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(transaction_reference)"}
        else:
            condition = {
                "ConditionExpression": "version = :v",
                "ExpressionAttributeValues": {":v": {"N": str(expected_version)}},
            }
        with conditional(f"transaction {tx.transaction_reference} changed meanwhile"):
            client("dynamodb").put_item(TableName=self.table, Item=item, **condition)

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
        with conditional(f"transaction {reference} changed meanwhile"):
            client("dynamodb").update_item(
                TableName=self.table,
                Key={"transaction_reference": {"S": reference}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )

    def list_for_order(self, merchant_id: str, order_id: str) -> list[Transaction]:
        query = TransactionQuery(merchant_id=merchant_id, order_id=order_id)
        found: list[Transaction] = []
        after: Position | None = None
        while True:
            items, after = self.page(query, 100, after)
            found.extend(items)
            if after is None:
                return found

    def page(
        self, query: TransactionQuery, limit: int, after: Position | None
    ) -> tuple[list[Transaction], Position | None]:
        """One Query page, newest first; never a Scan. The partition is always the query's own
        merchant (or merchant and order), so a position can never page into another merchant's data."""
        if query.order_id is not None:
            index, partition, value = BY_ORDER, "merchant_order", order_key(query.merchant_id, query.order_id)
        else:
            index, partition, value = BY_CREATED, "merchant_id", query.merchant_id
        values: dict[str, Any] = {":p": {"S": value}}
        key_condition = f"{partition} = :p"
        if query.created_from is not None or query.created_to is not None:
            # DynamoDB refuses an empty string in a key condition; "0" sorts before every RFC 3339 year.
            values[":from"] = {"S": query.created_from or "0"}
            # "~" sorts after every digit: an open upper bound for RFC 3339 strings.
            values[":to"] = {"S": query.created_to or "~"}
            key_condition += " AND created_at BETWEEN :from AND :to"
        equals: dict[str, str | int] = {}
        if query.status_code is not None:
            equals["status_code"] = query.status_code
        if query.terminal_id is not None:
            equals["terminal_id"] = query.terminal_id
        names: dict[str, str] = {}
        filters = []
        for number, (attribute, wanted) in enumerate(sorted(equals.items())):
            names[f"#f{number}"] = attribute
            values[f":f{number}"] = {"N": str(wanted)} if isinstance(wanted, int) else {"S": wanted}
            filters.append(f"#f{number} = :f{number}")
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": key_condition,
            "ExpressionAttributeValues": values,
            "ScanIndexForward": False,
            # Filters apply after DynamoDB's Limit: a page may come back short and still continue.
            "Limit": limit,
        }
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
            kwargs["ExpressionAttributeNames"] = names
        if after is not None:
            kwargs["ExclusiveStartKey"] = {
                partition: {"S": value},
                "created_at": {"S": after["created_at"]},
                "transaction_reference": {"S": after["transaction_reference"]},
            }
        page = client("dynamodb").query(**kwargs)
        last = page.get("LastEvaluatedKey")
        position = (
            {"created_at": last["created_at"]["S"], "transaction_reference": last["transaction_reference"]["S"]}
            if last
            else None
        )
        return [transaction_from_item(from_item(item)) for item in page["Items"]], position


class DynamoOrderDetailsRepository:
    def __init__(self, table: str) -> None:
        self.table = table

    def get(self, merchant_id: str, order_id: str) -> OrderDetails | None:
        found = client("dynamodb").get_item(
            TableName=self.table,
            Key={"merchant_order": {"S": order_key(merchant_id, order_id)}},
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
        return holds(
            lambda: client("dynamodb").put_item(
                TableName=self.table,
                Item=to_item({**as_record(details), "merchant_order": details.merchant_order}),
                ConditionExpression="attribute_not_exists(merchant_order) OR attempt < :a",
                ExpressionAttributeValues={":a": {"N": str(details.attempt)}},
            )
        )


class DynamoIpnInbox:
    """IPNs exactly as verified, kept before the gateway is answered."""

    def __init__(self, table: str) -> None:
        self.table = table

    def store(self, reference: str, merchant_id: str, body_json: str, body_sha256: str, received_at_ms: int) -> bool:
        """False when this transaction_reference was already received."""
        item = {
            "transaction_reference": reference,
            "merchant_id": merchant_id,
            "body_json": body_json,
            "body_sha256": body_sha256,
            "received_at_ms": received_at_ms,
        }
        return holds(
            lambda: client("dynamodb").put_item(
                TableName=self.table,
                Item=to_item(item),
                ConditionExpression="attribute_not_exists(transaction_reference)",
            )
        )

    def get(self, reference: str) -> dict[str, Any] | None:
        found = client("dynamodb").get_item(
            TableName=self.table, Key={"transaction_reference": {"S": reference}}, ConsistentRead=True
        )
        item = found.get("Item")
        return from_item(item) if item else None

    def mark_merged(self, reference: str, merged_at_ms: int) -> None:
        # Only a stored IPN is marked: an update must not create a bodiless inbox item.
        with conditional(f"no stored IPN {reference}"):
            client("dynamodb").update_item(
                TableName=self.table,
                Key={"transaction_reference": {"S": reference}},
                UpdateExpression="SET merged_at_ms = if_not_exists(merged_at_ms, :m)",
                ConditionExpression="attribute_exists(transaction_reference)",
                ExpressionAttributeValues={":m": {"N": str(merged_at_ms)}},
            )

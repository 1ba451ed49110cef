"""DynamoDB repositories of the payment side: terminals and the payments table.

Correctness lives in the conditions, never in process memory.

Tables (see infra/ for their definitions):
- terminals: ``terminal_id``; GSI ``by-merchant`` (merchant_id, terminal_id).
- payments: ``pk`` = ``ORDER#{merchant}#{order_id}`` (head) or ``DISPATCH#{request_id}`` (correlation);
  GSI ``by-merchant-updated`` (merchant_id, updated_at_ms), sparse: only heads carry ``updated_at_ms``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from chalicelib.adapters.aws import client, from_item, to_item, to_value
from chalicelib.adapters.dynamodb.conditions import conditional, holds
from chalicelib.adapters.records import as_record
from chalicelib.keys import order_key
from chalicelib.payments.ports import Dispatch, DispatchState, OrderHead, OrderPosition, Terminal, Transition

BY_MERCHANT_UPDATED = "by-merchant-updated"


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in values.items() if key in names}


class DynamoTerminalRepository:
    def __init__(self, table: str) -> None:
        self.table = table

    def get(self, terminal_id: str) -> Terminal | None:
        found = client("dynamodb").get_item(
            TableName=self.table, Key={"terminal_id": {"S": terminal_id}}, ConsistentRead=True
        )
        item = found.get("Item")
        return Terminal(**_known(Terminal, from_item(item))) if item else None

    def list_for_merchant(self, merchant_id: str) -> list[Terminal]:
        terminals: list[Terminal] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": "by-merchant",
            "KeyConditionExpression": "merchant_id = :m",
            "ExpressionAttributeValues": {":m": {"S": merchant_id}},
        }
        while True:
            page = client("dynamodb").query(**kwargs)
            terminals.extend(Terminal(**_known(Terminal, from_item(item))) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return terminals
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def put(self, terminal: Terminal) -> None:
        client("dynamodb").put_item(TableName=self.table, Item=to_item(as_record(terminal)))

    def create(self, terminal: Terminal) -> None:
        """Enroll; ConditionFailed if the terminal id is taken (by this merchant or another)."""
        with conditional(f"terminal {terminal.terminal_id} is already enrolled"):
            client("dynamodb").put_item(
                TableName=self.table,
                Item=to_item(as_record(terminal)),
                ConditionExpression="attribute_not_exists(terminal_id)",
            )

    def set_passphrase(self, terminal_id: str, merchant_id: str, passphrase: str | None) -> None:
        """Rotate (or remove, disabling the Cloud API service) the passphrase of the merchant's terminal."""
        update = "SET passphrase = :p" if passphrase else "REMOVE passphrase"
        values: dict[str, Any] = {":m": {"S": merchant_id}}
        if passphrase:
            values[":p"] = {"S": passphrase}
        with conditional(f"terminal {terminal_id} is not enrolled for {merchant_id}"):
            client("dynamodb").update_item(
                TableName=self.table,
                Key={"terminal_id": {"S": terminal_id}},
                UpdateExpression=update,
                ConditionExpression="merchant_id = :m",
                ExpressionAttributeValues=values,
            )

    def claim(self, terminal_id: str, request_id: str, now_ms: int, until_ms: int, order_key: str = "") -> bool:
        return holds(
            lambda: client("dynamodb").update_item(
                TableName=self.table,
                Key={"terminal_id": {"S": terminal_id}},
                UpdateExpression="SET busy_request_id = :r, busy_until_ms = :u, busy_order = :o",  # not reserved
                # An expired claim (its holder crashed or gave up) may be taken over.
                ConditionExpression="attribute_exists(terminal_id) AND "
                "(attribute_not_exists(busy_request_id) OR busy_until_ms <= :now)",
                ExpressionAttributeValues={
                    ":r": {"S": request_id},
                    ":u": {"N": str(until_ms)},
                    ":now": {"N": str(now_ms)},
                    ":o": {"S": order_key},
                },
            )
        )

    def release(self, terminal_id: str, request_id: str) -> bool:
        return holds(
            lambda: client("dynamodb").update_item(
                TableName=self.table,
                Key={"terminal_id": {"S": terminal_id}},
                UpdateExpression="REMOVE busy_request_id, busy_until_ms, busy_order",
                ConditionExpression="busy_request_id = :r",
                ExpressionAttributeValues={":r": {"S": request_id}},
            )
        )

    def record_status(self, terminal_id: str, online: bool, sent_at_ms: int, seen_at: str) -> bool:
        return holds(
            lambda: client("dynamodb").update_item(
                TableName=self.table,
                Key={"terminal_id": {"S": terminal_id}},
                UpdateExpression="SET #online = :o, status_at_ms = :s, last_seen_at = :seen",
                # Strictly newer than the last presence fact: a replayed or reordered status changes nothing.
                ConditionExpression="attribute_exists(terminal_id) AND "
                "(attribute_not_exists(status_at_ms) OR status_at_ms < :s)",
                ExpressionAttributeNames={"#online": "online"},
                ExpressionAttributeValues={
                    ":o": {"BOOL": online},
                    ":s": {"N": str(sent_at_ms)},
                    ":seen": {"S": seen_at},
                },
            )
        )

    def record_presence(self, terminal_id: str, online: bool, at_ms: int, session: str, seen_at: str) -> bool:
        # Not older than the last fact; and a disconnect ends only the session recorded as current
        # (a taken-over connection's disconnect may carry a later timestamp than the new connect).
        condition = "attribute_exists(terminal_id) AND (attribute_not_exists(status_at_ms) OR status_at_ms <= :t)"
        if not online:
            condition += " AND (attribute_not_exists(presence_session) OR presence_session = :session)"
        return holds(
            lambda: client("dynamodb").update_item(
                TableName=self.table,
                Key={"terminal_id": {"S": terminal_id}},
                UpdateExpression="SET #online = :o, status_at_ms = :t, last_seen_at = :seen, "
                "presence_session = :session",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#online": "online"},
                ExpressionAttributeValues={
                    ":o": {"BOOL": online},
                    ":t": {"N": str(at_ms)},
                    ":seen": {"S": seen_at},
                    ":session": {"S": session},
                },
            )
        )


def head_key(merchant_id: str, order_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"ORDER#{order_key(merchant_id, order_id)}"}}


def _order_id_of(pk: str, merchant_id: str) -> str:
    prefix = f"ORDER#{order_key(merchant_id, '')}"
    if not pk.startswith(prefix):
        raise ValueError(f"{pk!r} is not an order head of {merchant_id}")
    return pk[len(prefix) :]


def dispatch_key(request_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"DISPATCH#{request_id}"}}


class DynamoPaymentRepository:
    def __init__(self, table: str, retention_s: int) -> None:
        self.table = table
        self.retention_s = retention_s

    def get_head(self, merchant_id: str, order_id: str) -> OrderHead | None:
        found = client("dynamodb").get_item(
            TableName=self.table, Key=head_key(merchant_id, order_id), ConsistentRead=True
        )
        item = found.get("Item")
        return OrderHead(**_known(OrderHead, from_item(item))) if item else None

    def get_dispatch(self, request_id: str) -> Dispatch | None:
        found = client("dynamodb").get_item(TableName=self.table, Key=dispatch_key(request_id), ConsistentRead=True)
        item = found.get("Item")
        return _dispatch(from_item(item)) if item else None

    def list_heads(
        self, merchant_id: str, limit: int, after: OrderPosition | None = None, terminal_id: str | None = None
    ) -> tuple[list[OrderHead], OrderPosition | None]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": BY_MERCHANT_UPDATED,
            "KeyConditionExpression": "merchant_id = :m",
            "ExpressionAttributeValues": {":m": {"S": merchant_id}},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if terminal_id is not None:
            kwargs["FilterExpression"] = "terminal_id = :t"
            kwargs["ExpressionAttributeValues"][":t"] = {"S": terminal_id}
        if after is not None:
            updated_at_ms, order_id = after
            kwargs["ExclusiveStartKey"] = {
                **head_key(merchant_id, order_id),
                "merchant_id": {"S": merchant_id},
                "updated_at_ms": {"N": str(updated_at_ms)},
            }
        page = client("dynamodb").query(**kwargs)
        heads = [OrderHead(**_known(OrderHead, from_item(item))) for item in page["Items"]]
        last = page.get("LastEvaluatedKey")
        if last is None:
            return heads, None
        # The key names the head the query stopped at, which a filter may have left out of the page.
        position = from_item(last)
        return heads, (int(position["updated_at_ms"]), _order_id_of(str(position["pk"]), merchant_id))

    def start_attempt(self, head: OrderHead, dispatch: Dispatch, previous_attempt: int | None) -> None:
        expires_at = head.updated_at_ms // 1000 + self.retention_s
        head_item = {**head_key(head.merchant_id, head.order_id), **to_item(as_record(head))}
        head_item["expires_at"] = to_value(expires_at)
        dispatch_item = {**dispatch_key(dispatch.request_id), **to_item(_dispatch_values(dispatch))}
        dispatch_item["expires_at"] = to_value(expires_at)
        if previous_attempt is None:
            head_put: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            # Only the attempt we read may be replaced: two retries racing start one attempt.
            head_put = {
                "ConditionExpression": "attempt = :prev",
                "ExpressionAttributeValues": {":prev": {"N": str(previous_attempt)}},
            }
        with conditional(f"order {head.order_id} attempt {head.attempt} lost a race"):
            client("dynamodb").transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.table, "Item": head_item, **head_put}},
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": dispatch_item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )

    def apply(self, transition: Transition) -> Dispatch:
        rule = transition.rule
        # Every attribute goes through a name placeholder: several (state, result…) are reserved words.
        names = {"#state": "state", "#version": "version"}
        values: dict[str, Any] = {":to": {"S": transition.to.value}, ":one": {"N": "1"}}
        sets = ["#state = :to", "#version = #version + :one"]

        def assign(attribute: str, placeholder: str, value: dict[str, Any]) -> None:
            names[f"#{attribute}"] = attribute
            values[placeholder] = value
            sets.append(f"#{attribute} = {placeholder}")

        assign(rule.stamp, ":at", {"N": str(transition.at_ms)})
        if transition.reason is not None:
            assign("reason", ":reason", {"S": transition.reason})
        if transition.result is not None:
            assign("result", ":result", to_value(transition.result))
            assign("result_at_ms", ":result_at", {"N": str(transition.at_ms)})
        if rule.late:
            assign("late", ":late", {"BOOL": True})
        start = sorted(state.value for state in rule.start)
        placeholders = []
        for index, state in enumerate(start):
            values[f":from{index}"] = {"S": state}
            placeholders.append(f":from{index}")
        condition = f"#state IN ({', '.join(placeholders)})"
        if rule.failed_for:
            reasons = []
            for index, failure in enumerate(sorted(rule.failed_for)):
                values[f":failed_for{index}"] = {"S": failure}
                reasons.append(f":failed_for{index}")
            values[":failed"] = {"S": DispatchState.FAILED.value}
            names["#reason"] = "reason"
            condition = f"({condition} OR (#state = :failed AND #reason IN ({', '.join(reasons)})))"
        if rule.records_result:
            # The terminal's first result is final: no second one is stored, in any state.
            # (A record finished before ``result_at_ms`` existed shows its result only.)
            condition += " AND attribute_not_exists(#result_at_ms) AND attribute_not_exists(#result)"
        if transition.terminal_id is not None:
            condition += " AND #terminal_id = :terminal"
            names["#terminal_id"] = "terminal_id"
            values[":terminal"] = {"S": transition.terminal_id}
        with conditional(f"dispatch {transition.request_id}: {rule.name} refused"):
            updated = client("dynamodb").update_item(
                TableName=self.table,
                Key=dispatch_key(transition.request_id),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        return _dispatch(from_item(updated["Attributes"]))


def _dispatch_values(dispatch: Dispatch) -> dict[str, Any]:
    values = as_record(dispatch)
    values["state"] = dispatch.state.value
    extra = values.pop("extra")
    values.update(extra)
    return values


def _dispatch(values: dict[str, Any]) -> Dispatch:
    values = dict(values)
    values.pop("pk", None)
    values.pop("expires_at", None)
    known = _known(Dispatch, values)
    extra = {key: value for key, value in values.items() if key not in known}
    known["state"] = DispatchState(known["state"])
    return Dispatch(**known, extra=extra)

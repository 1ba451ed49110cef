"""The Console view: a merchant's transactions, by date or by order, one Query page at a time.

Never a Scan: every read is a Query on ``by-merchant-created`` or ``by-merchant-order`` whose
partition is the caller's own merchant, so one merchant can never page into another's data — the
cursor is only the index position, checked to belong to the caller before it is used.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Protocol

from chalicelib import envelope as env
from chalicelib.errors import transaction_not_found, validation_error
from chalicelib.transactions import Transaction, console_view, merchant_order, status_code_from_filter

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
BY_CREATED = "by-merchant-created"
BY_ORDER = "by-merchant-order"


class ConsoleReader(Protocol):
    def get(self, reference: str) -> Transaction | None: ...

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
    ) -> tuple[list[Transaction], dict[str, Any] | None]: ...


def get_transaction(reader: ConsoleReader, merchant_id: str, reference: str) -> dict[str, Any]:
    tx = reader.get(reference)
    if tx is None or tx.merchant_id != merchant_id:
        # Another merchant's transaction is answered as unknown, never as forbidden.
        raise transaction_not_found()
    return console_view(tx)


def list_transactions(reader: ConsoleReader, merchant_id: str, params: Mapping[str, str]) -> dict[str, Any]:
    limit = _limit(params.get("limit"))
    created_from = _bound(params, "from", 0)
    # "to" is exclusive; the index's BETWEEN is inclusive, hence one millisecond less.
    created_to = _bound(params, "to", -1)
    equals: dict[str, str | int] = {}
    if params.get("status"):
        code = status_code_from_filter(params["status"])
        if code is None:
            raise validation_error("status_unknown", "status must be 118, 125, 113, 115 or their label", "status")
        equals["status_code"] = code
    if params.get("terminal_id"):
        equals["terminal_id"] = params["terminal_id"]
    if params.get("order_id"):
        index, partition, value = BY_ORDER, "merchant_order", merchant_order(merchant_id, params["order_id"])
    else:
        index, partition, value = BY_CREATED, "merchant_id", merchant_id
    start = _decode_cursor(params.get("cursor"), index, partition, value)
    found: list[Transaction] = []
    # Filters apply after DynamoDB's Limit, so a page may need several Queries to fill.
    while len(found) < limit:
        items, start = reader.query(
            index, partition, value, created_from, created_to, equals, limit - len(found), start
        )
        found.extend(items)
        if start is None:
            break
    return {
        "transactions": [console_view(tx) for tx in found],
        "next_cursor": _encode_cursor(index, start) if start else None,
    }


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise validation_error("limit_invalid", f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    return int(raw)


def _bound(params: Mapping[str, str], name: str, shift_ms: int) -> str | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        return env.timestamp_from_ms(env.parse_timestamp_ms(raw) + shift_ms)
    except (env.EnvelopeError, ValueError, OverflowError, OSError):
        raise validation_error(
            "timestamp_invalid", f"{name} must be an RFC 3339 timestamp with a time zone", name
        ) from None


def _encode_cursor(index: str, key: dict[str, Any]) -> str:
    plain = {"i": index, "k": {name: value["S"] for name, value in key.items()}}
    return (
        base64.urlsafe_b64encode(json.dumps(plain, separators=(",", ":")).encode("utf-8")).decode("ascii").rstrip("=")
    )


def _decode_cursor(raw: str | None, index: str, partition: str, value: str) -> dict[str, Any] | None:
    if not raw:
        return None
    invalid = validation_error("cursor_invalid", "cursor is not a next_cursor of this listing", "cursor")
    try:
        plain = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        key = plain["k"]
        expected = {"transaction_reference", "created_at", partition}
        if plain["i"] != index or set(key) != expected or not all(isinstance(v, str) for v in key.values()):
            raise invalid
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise invalid from None
    if key[partition] != value:
        raise invalid
    return {name: {"S": text} for name, text in key.items()}

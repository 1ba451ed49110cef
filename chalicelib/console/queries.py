"""The Console view: a merchant's transactions, by date or by order, one page at a time.

The repository answers one merchant's partition only (``TransactionQuery.merchant_id`` is always
the caller's), and a cursor is just where the previous page stopped, bound to the listing it came
from: a cursor of another listing, or a forged one, is a ``400``, never another merchant's data.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping

from chalicelib import protocol
from chalicelib.console.domain import Transaction, TransactionQuery, status_code_from_filter
from chalicelib.console.ports import Position, TransactionRepository
from chalicelib.console.schemas import TransactionPage, TransactionView
from chalicelib.errors import transaction_not_found, validation_error
from chalicelib.exceptions import EnvelopeError

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
# ASCII digits only: str.isdigit() also accepts "²" and other digits int() then refuses.
_LIMIT = re.compile(r"^[0-9]{1,3}$")
_POSITION_KEYS = frozenset({"created_at", "transaction_reference"})


def get_transaction(transactions: TransactionRepository, merchant_id: str, reference: str) -> TransactionView:
    tx = transactions.get(reference)
    if tx is None or tx.merchant_id != merchant_id:
        # Another merchant's transaction is answered as unknown, never as forbidden.
        raise transaction_not_found()
    return TransactionView.from_transaction(tx)


def list_transactions(
    transactions: TransactionRepository, merchant_id: str, params: Mapping[str, str]
) -> TransactionPage:
    limit = _limit(params.get("limit"))
    status_code = None
    if params.get("status"):
        status_code = status_code_from_filter(params["status"])
        if status_code is None:
            raise validation_error("status_unknown", "status must be 118, 125, 113, 115 or their label", "status")
    query = TransactionQuery(
        merchant_id=merchant_id,
        order_id=params.get("order_id") or None,
        created_from=_bound(params, "from", 0),
        # "to" is exclusive; the stores compare inclusively, hence one millisecond less.
        created_to=_bound(params, "to", -1),
        status_code=status_code,
        terminal_id=params.get("terminal_id") or None,
    )
    scope = _scope(query)
    after = _decode_cursor(params.get("cursor"), scope)
    found: list[Transaction] = []
    # A page can come back short (filters apply after the store's limit) and still continue.
    while len(found) < limit:
        items, after = transactions.page(query, limit - len(found), after)
        found.extend(items)
        if after is None:
            break
    return TransactionPage(
        transactions=[TransactionView.from_transaction(tx) for tx in found],
        next_cursor=_encode_cursor(scope, after) if after else None,
    )


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not _LIMIT.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise validation_error("limit_invalid", f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    return int(raw)


def _bound(params: Mapping[str, str], name: str, shift_ms: int) -> str | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        return protocol.timestamp_from_ms(protocol.parse_timestamp_ms(raw) + shift_ms)
    except (EnvelopeError, ValueError, OverflowError, OSError):
        raise validation_error(
            "timestamp_invalid", f"{name} must be an RFC 3339 timestamp with a time zone", name
        ) from None


def _scope(query: TransactionQuery) -> str:
    """Which listing a cursor belongs to: a position only means something for its own merchant and
    ordering, and one merchant's cursor is refused to another."""
    listing = f"order:{query.order_id}" if query.order_id is not None else "created"
    return f"{query.merchant_id}:{listing}"


def _encode_cursor(scope: str, position: Position) -> str:
    plain = json.dumps({"s": scope, "k": position}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(plain.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_cursor(raw: str | None, scope: str) -> Position | None:
    if not raw:
        return None
    invalid = validation_error("cursor_invalid", "cursor is not a next_cursor of this listing", "cursor")
    try:
        plain = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        position = plain["k"]
        if plain["s"] != scope or set(position) != _POSITION_KEYS:
            raise invalid
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise invalid from None
    if not all(isinstance(value, str) and value for value in position.values()):
        raise invalid
    return {key: str(value) for key, value in position.items()}

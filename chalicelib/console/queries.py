"""The Console view: a merchant's transactions, by date or by order, one page at a time.

The repository answers one merchant's partition only (``TransactionQuery.merchant_id`` is always
the caller's), and a cursor is just where the previous page stopped, bound to the listing it came
from: a cursor of another listing, or a forged one, is a ``400``, never another merchant's data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from chalicelib import protocol
from chalicelib.console.domain import Transaction, TransactionQuery, status_code_from_filter
from chalicelib.console.ports import Position, TransactionRepository
from chalicelib.console.schemas import TransactionPage, TransactionView
from chalicelib.errors import refuse_unknown_parameters, transaction_not_found, validation_error
from chalicelib.exceptions import EnvelopeError
from chalicelib.paging import cursor_invalid, decode_cursor, encode_cursor, page_limit

DEFAULT_LIMIT = 50
# RFC 3339 date-time, as the OpenAPI document says; datetime.fromisoformat alone takes more.
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_PARAMETERS = frozenset({"from", "to", "status", "terminal_id", "order_id", "limit", "cursor"})
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
    refuse_unknown_parameters(params, _PARAMETERS)
    limit = page_limit(params.get("limit"), DEFAULT_LIMIT)
    status_code = None
    if params.get("status") is not None:
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
    after = _position(params.get("cursor"), scope)
    found: list[Transaction] = []
    # A page can come back short (filters apply after the store's limit) and still continue.
    while len(found) < limit:
        items, after = transactions.page(query, limit - len(found), after)
        found.extend(items)
        if after is None:
            break
    return TransactionPage(
        transactions=[TransactionView.from_transaction(tx) for tx in found],
        next_cursor=encode_cursor(scope, after) if after else None,
    )


def _bound(params: Mapping[str, str], name: str, shift_ms: int) -> str | None:
    raw = params.get(name)
    if raw is None:
        return None
    if not _RFC3339.match(raw):
        raise validation_error("timestamp_invalid", f"{name} must be an RFC 3339 timestamp with a time zone", name)
    try:
        return protocol.timestamp_from_ms(protocol.parse_timestamp_ms(raw.upper()) + shift_ms)
    except (EnvelopeError, ValueError, OverflowError, OSError):
        raise validation_error(
            "timestamp_invalid", f"{name} must be an RFC 3339 timestamp with a time zone", name
        ) from None


def _scope(query: TransactionQuery) -> str:
    """Which listing a cursor belongs to: a position only means something for its own merchant and
    ordering, and one merchant's cursor is refused to another."""
    listing = f"order:{query.order_id}" if query.order_id is not None else "created"
    return f"{query.merchant_id}:{listing}"


def _position(raw: str | None, scope: str) -> Position | None:
    position = decode_cursor(raw, scope)
    if position is None:
        return None
    if (
        not isinstance(position, dict)
        or set(position) != _POSITION_KEYS
        or not all(isinstance(value, str) and value for value in position.values())
    ):
        raise cursor_invalid()
    return {key: str(value) for key, value in position.items()}

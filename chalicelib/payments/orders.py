"""The merchant's orders, latest attempt first (``GET /v1/connector/orders``): what the Console shows
as payments in flight and recent payments, each with its timeline.

An order is listed by its latest attempt. The state filter is read on the correlation record, so
it applies after the store's page: a page can come back short and still carry a ``next_cursor``.
A cursor is bound to its merchant and filters; another listing's cursor, or a forged one, is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping

from chalicelib import protocol
from chalicelib.errors import validation_error
from chalicelib.payments.domain import IN_FLIGHT, Dispatch, DispatchState, OrderHead, OrderPosition
from chalicelib.payments.ports import PaymentRepository
from chalicelib.payments.schemas import OrderPage, OrderSummary

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# A filter that matches little must not read the whole history in one request: after this many
# store pages the answer stops, short, with a cursor to go on.
MAX_STORE_PAGES = 5
IN_FLIGHT_FILTER = "in_flight"
STATE_FILTERS = frozenset({IN_FLIGHT_FILTER, *(state.value for state in DispatchState)})
_LIMIT = re.compile(r"^[0-9]{1,3}$")


def list_orders(
    payments: PaymentRepository,
    merchant_id: str,
    params: Mapping[str, str],
    now_ms: int,
    longest_deadline_ms: int | None = None,
) -> OrderPage:
    """One page of the listing. With ``longest_deadline_ms`` (the longest payment deadline), the
    in-flight listing stops at the first attempt older than that: none after it can be in flight,
    so polling it costs a few reads, not the merchant's history."""
    limit = _limit(params.get("limit"))
    state = params.get("state") or None
    if state is not None and state not in STATE_FILTERS:
        raise validation_error("state_unknown", f"state must be one of {', '.join(sorted(STATE_FILTERS))}", "state")
    terminal_id = params.get("terminal_id") or None
    scope = f"{merchant_id}:{state or ''}:{terminal_id or ''}"
    after = _decode_cursor(params.get("cursor"), scope)
    found: list[OrderSummary] = []
    oldest_in_flight = now_ms - longest_deadline_ms if longest_deadline_ms is not None else None
    for _ in range(MAX_STORE_PAGES):
        heads, after = payments.list_heads(merchant_id, limit - len(found), after, terminal_id)
        for head in heads:
            if state == IN_FLIGHT_FILTER and oldest_in_flight is not None and head.updated_at_ms < oldest_in_flight:
                return OrderPage(orders=found, next_cursor=None)
            dispatch = payments.get_dispatch(head.request_id)
            if dispatch is not None and _matches(dispatch.effective_state(now_ms), state):
                found.append(order_summary(head, dispatch, now_ms))
        if after is None or len(found) >= limit:
            break
    return OrderPage(orders=found, next_cursor=_encode_cursor(scope, after) if after else None)


def order_summary(head: OrderHead, dispatch: Dispatch, now_ms: int) -> OrderSummary:
    """One order's latest attempt and its timeline; no card data."""
    overdue = dispatch.overdue_reason(now_ms)
    result = dispatch.result or {}
    return OrderSummary(
        order_id=head.order_id,
        attempt=dispatch.attempt,
        terminal_id=dispatch.terminal_id,
        transaction_type=dispatch.transaction_type,
        amount=dispatch.amount,
        currency=dispatch.currency,
        state=dispatch.effective_state(now_ms),
        reason=overdue or dispatch.reason,
        late_result=dispatch.late,
        error_code=result.get("error_code"),
        transaction_reference=result.get("transaction_reference"),
        received_at=protocol.timestamp_from_ms(head.updated_at_ms),
        dispatched_at=protocol.timestamp_from_ms(dispatch.created_at_ms),
        acknowledged_at=_ts(dispatch.acked_at_ms),
        finished_at=_ts(dispatch.finished_at_ms),
        deadline=protocol.timestamp_from_ms(dispatch.deadline_ms),
    )


def _matches(state: DispatchState, wanted: str | None) -> bool:
    if wanted is None:
        return True
    if wanted == IN_FLIGHT_FILTER:
        return state in IN_FLIGHT
    return state.value == wanted


def _ts(epoch_ms: int | None) -> str | None:
    return protocol.timestamp_from_ms(epoch_ms) if epoch_ms is not None else None


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not _LIMIT.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise validation_error("limit_invalid", f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    return int(raw)


def _encode_cursor(scope: str, position: OrderPosition) -> str:
    plain = json.dumps({"s": scope, "k": list(position)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(plain.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_cursor(raw: str | None, scope: str) -> OrderPosition | None:
    if not raw:
        return None
    invalid = validation_error("cursor_invalid", "cursor is not a next_cursor of this listing", "cursor")
    try:
        plain = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        updated_at_ms, order_id = plain["k"]
        scope_ok = plain["s"] == scope
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise invalid from None
    if not scope_ok or type(updated_at_ms) is not int or not isinstance(order_id, str) or not order_id:
        raise invalid
    return updated_at_ms, order_id

"""Records and helpers the contract tests (and the adapter-specific DynamoDB tests) share."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from chalicelib.console.domain import OrderDetails, Transaction
from chalicelib.payments.domain import Dispatch, DispatchState, OrderHead
from tests.conftest import TERMINAL_ID

NOW = 1_795_000_000_000
PENDING = frozenset({DispatchState.PENDING})


def head_and_dispatch(
    request_id: str = "r-1", attempt: int = 1, order_id: str = "O-1", terminal_id: str = TERMINAL_ID
) -> tuple[OrderHead, Dispatch]:
    head = OrderHead(
        merchant_id="M1",
        order_id=order_id,
        attempt=attempt,
        request_id=request_id,
        terminal_id=terminal_id,
        payload_hash="h" * 64,
        request_json='{"order":{"order_id":"O-1","price":{"amount":899}}}',
        created_at_ms=NOW,
        updated_at_ms=NOW + attempt,
    )
    dispatch = Dispatch(
        request_id=request_id,
        merchant_id="M1",
        order_id=order_id,
        attempt=attempt,
        terminal_id=terminal_id,
        transaction_type="Debit",
        amount=899,
        currency="EUR",
        state=DispatchState.PENDING,
        created_at_ms=NOW,
        ack_deadline_ms=NOW + 10_000,
        deadline_ms=NOW + 120_000,
    )
    return head, dispatch


def race(*actions: Callable[[], Any]) -> list[Any]:
    """Run the actions at the same moment on threads; each one's return value or exception."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[Any] = [None] * len(actions)

    def run(index: int, action: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            outcomes[index] = action()
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def transaction(
    reference: str,
    merchant: str = "M1",
    created_at: str = "2026-11-28T10:00:00.000Z",
    **fields: Any,
) -> Transaction:
    values: dict[str, Any] = {
        "transaction_reference": reference,
        "merchant_id": merchant,
        "order_id": f"O-{reference}",
        "terminal_id": "PAX-1",
        "operation": "Debit",
        "ipn_status": "approved",
        "status_code": 118,
        "status": "Captured",
        "amount_minor": 899,
        "currency": "EUR",
        "created_at": created_at,
        "updated_at": created_at,
        "version": 1,
    }
    values.update(fields)
    return Transaction(**values)


def order_details(attempt: int = 1, merchant: str = "M1", order_id: str = "O-1", **fields: Any) -> OrderDetails:
    values: dict[str, Any] = {
        "merchant_id": merchant,
        "order_id": order_id,
        "attempt": attempt,
        "terminal_id": "PAX-1",
        "transaction_type": "Debit",
        "amount": 899,
        "currency": "EUR",
        "description": f"attempt {attempt}",
        "notify_url": "https://merchant.example/notify",
        "basket_json": '[{"unit_price":8.99}]',
        "customer_json": None,
        "custom_data_json": '{"k":"v"}',
        "created_at_ms": NOW,
        "updated_at_ms": NOW + attempt,
    }
    values.update(fields)
    return OrderDetails(**values)

"""Payments as plain Python: the correlation record, its states, and what each outcome answers.

No I/O here. A dispatch is one attempt to run an order's payment on one terminal; its record moves
only forward, and only by conditional writes (see ``adapters.dynamo``):

    pending ──ack──▶ acknowledged ──result──▶ succeeded | failed
       │                  │
       ├─ack busy─▶ failed (terminal_busy)     ├─deadline─▶ timed_out ──late result──▶ succeeded | failed
       ├─ack deadline─▶ timed_out              ├─cancel──▶ cancelled
       └─cancel / disconnect / unreachable ─▶ cancelled | failed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chalicelib.cards import is_masked_pan


class DispatchState(StrEnum):
    PENDING = "pending"
    ACKNOWLEDGED = "acknowledged"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


IN_FLIGHT = frozenset({DispatchState.PENDING, DispatchState.ACKNOWLEDGED})
FINAL = frozenset({DispatchState.SUCCEEDED, DispatchState.FAILED, DispatchState.TIMED_OUT, DispatchState.CANCELLED})
# A result may still land on a timed-out dispatch: the customer may have paid after the ECR gave up,
# and that money must be visible (CONTRACT §1, 504 result_timeout).
ACCEPTS_RESULT = frozenset({DispatchState.PENDING, DispatchState.ACKNOWLEDGED, DispatchState.TIMED_OUT})


class Reason(StrEnum):
    """Why a dispatch ended without the terminal's own result."""

    TERMINAL_BUSY = "terminal_busy"
    ACK_TIMEOUT = "ack_timeout"
    RESULT_TIMEOUT = "result_timeout"
    TERMINAL_UNREACHABLE = "terminal_unreachable"
    TERMINAL_DISCONNECTED = "terminal_disconnected"
    CANCELLED = "cancelled"


# A dispatch failed for these reasons may still have been paid on the terminal (its link dropped,
# or the broker delivered a message it reported as failed): a later result is kept, marked late.
LATE_RESULT_AFTER_FAILURE = frozenset({Reason.TERMINAL_DISCONNECTED, Reason.TERMINAL_UNREACHABLE})

RESULT_FIELDS = (
    "payment_status",
    "error_code",
    "error_data",
    "receipt",
    "transaction_reference",
    "authorization_code",
    "card_brand",
    "masked_pan",
    "authorized_online",
)


@dataclass
class Terminal:
    terminal_id: str
    merchant_id: str
    passphrase: str | None = None
    online: bool = False
    last_seen_at: str | None = None
    status_at_ms: int = 0
    busy_request_id: str | None = None
    busy_until_ms: int = 0
    # The order holding the claim: a duplicate of it joins instead of answering terminal_busy.
    busy_order: str | None = None

    def is_busy(self, now_ms: int) -> bool:
        return self.busy_request_id is not None and self.busy_until_ms > now_ms


@dataclass
class OrderHead:
    """Latest attempt of a (merchant, order_id): the idempotency anchor and the order's details."""

    merchant_id: str
    order_id: str
    attempt: int
    request_id: str
    terminal_id: str
    payload_hash: str
    request_json: str
    created_at_ms: int
    updated_at_ms: int


# Where a listing of order heads stopped: (updated_at_ms, order_id) of the last head returned.
OrderPosition = tuple[int, str]


@dataclass
class Dispatch:
    """The correlation record: one attempt on one terminal, small so that polling it stays cheap."""

    request_id: str
    merchant_id: str
    order_id: str
    attempt: int
    terminal_id: str
    transaction_type: str
    amount: int
    currency: str
    state: DispatchState
    created_at_ms: int
    ack_deadline_ms: int
    deadline_ms: int
    acked_at_ms: int | None = None
    finished_at_ms: int | None = None
    reason: str | None = None
    result: dict[str, Any] | None = None
    late: bool = False
    version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def overdue_reason(self, now_ms: int) -> Reason | None:
        """The timeout this dispatch has passed while still in flight, if any."""
        if self.state == DispatchState.PENDING and now_ms >= self.ack_deadline_ms:
            return Reason.ACK_TIMEOUT
        if self.state in IN_FLIGHT and now_ms >= self.deadline_ms:
            return Reason.RESULT_TIMEOUT
        return None

    def effective_state(self, now_ms: int) -> DispatchState:
        """What a reader should report, even when no waiter was left to write the timeout."""
        return DispatchState.TIMED_OUT if self.overdue_reason(now_ms) else self.state


def clean_result(body: dict[str, Any]) -> dict[str, Any]:
    """Keep only the contract's result fields; a PAN is accepted only masked (≤ 6 + 4 digits shown)."""
    result = {key: body[key] for key in RESULT_FIELDS if key in body and body[key] is not None}
    pan = result.get("masked_pan")
    if pan is not None and not is_masked_pan(pan):
        # Never store what may be a full card number.
        result.pop("masked_pan")
        result["masked_pan_refused"] = True
    return result

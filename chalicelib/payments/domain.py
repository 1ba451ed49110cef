"""Payments as plain Python: the correlation record, its states, the one table of moves between
them, and the records a new attempt writes.

No I/O here. A dispatch is one attempt to run an order's payment on one terminal; its record moves
only forward, and only by the conditional writes of the moves in ``RULES``:

    pending ──ack──▶ acknowledged ──result──▶ succeeded | failed | cancelled
       │                  │
       │                  ├─cancel──▶ cancelling ──result──▶ cancelled (aborted) | succeeded | failed
       │                  ├─deadline─▶ timed_out ──late result──▶ succeeded | failed | cancelled
       ├─ack busy─▶ failed (terminal_busy)
       ├─ack deadline─▶ timed_out
       └─disconnect / unreachable / dispatch error ─▶ failed ──late result──▶ …

The terminal's first result for a request is its truth: every move that records a result is
refused once one is recorded, whatever the state (docs/terminal-protocol.md, "a repeated result changes nothing").
A cancel is a request to the terminal, not a fact: ``cancelling`` ends only with the terminal's result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chalicelib.cards import is_masked_pan


class DispatchState(StrEnum):
    PENDING = "pending"
    ACKNOWLEDGED = "acknowledged"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


# The platform still waits for the terminal and writes a timeout when a deadline passes.
IN_FLIGHT = frozenset({DispatchState.PENDING, DispatchState.ACKNOWLEDGED})
# The terminal's answer is still awaited: a cancel asked for is not a cancel done.
AWAITING_RESULT = IN_FLIGHT | {DispatchState.CANCELLING}
FINAL = frozenset({DispatchState.SUCCEEDED, DispatchState.FAILED, DispatchState.TIMED_OUT, DispatchState.CANCELLED})


class Reason(StrEnum):
    """Why a dispatch ended without the terminal's own result."""

    TERMINAL_BUSY = "terminal_busy"
    ACK_TIMEOUT = "ack_timeout"
    RESULT_TIMEOUT = "result_timeout"
    TERMINAL_UNREACHABLE = "terminal_unreachable"
    TERMINAL_DISCONNECTED = "terminal_disconnected"
    # Something failed between claiming the terminal and publishing (storage error, crash of a call).
    DISPATCH_ERROR = "dispatch_error"
    CANCELLED = "cancelled"


# A dispatch failed for these reasons may still have been paid on the terminal (its link dropped,
# the broker delivered a message it reported as failed, a storage error hid a publish that went
# out): the terminal's first result is still taken, marked late.
LATE_RESULT_AFTER_FAILURE = frozenset(
    {Reason.TERMINAL_DISCONNECTED, Reason.TERMINAL_UNREACHABLE, Reason.DISPATCH_ERROR}
)
# The terminal's ``error_code`` when it aborted the payment on a cancel_request.
CANCELLED_CODE = "cancelled"


@dataclass(frozen=True)
class Rule:
    """One arrow of the state diagram, applied by one conditional write.

    ``start``: the states it may leave; ``failed_for``: it may also leave ``failed`` when the failure
    had one of these reasons. ``records_result``: it stores the terminal's result, so it is refused
    once any result is stored (the first result is final). ``stamp``: the timestamp it sets.
    """

    name: str
    start: frozenset[DispatchState]
    targets: frozenset[DispatchState]
    failed_for: frozenset[str] = frozenset()
    records_result: bool = False
    late: bool = False
    stamp: str = "finished_at_ms"

    def allows(self, dispatch: Dispatch) -> bool:
        """What the conditional write checks, as plain Python (the in-memory fakes use it)."""
        if self.records_result and (dispatch.result_at_ms is not None or dispatch.result is not None):
            return False
        return dispatch.state in self.start or (
            dispatch.state == DispatchState.FAILED and dispatch.reason in self.failed_for
        )


_RESULT_TARGETS = frozenset({DispatchState.SUCCEEDED, DispatchState.FAILED, DispatchState.CANCELLED})
_S = DispatchState

ACK = Rule("ack", frozenset({_S.PENDING}), frozenset({_S.ACKNOWLEDGED}), stamp="acked_at_ms")
BUSY_ACK = Rule("busy_ack", frozenset({_S.PENDING}), frozenset({_S.FAILED}))
RESULT = Rule("result", AWAITING_RESULT, _RESULT_TARGETS, records_result=True)
# After a timeout or a failure that may hide a payment, the money may still have moved: keep it.
LATE_RESULT = Rule(
    "late_result",
    frozenset({_S.TIMED_OUT}),
    _RESULT_TARGETS,
    failed_for=LATE_RESULT_AFTER_FAILURE,
    records_result=True,
    late=True,
)
ACK_TIMEOUT = Rule("ack_timeout", frozenset({_S.PENDING}), frozenset({_S.TIMED_OUT}))
RESULT_TIMEOUT = Rule("result_timeout", IN_FLIGHT, frozenset({_S.TIMED_OUT}))
DISCONNECTED = Rule("disconnected", IN_FLIGHT, frozenset({_S.FAILED}))
UNREACHABLE = Rule("unreachable", IN_FLIGHT, frozenset({_S.FAILED}))
DISPATCH_FAILED = Rule("dispatch_failed", frozenset({_S.PENDING}), frozenset({_S.FAILED}))
CANCEL = Rule("cancel", IN_FLIGHT, frozenset({_S.CANCELLING}), stamp="cancel_requested_at_ms")

RULES = (
    ACK,
    BUSY_ACK,
    RESULT,
    LATE_RESULT,
    ACK_TIMEOUT,
    RESULT_TIMEOUT,
    DISCONNECTED,
    UNREACHABLE,
    DISPATCH_FAILED,
    CANCEL,
)


@dataclass(frozen=True)
class Transition:
    """One move of one dispatch, as the repository applies it: ConditionFailed if its rule refuses."""

    request_id: str
    rule: Rule
    to: DispatchState
    at_ms: int
    # An event may only move a dispatch sent to the terminal it came from.
    terminal_id: str | None = None
    reason: str | None = None
    result: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.to not in self.rule.targets:
            raise ValueError(f"{self.rule.name} cannot lead to {self.to}")
        if self.rule.records_result != (self.result is not None):
            raise ValueError(f"{self.rule.name} {'needs' if self.rule.records_result else 'takes no'} result")


def result_state(result: dict[str, Any]) -> DispatchState:
    """Where the terminal's result takes a dispatch: an abort it reports is a cancel done."""
    if result.get("payment_status") == "Success":
        return DispatchState.SUCCEEDED
    if result.get("error_code") == CANCELLED_CODE:
        return DispatchState.CANCELLED
    return DispatchState.FAILED


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
    # Time of the last presence fact recorded (a lifecycle event, or a status newer than every fact).
    status_at_ms: int = 0
    # The broker's session id of the last lifecycle event: an old session's disconnect undoes nothing.
    presence_session: str | None = None
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
    # Set by the move that stored the terminal's result: no second result is ever stored.
    result_at_ms: int | None = None
    cancel_requested_at_ms: int | None = None
    version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def overdue_reason(self, now_ms: int) -> Reason | None:
        """The timeout this dispatch has passed while still in flight, if any."""
        if self.state in IN_FLIGHT:
            return self.wait_over(now_ms)
        return None

    def wait_over(self, now_ms: int) -> Reason | None:
        """Which deadline a waiter has passed while the terminal's answer is awaited, if any.

        For ``cancelling`` nothing is written (the terminal's result will be the truth); the waiter
        only stops waiting and answers the matching 504.
        """
        if self.state not in AWAITING_RESULT:
            return None
        if self.acked_at_ms is None and self.state != DispatchState.ACKNOWLEDGED and now_ms >= self.ack_deadline_ms:
            return Reason.ACK_TIMEOUT
        if now_ms >= self.deadline_ms:
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


def new_attempt(
    *,
    merchant_id: str,
    order_id: str,
    terminal_id: str,
    transaction_type: str,
    amount: int,
    currency: str,
    payload_hash: str,
    request_json: str,
    request_id: str,
    previous: OrderHead | None,
    now_ms: int,
    ack_deadline_ms: int,
    deadline_ms: int,
) -> tuple[OrderHead, Dispatch]:
    """The order head and the dispatch one attempt writes together (``PaymentRepository.start_attempt``)."""
    attempt = previous.attempt + 1 if previous else 1
    head = OrderHead(
        merchant_id=merchant_id,
        order_id=order_id,
        attempt=attempt,
        request_id=request_id,
        terminal_id=terminal_id,
        payload_hash=payload_hash,
        request_json=request_json,
        created_at_ms=previous.created_at_ms if previous else now_ms,
        updated_at_ms=now_ms,
    )
    dispatch = Dispatch(
        request_id=request_id,
        merchant_id=merchant_id,
        order_id=order_id,
        attempt=attempt,
        terminal_id=terminal_id,
        transaction_type=transaction_type,
        amount=amount,
        currency=currency,
        state=DispatchState.PENDING,
        created_at_ms=now_ms,
        ack_deadline_ms=ack_deadline_ms,
        deadline_ms=deadline_ms,
    )
    return head, dispatch


def deadline_start(now_ms: int, arrived_at_ms: int | None) -> int:
    """When the request reached the front door (API Gateway's ``requestTimeEpoch``), never in the future."""
    return now_ms if arrived_at_ms is None else min(now_ms, arrived_at_ms)

"""The synchronous payment path: get the terminal, resolve the order's idempotency, claim the
terminal, record the attempt, dispatch, and wait for the terminal's answer.

Storage and messaging come in as ``PaymentDeps`` so tests run this against in-memory fakes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from chalicelib import jsonutil, protocol
from chalicelib.config import Settings
from chalicelib.errors import ApiError, order_not_found, terminal_not_found
from chalicelib.exceptions import ChannelError, ConditionFailed, DispatchMissingError, TerminalBusyError
from chalicelib.keys import order_key
from chalicelib.observability import count, log_event, traced
from chalicelib.payments.domain import (
    FINAL,
    IN_FLIGHT,
    Dispatch,
    DispatchState,
    OrderHead,
    Reason,
    Terminal,
)
from chalicelib.payments.poll_schedule import next_interval_ms
from chalicelib.payments.ports import PaymentRepository, TerminalChannel, TerminalRepository
from chalicelib.payments.replies import (
    Reply,
    accepted_reply,
    busy_response,
    payment_body,
    payment_response,
    raw_echo,
    reply_for,
)
from chalicelib.payments.schemas import CancelRequestBody, OrderRequest, OrderStatus, PaymentRequestBody
from chalicelib.ports import Clock, Waker

# Two requests for the same new order may race; the loser re-reads and joins. Bounded, not a loop.
_MAX_START_RACES = 3
# A duplicate that finds the terminal claimed by its own order waits this long for the attempt record.
_JOIN_WINDOW_MS = 2_000
_JOIN_POLL_S = 0.01
# A payment waiting on its terminal says so this often in the logs, so a silent terminal shows.
_PROGRESS_EVERY_MS = 10_000


@dataclass
class PaymentDeps:
    terminals: TerminalRepository
    payments: PaymentRepository
    channel: TerminalChannel
    settings: Settings
    clock: Clock
    waker: Waker


def request_payment(
    deps: PaymentDeps, merchant_id: str, request: OrderRequest, raw: dict[str, Any], respond_async: bool = False
) -> Reply:
    terminal = _usable_terminal(deps, merchant_id, request.terminal_id)
    if request.order.transaction_type == "Cancel":
        return cancel_payment(deps, merchant_id, request, raw, terminal)
    payload_hash = request.payload_hash()
    order_id = request.order.order_id
    key = order_key(merchant_id, order_id)
    join_until = deps.clock.now_ms() + _JOIN_WINDOW_MS
    races = 0
    while races < _MAX_START_RACES:
        head = deps.payments.get_head(merchant_id, order_id)
        previous: Dispatch | None = None
        if head is not None:
            previous = deps.payments.get_dispatch(head.request_id)
            if previous is None:
                raise DispatchMissingError(f"order head {order_id} points at a missing dispatch")
            joined = _existing_attempt(deps, head, previous, payload_hash, respond_async)
            if joined is not None:
                return joined
        if not terminal.online:
            count("TerminalUnreachable", reason="offline")
            raise ApiError(502, "terminal.offline", "The terminal is not connected")
        try:
            dispatch, head = _start_attempt(deps, terminal, request, raw, payload_hash, head, respond_async)
        except TerminalBusyError:
            # The claim may be this very order's, taken a moment ago by a duplicate whose attempt is
            # not written yet: wait for that attempt and join it rather than answer busy.
            holder = deps.terminals.get(terminal.terminal_id)
            if holder is not None and holder.busy_order == key and deps.clock.now_ms() < join_until:
                deps.waker.wait(f"join:{key}", _JOIN_POLL_S)
                continue
            return Reply(200, busy_response(raw))
        except ConditionFailed:
            races += 1
            continue
        if respond_async:
            return accepted_reply(order_id)
        with traced("payment wait", order_id=order_id, request_id=dispatch.request_id):
            final = wait_for_final(deps, dispatch.request_id)
        return reply_for(head, final)
    raise ApiError(409, "order.contended", "The order is being started by another request; retry")


def _usable_terminal(deps: PaymentDeps, merchant_id: str, terminal_id: str) -> Terminal:
    terminal = deps.terminals.get(terminal_id)
    # Another merchant's terminal is answered as unknown: its existence is not ours to reveal.
    if terminal is None or terminal.merchant_id != merchant_id:
        raise terminal_not_found()
    if not terminal.passphrase:
        raise ApiError(403, "terminal.service_disabled", "The Cloud API service is not enabled on this terminal")
    return terminal


def _existing_attempt(
    deps: PaymentDeps, head: OrderHead, previous: Dispatch, payload_hash: str, respond_async: bool
) -> Reply | None:
    """Apply the idempotency rules to an order seen before; None means: start a new attempt."""
    same_payload = head.payload_hash == payload_hash
    now = deps.clock.now_ms()
    overdue = previous.overdue_reason(now)
    if overdue is not None:
        # Nobody was waiting to write this timeout (async mode, a crashed waiter): write it now,
        # which frees the terminal for the retry; if the terminal answered meanwhile, read that.
        previous = (
            _time_out(deps, previous, overdue, now) or deps.payments.get_dispatch(previous.request_id) or previous
        )
    state = previous.effective_state(now)
    if state in IN_FLIGHT:
        if not same_payload:
            raise ApiError(409, "order.conflict", "order_id is in use by a payment with a different payload")
        if respond_async:
            return accepted_reply(head.order_id)
        return reply_for(head, wait_for_final(deps, previous.request_id))
    if state == DispatchState.SUCCEEDED:
        if not same_payload:
            raise ApiError(409, "order.conflict", "order_id already succeeded with a different payload")
        reply = reply_for(head, previous)
        reply.headers["Idempotent-Replayed"] = "true"
        return reply
    return None


def _start_attempt(
    deps: PaymentDeps,
    terminal: Terminal,
    request: OrderRequest,
    raw: dict[str, Any],
    payload_hash: str,
    previous_head: OrderHead | None,
    respond_async: bool,
) -> tuple[Dispatch, OrderHead]:
    now = deps.clock.now_ms()
    settings = deps.settings
    request_id = protocol.new_request_id()
    deadline = now + (settings.async_payment_deadline_ms if respond_async else settings.payment_deadline_ms)
    terminal_id = request.terminal_id
    if not deps.terminals.claim(
        terminal_id, request_id, now, deadline, order_key(terminal.merchant_id, request.order.order_id)
    ):
        count("PaymentsBusy", reason="claimed")
        log_event("terminal busy", order_id=request.order.order_id, terminal_id=terminal_id)
        raise TerminalBusyError()
    attempt = (previous_head.attempt + 1) if previous_head else 1
    head = OrderHead(
        merchant_id=terminal.merchant_id,
        order_id=request.order.order_id,
        attempt=attempt,
        request_id=request_id,
        terminal_id=terminal_id,
        payload_hash=payload_hash,
        request_json=jsonutil.dumps(raw_echo(raw)),
        created_at_ms=previous_head.created_at_ms if previous_head else now,
        updated_at_ms=now,
    )
    dispatch = Dispatch(
        request_id=request_id,
        merchant_id=terminal.merchant_id,
        order_id=request.order.order_id,
        attempt=attempt,
        terminal_id=terminal_id,
        transaction_type=request.order.transaction_type,
        amount=request.order.price.amount,
        currency=request.order.price.currency,
        state=DispatchState.PENDING,
        created_at_ms=now,
        ack_deadline_ms=now + settings.ack_timeout_ms,
        deadline_ms=deadline,
    )
    try:
        deps.payments.start_attempt(head, dispatch, previous_head.attempt if previous_head else None)
    except ConditionFailed:
        deps.terminals.release(terminal_id, request_id)
        raise
    count("PaymentsStarted")
    log_event(
        "payment dispatched", order_id=head.order_id, terminal_id=terminal_id, request_id=request_id, attempt=attempt
    )
    body = PaymentRequestBody(
        order_id=request.order.order_id,
        transaction_type=request.order.transaction_type,
        amount=request.order.price.amount,
        currency=request.order.price.currency,
        force_authorization=request.pos_technical_info.terminal_transaction_display.force_authorization,
        description=request.order.description,
        expires_at=protocol.timestamp_from_ms(deadline),
    )
    _send(deps, dispatch, "payment_request", body.model_dump(), terminal)
    return dispatch, head


def _send(deps: PaymentDeps, dispatch: Dispatch, kind: str, body: dict[str, Any], terminal: Terminal) -> None:
    """Publish to the terminal; when the broker refuses, the attempt fails as unreachable (502)."""
    passphrase = terminal.passphrase or ""
    try:
        deps.channel.publish(
            dispatch.terminal_id,
            protocol.make_envelope(kind, dispatch.request_id, dispatch.terminal_id, body, passphrase),
        )
    except ChannelError as exc:
        count("TerminalUnreachable", reason="publish_failed")
        log_event(
            "publish failed",
            level="warning",
            request_id=dispatch.request_id,
            terminal_id=dispatch.terminal_id,
            error=str(exc),
        )
        with contextlib.suppress(ConditionFailed):  # the terminal answered or the order was cancelled
            deps.payments.transition(
                dispatch.request_id,
                IN_FLIGHT,
                DispatchState.FAILED,
                deps.clock.now_ms(),
                reason=Reason.TERMINAL_UNREACHABLE,
            )
        deps.terminals.release(dispatch.terminal_id, dispatch.request_id)


def wait_for_final(deps: PaymentDeps, request_id: str) -> Dispatch:
    """Poll the correlation record until it is final, writing the timeout when a deadline passes.

    The schedule (chalicelib/payments/poll_schedule.py) restarts fast whenever the state moves and caps the
    interval by phase: an instant terminal answers within a few short polls, a tap payment's result
    is read within ``poll_max_ms``, and a customer typing for 30 s costs a few reads a second.
    """
    settings = deps.settings
    interval = settings.poll_initial_ms
    seen_state: DispatchState | None = None
    started = deps.clock.now_ms()
    next_progress = started + _PROGRESS_EVERY_MS
    state_since_ms = 0
    while True:
        dispatch = deps.payments.get_dispatch(request_id)
        if dispatch is None:
            raise DispatchMissingError(f"dispatch {request_id} vanished")
        if dispatch.state in FINAL:
            # Whoever wrote the final state (event handler, timeout, cancel) released the claim.
            return dispatch
        now = deps.clock.now_ms()
        if dispatch.state != seen_state:
            seen_state, interval, state_since_ms = dispatch.state, settings.poll_initial_ms, now
        overdue = dispatch.overdue_reason(now)
        if overdue is not None:
            timed_out = _time_out(deps, dispatch, overdue, now)
            if timed_out is not None:
                return timed_out
            continue
        if now >= next_progress:
            next_progress = now + _PROGRESS_EVERY_MS
            log_event(
                "payment waiting",
                order_id=dispatch.order_id,
                terminal_id=dispatch.terminal_id,
                request_id=request_id,
                state=dispatch.state.value,
                waited_s=(now - started) // 1000,
                deadline_in_s=(dispatch.deadline_ms - now) // 1000,
            )
        next_deadline = dispatch.ack_deadline_ms if dispatch.state == DispatchState.PENDING else dispatch.deadline_ms
        deps.waker.wait(request_id, max(0.001, min(interval, next_deadline - now)) / 1000)
        acknowledged_for = now - state_since_ms if dispatch.state == DispatchState.ACKNOWLEDGED else None
        interval = next_interval_ms(settings, interval, acknowledged_for)


def _time_out(deps: PaymentDeps, dispatch: Dispatch, reason: Reason, now: int) -> Dispatch | None:
    allowed = frozenset({DispatchState.PENDING}) if reason == Reason.ACK_TIMEOUT else IN_FLIGHT
    try:
        timed_out = deps.payments.transition(dispatch.request_id, allowed, DispatchState.TIMED_OUT, now, reason=reason)
    except ConditionFailed:
        return None  # the terminal answered meanwhile: read it again
    count("AckTimeouts" if reason == Reason.ACK_TIMEOUT else "ResultTimeouts")
    log_event(
        "payment timed out",
        level="warning",
        order_id=dispatch.order_id,
        terminal_id=dispatch.terminal_id,
        request_id=dispatch.request_id,
        reason=reason.value,
    )
    if reason == Reason.ACK_TIMEOUT:
        # A terminal that wakes up late must not show a payment screen nobody waits for.
        _send_cancel(deps, timed_out)
    deps.terminals.release(dispatch.terminal_id, dispatch.request_id)
    return timed_out


def _send_cancel(deps: PaymentDeps, dispatch: Dispatch) -> bool:
    terminal = deps.terminals.get(dispatch.terminal_id)
    if terminal is None or not terminal.passphrase:
        return False
    body = CancelRequestBody(order_id=dispatch.order_id, target_request_id=dispatch.request_id).model_dump()
    try:
        deps.channel.publish(
            dispatch.terminal_id,
            protocol.make_envelope(
                "cancel_request", protocol.new_request_id(), dispatch.terminal_id, body, terminal.passphrase
            ),
        )
    except ChannelError as exc:
        log_event("cancel publish failed", level="warning", request_id=dispatch.request_id, error=str(exc))
        return False
    return True


def cancel_payment(
    deps: PaymentDeps, merchant_id: str, request: OrderRequest, raw: dict[str, Any], terminal: Terminal
) -> Reply:
    """``transaction_type: Cancel`` aborts the order's payment while it is in flight on that terminal."""
    order_id = request.order.order_id
    head = deps.payments.get_head(merchant_id, order_id)
    dispatch = deps.payments.get_dispatch(head.request_id) if head else None
    now = deps.clock.now_ms()
    if (
        dispatch is None
        or dispatch.terminal_id != terminal.terminal_id
        or dispatch.effective_state(now) not in IN_FLIGHT
    ):
        state = dispatch.effective_state(now).value if dispatch else None
        return Reply(200, payment_body(raw, "Failed", error_code="not_cancellable", error_data={"state": state}))
    if not _send_cancel(deps, dispatch):
        raise ApiError(502, "terminal.unreachable", "The cancellation could not be sent to the terminal")
    try:
        cancelled = deps.payments.transition(
            dispatch.request_id, IN_FLIGHT, DispatchState.CANCELLED, now, reason=Reason.CANCELLED
        )
    except ConditionFailed:
        final = deps.payments.get_dispatch(dispatch.request_id)
        state = final.state.value if final else None
        return Reply(200, payment_body(raw, "Failed", error_code="not_cancellable", error_data={"state": state}))
    deps.terminals.release(cancelled.terminal_id, cancelled.request_id)
    count("PaymentsCancelled")
    log_event(
        "payment cancelled", order_id=order_id, terminal_id=cancelled.terminal_id, request_id=cancelled.request_id
    )
    return Reply(200, payment_body(raw, "Success", attempt=cancelled.attempt))


def order_status(deps: PaymentDeps, merchant_id: str, order_id: str) -> OrderStatus:
    """The order's latest attempt: how an ECR recovers after a lost or timed-out response."""
    head = deps.payments.get_head(merchant_id, order_id)
    dispatch = deps.payments.get_dispatch(head.request_id) if head else None
    if head is None or dispatch is None:
        raise order_not_found()
    overdue = dispatch.overdue_reason(deps.clock.now_ms())
    state = DispatchState.TIMED_OUT if overdue else dispatch.state
    payment = None
    if state in (DispatchState.SUCCEEDED, DispatchState.FAILED, DispatchState.CANCELLED):
        payment = payment_response(jsonutil.loads(head.request_json), dispatch)
    return OrderStatus(
        order_id=order_id,
        attempt=dispatch.attempt,
        request_id=dispatch.request_id,
        terminal_id=dispatch.terminal_id,
        state=state,
        reason=overdue or dispatch.reason,
        late_result=dispatch.late,
        created_at=protocol.timestamp_from_ms(dispatch.created_at_ms),
        acknowledged_at=_ts(dispatch.acked_at_ms),
        finished_at=_ts(dispatch.finished_at_ms),
        ack_deadline=protocol.timestamp_from_ms(dispatch.ack_deadline_ms),
        deadline=protocol.timestamp_from_ms(dispatch.deadline_ms),
        payment=payment,
    )


def _ts(epoch_ms: int | None) -> str | None:
    return protocol.timestamp_from_ms(epoch_ms) if epoch_ms is not None else None

"""The synchronous payment path: get the terminal, resolve the order's idempotency, claim the
terminal, record the attempt, dispatch, and wait for the terminal's answer.

Storage and messaging come in as ``PaymentDeps`` so tests run this against in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from chalicelib import jsonutil, protocol
from chalicelib.config import Settings
from chalicelib.errors import ApiError, order_not_found, terminal_not_found
from chalicelib.exceptions import ChannelError, ConditionFailed, DispatchMissingError, TerminalBusyError
from chalicelib.keys import order_key
from chalicelib.money import BASKET_MISMATCH, basket_mismatch
from chalicelib.observability import count, log_event, traced
from chalicelib.payments import domain
from chalicelib.payments.domain import (
    AWAITING_RESULT,
    FINAL,
    IN_FLIGHT,
    Dispatch,
    DispatchState,
    OrderHead,
    Reason,
    Terminal,
    Transition,
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


def cancel_wake_key(request_id: str) -> str:
    """What a Cancel waits on, beside the payment's own waiter (the event handler wakes both)."""
    return f"{request_id}#cancel"


@dataclass
class PaymentDeps:
    terminals: TerminalRepository
    payments: PaymentRepository
    channel: TerminalChannel
    settings: Settings
    clock: Clock
    waker: Waker


def request_payment(
    deps: PaymentDeps,
    merchant_id: str,
    request: OrderRequest,
    raw: dict[str, Any],
    respond_async: bool = False,
    arrived_at_ms: int | None = None,
) -> Reply:
    """``arrived_at_ms``: when the request reached the front door (API Gateway's ``requestTimeEpoch``);
    the ack window and the payment deadline count from there, not from when this code started."""
    terminal = _usable_terminal(deps, merchant_id, request.terminal_id)
    if request.order.transaction_type == "Cancel":
        return cancel_payment(deps, merchant_id, request, raw, terminal, arrived_at_ms)
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
            dispatch, head = _start_attempt(
                deps, terminal, request, raw, payload_hash, head, respond_async, arrived_at_ms
            )
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
    if state in AWAITING_RESULT:
        # In flight, or cancelling: the terminal may still charge the card, so no new attempt starts.
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
    arrived_at_ms: int | None,
) -> tuple[Dispatch, OrderHead]:
    now = deps.clock.now_ms()
    start = domain.deadline_start(now, arrived_at_ms)
    settings = deps.settings
    request_id = protocol.new_request_id()
    deadline = start + (settings.async_payment_deadline_ms if respond_async else settings.payment_deadline_ms)
    terminal_id = request.terminal_id
    order_id = request.order.order_id
    # The claim expires at the deadline: a process that dies holding it blocks the terminal no longer.
    if not deps.terminals.claim(terminal_id, request_id, now, deadline, order_key(terminal.merchant_id, order_id)):
        count("PaymentsBusy", reason="claimed")
        log_event("terminal busy", order_id=order_id, terminal_id=terminal_id)
        raise TerminalBusyError()
    with _released_on_failure(deps, terminal_id, request_id):
        head, dispatch = domain.new_attempt(
            merchant_id=terminal.merchant_id,
            order_id=order_id,
            terminal_id=terminal_id,
            transaction_type=request.order.transaction_type,
            amount=request.order.price.amount,
            currency=request.order.price.currency,
            payload_hash=payload_hash,
            request_json=jsonutil.dumps(raw_echo(raw)),
            request_id=request_id,
            previous=previous_head,
            now_ms=now,
            ack_deadline_ms=start + settings.ack_timeout_ms,
            deadline_ms=deadline,
        )
        deps.payments.start_attempt(head, dispatch, previous_head.attempt if previous_head else None)
        count("PaymentsStarted")
        log_event(
            "payment dispatched",
            order_id=order_id,
            terminal_id=terminal_id,
            request_id=request_id,
            attempt=head.attempt,
        )
        body = PaymentRequestBody(
            order_id=order_id,
            transaction_type=request.order.transaction_type,
            amount=request.order.price.amount,
            currency=request.order.price.currency,
            force_authorization=request.pos_technical_info.terminal_transaction_display.force_authorization,
            description=request.order.description,
            expires_at=protocol.timestamp_from_ms(deadline),
        )
        _send(deps, dispatch, "payment_request", body.model_dump(), terminal)
    return dispatch, head


@contextmanager
def _released_on_failure(deps: PaymentDeps, terminal_id: str, request_id: str) -> Iterator[None]:
    """Whatever fails between the claim and the publish frees the terminal before the error is answered.

    A lost race (``ConditionFailed``) wrote nothing; any other error (throttling, a 5xx, a timeout,
    a bug) may have written the attempt, which is then marked failed with ``dispatch_error``. Both
    clean-ups are best effort: if storage is down they fail too, and the claim's expiry bounds it.
    """
    try:
        yield
    except ConditionFailed:
        _release_quietly(deps, terminal_id, request_id)
        raise
    except BaseException as exc:
        count("DispatchErrors")
        log_event(
            "payment dispatch failed",
            level="error",
            request_id=request_id,
            terminal_id=terminal_id,
            error=type(exc).__name__,
        )
        _release_quietly(deps, terminal_id, request_id)
        try:
            deps.payments.apply(
                Transition(
                    request_id,
                    domain.DISPATCH_FAILED,
                    DispatchState.FAILED,
                    deps.clock.now_ms(),
                    reason=Reason.DISPATCH_ERROR,
                )
            )
        except ConditionFailed:
            pass  # the attempt was not written, or has moved on
        except Exception as cleanup:
            log_event("could not mark the attempt failed", level="error", request_id=request_id, error=repr(cleanup))
        raise


def _release_quietly(deps: PaymentDeps, terminal_id: str, request_id: str) -> None:
    try:
        deps.terminals.release(terminal_id, request_id)
    except Exception as exc:
        count("ClaimReleaseErrors")
        log_event(
            "could not free the terminal; its claim expires", level="error", request_id=request_id, error=repr(exc)
        )


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
        # The claim goes first, as everywhere: whoever sees the final state finds the terminal free.
        _release_quietly(deps, dispatch.terminal_id, dispatch.request_id)
        with suppress(ConditionFailed):  # the terminal answered anyway, or the order was cancelled
            deps.payments.apply(
                Transition(
                    dispatch.request_id,
                    domain.UNREACHABLE,
                    DispatchState.FAILED,
                    deps.clock.now_ms(),
                    reason=Reason.TERMINAL_UNREACHABLE,
                )
            )


class _Poll:
    """The poll schedule (``payments/poll_schedule.py``): starts at ``poll_initial_ms``, restarts fast
    whenever the state moves, and caps the interval by phase — fast while a result is likely, slower
    while the customer is still typing."""

    def __init__(self, deps: PaymentDeps, give_up_at_ms: int) -> None:
        self.deps = deps
        self.interval = deps.settings.poll_initial_ms
        self.seen_state: DispatchState | None = None
        self.state_since_ms = 0
        # Storage errors while reading are waited out until then: the payment goes on without us.
        self.give_up_at_ms = give_up_at_ms

    def read(self, request_id: str) -> Dispatch | None:
        """The record, or None after a storage error worth retrying (counted, logged)."""
        try:
            dispatch = self.deps.payments.get_dispatch(request_id)
        except Exception as exc:
            if self.deps.clock.now_ms() >= self.give_up_at_ms:
                raise
            count("PollErrors")
            log_event("poll read failed; retrying", level="warning", request_id=request_id, error=repr(exc))
            return None
        if dispatch is None:
            raise DispatchMissingError(f"dispatch {request_id} vanished")
        if dispatch.state != self.seen_state:
            self.seen_state, self.interval = dispatch.state, self.deps.settings.poll_initial_ms
            self.state_since_ms = self.deps.clock.now_ms()
        return dispatch

    def sleep(self, key: str, until_ms: int) -> None:
        settings = self.deps.settings
        now = self.deps.clock.now_ms()
        self.deps.waker.wait(key, max(0.001, min(self.interval, until_ms - now)) / 1000)
        acknowledged = self.seen_state == DispatchState.ACKNOWLEDGED
        self.interval = next_interval_ms(settings, self.interval, now - self.state_since_ms if acknowledged else None)


def wait_for_final(deps: PaymentDeps, request_id: str) -> Dispatch:
    """Poll the correlation record until it is final, writing the timeout when a deadline passes.

    An instant terminal answers within a few short polls, a tap payment's result is read within
    ``poll_max_ms``, and a customer typing for 30 s costs a few reads a second. A ``cancelling``
    dispatch past its deadline is returned as it is: the terminal's result, whenever it lands, is
    the order's truth, and the caller answers a 504.
    """
    started = deps.clock.now_ms()
    next_progress = started + _PROGRESS_EVERY_MS
    poll = _Poll(deps, started + deps.settings.ack_timeout_ms)
    while True:
        dispatch = poll.read(request_id)
        if dispatch is None:
            poll.sleep(request_id, poll.give_up_at_ms)
            continue
        poll.give_up_at_ms = max(poll.give_up_at_ms, dispatch.deadline_ms)
        if dispatch.state in FINAL:
            # Whoever wrote the final state (event handler, timeout, cancel) released the claim.
            return dispatch
        now = deps.clock.now_ms()
        over = dispatch.wait_over(now)
        if over is not None:
            if dispatch.state == DispatchState.CANCELLING:
                return dispatch
            try:
                timed_out = _time_out(deps, dispatch, over, now)
            except Exception as exc:
                if now >= poll.give_up_at_ms + deps.settings.ack_timeout_ms:
                    raise
                count("PollErrors")
                log_event("timeout write failed; retrying", level="warning", request_id=request_id, error=repr(exc))
                poll.sleep(request_id, now + deps.settings.poll_max_ms)
                continue
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
        waiting_for_ack = dispatch.acked_at_ms is None and dispatch.state != DispatchState.ACKNOWLEDGED
        poll.sleep(request_id, dispatch.ack_deadline_ms if waiting_for_ack else dispatch.deadline_ms)


def _time_out(deps: PaymentDeps, dispatch: Dispatch, reason: Reason, now: int) -> Dispatch | None:
    rule = domain.ACK_TIMEOUT if reason == Reason.ACK_TIMEOUT else domain.RESULT_TIMEOUT
    try:
        timed_out = deps.payments.apply(
            Transition(dispatch.request_id, rule, DispatchState.TIMED_OUT, now, reason=reason)
        )
    except ConditionFailed:
        return None  # the terminal answered meanwhile, or a cancel is under way: read it again
    count("AckTimeouts" if reason == Reason.ACK_TIMEOUT else "ResultTimeouts")
    log_event(
        "payment timed out",
        level="warning",
        order_id=dispatch.order_id,
        terminal_id=dispatch.terminal_id,
        request_id=dispatch.request_id,
        reason=reason.value,
    )
    try:
        if reason == Reason.ACK_TIMEOUT:
            # A terminal that wakes up late must not show a payment screen nobody waits for.
            _send_cancel(deps, timed_out)
    finally:
        _release_quietly(deps, dispatch.terminal_id, dispatch.request_id)
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
    deps: PaymentDeps,
    merchant_id: str,
    request: OrderRequest,
    raw: dict[str, Any],
    terminal: Terminal,
    arrived_at_ms: int | None = None,
) -> Reply:
    """``transaction_type: Cancel``: ask the terminal to abort the order's payment, and answer what it says.

    ``Success`` only when the terminal reports the payment aborted; ``not_cancellable`` with the real
    outcome when it had completed; ``504 terminal.cancel_timeout`` when it stays silent, the order
    then being ``cancelling`` until the terminal's result lands (docs/payment-api.md "Cancel").
    """
    order_id = request.order.order_id
    now = deps.clock.now_ms()
    answer_by = domain.deadline_start(now, arrived_at_ms) + deps.settings.cancel_timeout_ms
    head = deps.payments.get_head(merchant_id, order_id)
    dispatch = deps.payments.get_dispatch(head.request_id) if head else None
    if dispatch is None or dispatch.terminal_id != terminal.terminal_id:
        return _not_cancellable(raw, None)
    state = dispatch.effective_state(now)
    if state in IN_FLIGHT:
        try:
            dispatch = deps.payments.apply(
                Transition(dispatch.request_id, domain.CANCEL, DispatchState.CANCELLING, now)
            )
            count("CancelsRequested")
        except ConditionFailed:
            dispatch = deps.payments.get_dispatch(dispatch.request_id) or dispatch
        state = dispatch.effective_state(now)
    if state != DispatchState.CANCELLING:
        return _not_cancellable(raw, state)
    if not _send_cancel(deps, dispatch):
        # The order stays cancelling: whatever the terminal reports when it is reachable again is its truth.
        raise ApiError(502, "terminal.unreachable", "The cancellation could not be sent to the terminal")
    log_event("cancel requested", order_id=order_id, terminal_id=dispatch.terminal_id, request_id=dispatch.request_id)
    final = _await_answer(deps, dispatch.request_id, answer_by)
    if final is None:
        count("CancelTimeouts")
        log_event("cancel unanswered", level="warning", order_id=order_id, request_id=dispatch.request_id)
        raise ApiError(
            504,
            "terminal.cancel_timeout",
            "The terminal did not answer the cancellation; the order stays cancelling until its result lands",
        )
    if final.state != DispatchState.CANCELLED:
        return _not_cancellable(raw, final.state)
    count("PaymentsCancelled")
    log_event("payment cancelled", order_id=order_id, terminal_id=final.terminal_id, request_id=final.request_id)
    return Reply(200, payment_body(raw, "Success", attempt=final.attempt))


def _not_cancellable(raw: dict[str, Any], state: DispatchState | None) -> Reply:
    error_data = {"state": state.value if state else None}
    return Reply(200, payment_body(raw, "Failed", error_code="not_cancellable", error_data=error_data))


def _await_answer(deps: PaymentDeps, request_id: str, until_ms: int) -> Dispatch | None:
    """The dispatch once the terminal's result has made it final, or None at ``until_ms``."""
    poll = _Poll(deps, until_ms)
    while True:
        dispatch = poll.read(request_id)
        if dispatch is not None and dispatch.state in FINAL:
            return dispatch
        if deps.clock.now_ms() >= until_ms:
            return None
        poll.sleep(cancel_wake_key(request_id), until_ms)


def order_status(deps: PaymentDeps, merchant_id: str, order_id: str) -> OrderStatus:
    """The order's latest attempt: how an ECR recovers after a lost or timed-out response."""
    head = deps.payments.get_head(merchant_id, order_id)
    dispatch = deps.payments.get_dispatch(head.request_id) if head else None
    if head is None or dispatch is None:
        raise order_not_found()
    overdue = dispatch.overdue_reason(deps.clock.now_ms())
    state = DispatchState.TIMED_OUT if overdue else dispatch.state
    request = jsonutil.loads(head.request_json)
    order = request.get("order") or {}
    flags = [BASKET_MISMATCH] if basket_mismatch(order.get("basket"), (order.get("price") or {}).get("amount")) else []
    payment = None
    if state in (DispatchState.SUCCEEDED, DispatchState.FAILED, DispatchState.CANCELLED):
        payment = payment_response(request, dispatch)
    return OrderStatus(
        order_id=order_id,
        attempt=dispatch.attempt,
        request_id=dispatch.request_id,
        terminal_id=dispatch.terminal_id,
        state=state,
        reason=overdue or dispatch.reason,
        late_result=dispatch.late,
        flags=flags,
        created_at=protocol.timestamp_from_ms(dispatch.created_at_ms),
        acknowledged_at=_ts(dispatch.acked_at_ms),
        finished_at=_ts(dispatch.finished_at_ms),
        ack_deadline=protocol.timestamp_from_ms(dispatch.ack_deadline_ms),
        deadline=protocol.timestamp_from_ms(dispatch.deadline_ms),
        payment=payment,
    )


def _ts(epoch_ms: int | None) -> str | None:
    return protocol.timestamp_from_ms(epoch_ms) if epoch_ms is not None else None

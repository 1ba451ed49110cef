"""What terminals say: ``ack`` and ``result`` on ``…/events``, presence on ``…/status`` (CONTRACT §2).

Every message is verified before it moves anything; each refusal is logged with its reason and
counted (``EventsRefused``), so nothing is dropped silently. State moves by conditional writes only,
so a late, repeated or forged event cannot change a finished payment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib import protocol
from chalicelib.config import Settings
from chalicelib.exceptions import ConditionFailed, EnvelopeError, EventRefused
from chalicelib.observability import count, log_event
from chalicelib.payments.domain import (
    ACCEPTS_RESULT,
    IN_FLIGHT,
    LATE_RESULT_AFTER_FAILURE,
    DispatchState,
    Reason,
    Terminal,
    clean_result,
)
from chalicelib.payments.ports import PaymentRepository, TerminalRepository
from chalicelib.payments.schemas import AckBody, ResultBody, StatusBody, terminal_body
from chalicelib.ports import Clock, Waker


@dataclass
class EventDeps:
    terminals: TerminalRepository
    payments: PaymentRepository
    settings: Settings
    clock: Clock
    waker: Waker


def _verified(deps: EventDeps, topic: str, payload: bytes, expected_kind: str) -> tuple[dict[str, Any], Terminal]:
    try:
        topic_terminal, kind = protocol.parse_topic(topic)
        envelope = protocol.decode(payload)
    except EnvelopeError as exc:
        raise EventRefused(exc.reason, str(exc)) from None
    if kind != expected_kind:
        raise EventRefused("wrong_topic", f"{kind} message on the {expected_kind} handler")
    if envelope["terminal_id"] != topic_terminal:
        raise EventRefused("terminal_mismatch", "envelope terminal_id differs from its topic's")
    terminal = deps.terminals.get(topic_terminal)
    if terminal is None or not terminal.passphrase:
        raise EventRefused("unknown_terminal", "no enrolled terminal with a passphrase")
    if not protocol.verify_signature(envelope, terminal.passphrase):
        raise EventRefused("bad_signature", "signature does not match the terminal's passphrase")
    return envelope, terminal


def _refuse(exc: EventRefused, topic: str) -> str:
    count("EventsRefused", reason=exc.reason)
    log_event("terminal message refused", level="warning", reason=exc.reason, detail=str(exc), topic=topic)
    return f"refused:{exc.reason}"


def handle_event(deps: EventDeps, topic: str, payload: bytes) -> str:
    """Apply one ``ack`` or ``result``; returns a short outcome label (also logged)."""
    try:
        envelope, terminal = _verified(deps, topic, payload, "events")
        sent_at_ms = protocol.parse_timestamp_ms(envelope["sent_at"])
        if abs(deps.clock.now_ms() - sent_at_ms) > deps.settings.event_freshness_ms:
            raise EventRefused("stale", "sent_at is outside the freshness window")
        request_id = envelope["request_id"]
        dispatch = deps.payments.get_dispatch(request_id)
        if dispatch is None or dispatch.terminal_id != terminal.terminal_id:
            raise EventRefused("unknown_request", "request_id is not a dispatch to this terminal")
        if envelope["type"] == "ack":
            outcome = _apply_ack(deps, request_id, terminal.terminal_id, envelope["body"])
        elif envelope["type"] == "result":
            outcome = _apply_result(deps, request_id, terminal.terminal_id, envelope["body"])
        else:
            raise EventRefused("unexpected_type", f"{envelope['type']!r} is not a terminal event")
    except EnvelopeError as exc:
        return _refuse(EventRefused(exc.reason, str(exc)), topic)
    except EventRefused as exc:
        return _refuse(exc, topic)
    log_event(
        "terminal event",
        outcome=outcome,
        request_id=request_id,
        terminal_id=terminal.terminal_id,
        order_id=dispatch.order_id,
        type=envelope["type"],
    )
    if not outcome.startswith("ignored"):
        deps.waker.wake(request_id)
    return outcome


def _apply_ack(deps: EventDeps, request_id: str, terminal_id: str, body: dict[str, Any]) -> str:
    accepted = terminal_body(AckBody, body).accepted
    now = deps.clock.now_ms()
    pending = frozenset({DispatchState.PENDING})
    try:
        if accepted:
            deps.payments.transition(request_id, pending, DispatchState.ACKNOWLEDGED, now, terminal_id=terminal_id)
            return "acknowledged"
        # The claim goes first: once the ECR sees the final state, its next payment finds the terminal free.
        deps.terminals.release(terminal_id, request_id)
        deps.payments.transition(
            request_id, pending, DispatchState.FAILED, now, terminal_id=terminal_id, reason=Reason.TERMINAL_BUSY
        )
    except ConditionFailed:
        count("EventsIgnored", reason="ack_not_pending")
        return "ignored:ack_not_pending"
    count("PaymentsBusy", reason="terminal")
    return "busy"


def _apply_result(deps: EventDeps, request_id: str, terminal_id: str, body: dict[str, Any]) -> str:
    parsed = terminal_body(ResultBody, body)
    status = parsed.payment_status
    result = clean_result(parsed.model_dump(exclude_none=True))
    if result.pop("masked_pan_refused", False):
        count("EventsRefused", reason="unmasked_pan")
        log_event("unmasked PAN dropped from a result", level="warning", request_id=request_id)
    to = DispatchState.SUCCEEDED if status == "Success" else DispatchState.FAILED
    now = deps.clock.now_ms()
    # The terminal is free once it reports a result. The claim goes before the final state, so an ECR
    # that sees its answer and sends the next payment at once finds the terminal free. (The release
    # is conditional on this request holding the claim: a repeated result frees nothing else.)
    deps.terminals.release(terminal_id, request_id)
    try:
        deps.payments.transition(request_id, IN_FLIGHT, to, now, terminal_id=terminal_id, result=result)
        late = False
    except ConditionFailed:
        # After a timeout, a dropped link (or a cancel the terminal did not honour) the money may
        # still have moved: keep the result, marked late, rather than lose it.
        late_from = ACCEPTS_RESULT - IN_FLIGHT
        if to == DispatchState.SUCCEEDED:
            late_from = late_from | {DispatchState.CANCELLED}
        try:
            deps.payments.transition(
                request_id,
                frozenset(late_from),
                to,
                now,
                terminal_id=terminal_id,
                result=result,
                late=True,
                failed_for=frozenset(LATE_RESULT_AFTER_FAILURE),
            )
            late = True
        except ConditionFailed:
            count("EventsIgnored", reason="result_for_finished_dispatch")
            return "ignored:already_final"
    count("PaymentsSucceeded" if to == DispatchState.SUCCEEDED else "PaymentsFailed")
    if late:
        count("LateResults")
    return ("late_" if late else "") + to.value


def handle_status(deps: EventDeps, topic: str, payload: bytes, received_at_ms: int) -> str:
    """Record presence; a terminal that drops mid-payment fails that payment as disconnected (502)."""
    try:
        envelope, terminal = _verified(deps, topic, payload, "status")
        if envelope["type"] != "status":
            raise EventRefused("unexpected_type", f"{envelope['type']!r} on a status topic")
        state = terminal_body(StatusBody, envelope["body"]).state
    except EventRefused as exc:
        return _refuse(exc, topic)
    online = state == "online"
    # Ordered by arrival, not sent_at: a last will is signed when the terminal connects.
    recorded = deps.terminals.record_status(
        terminal.terminal_id, online, received_at_ms, protocol.timestamp_from_ms(received_at_ms)
    )
    if not recorded:
        count("EventsIgnored", reason="older_status")
        return "ignored:older_status"
    log_event("terminal status", terminal_id=terminal.terminal_id, online=online)
    if not online and terminal.busy_request_id:
        _fail_disconnected(deps, terminal)
    return state


def _fail_disconnected(deps: EventDeps, terminal: Terminal) -> None:
    request_id = terminal.busy_request_id
    if request_id is None:
        return
    deps.terminals.release(terminal.terminal_id, request_id)  # before the final state, as for a result
    try:
        deps.payments.transition(
            request_id,
            IN_FLIGHT,
            DispatchState.FAILED,
            deps.clock.now_ms(),
            terminal_id=terminal.terminal_id,
            reason=Reason.TERMINAL_DISCONNECTED,
        )
    except ConditionFailed:
        return
    count("TerminalUnreachable", reason="disconnected")
    deps.waker.wake(request_id)

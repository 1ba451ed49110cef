"""What terminals say: ``ack`` and ``result`` on ``…/events``, presence on ``…/status`` (docs/terminal-protocol.md).

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
from chalicelib.keys import order_key
from chalicelib.observability import count, log_event
from chalicelib.payments import domain
from chalicelib.payments.domain import (
    AWAITING_RESULT,
    FINAL,
    Dispatch,
    DispatchState,
    Reason,
    Terminal,
    Transition,
    clean_result,
    result_state,
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
    if not protocol.verify_decoded_signature(envelope, terminal.passphrase):
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
            outcome = _apply_ack(deps, dispatch, terminal.terminal_id, envelope["body"])
        elif envelope["type"] == "result":
            outcome = _apply_result(deps, dispatch, terminal.terminal_id, envelope["body"])
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
        if envelope["type"] == "result":
            deps.waker.wake(f"{request_id}#cancel")  # a Cancel waiting for the terminal's answer
    return outcome


def _expire_if_overdue(deps: EventDeps, dispatch: Dispatch, now: int) -> None:
    """Write the timeout nobody was left to write (the waiter crashed, or answered async) before an
    event is applied, so a late event lands as late and the order's state never moves back."""
    overdue = dispatch.overdue_reason(now)
    if overdue is None:
        return
    rule = domain.ACK_TIMEOUT if overdue == Reason.ACK_TIMEOUT else domain.RESULT_TIMEOUT
    try:
        deps.payments.apply(Transition(dispatch.request_id, rule, DispatchState.TIMED_OUT, now, reason=overdue))
    except ConditionFailed:
        return  # moved meanwhile; the event's own conditional write decides
    deps.terminals.release(dispatch.terminal_id, dispatch.request_id)


def _apply_ack(deps: EventDeps, dispatch: Dispatch, terminal_id: str, body: dict[str, Any]) -> str:
    accepted = terminal_body(AckBody, body).accepted
    now = deps.clock.now_ms()
    request_id = dispatch.request_id
    _expire_if_overdue(deps, dispatch, now)
    try:
        if accepted:
            deps.payments.apply(
                Transition(request_id, domain.ACK, DispatchState.ACKNOWLEDGED, now, terminal_id=terminal_id)
            )
            return "acknowledged"
        # A busy answer to a payment already under way (reordered, repeated) must not free its terminal.
        if dispatch.state != DispatchState.PENDING:
            raise ConditionFailed(f"dispatch {request_id} is {dispatch.state}")
        # The claim goes first: once the ECR sees the final state, its next payment finds the terminal free.
        deps.terminals.release(terminal_id, request_id)
        try:
            deps.payments.apply(
                Transition(
                    request_id,
                    domain.BUSY_ACK,
                    DispatchState.FAILED,
                    now,
                    terminal_id=terminal_id,
                    reason=Reason.TERMINAL_BUSY,
                )
            )
        except ConditionFailed:
            # It moved meanwhile (the terminal acknowledged after all): take the claim back for it.
            current = deps.payments.get_dispatch(request_id)
            if current is not None and current.state in AWAITING_RESULT:
                key = order_key(dispatch.merchant_id, dispatch.order_id)
                deps.terminals.claim(terminal_id, request_id, now, dispatch.deadline_ms, key)
            raise
    except ConditionFailed:
        count("EventsIgnored", reason="ack_not_pending")
        return "ignored:ack_not_pending"
    count("PaymentsBusy", reason="terminal")
    return "busy"


def _apply_result(deps: EventDeps, dispatch: Dispatch, terminal_id: str, body: dict[str, Any]) -> str:
    request_id = dispatch.request_id
    result = clean_result(terminal_body(ResultBody, body).model_dump(exclude_none=True))
    if result.pop("masked_pan_refused", False):
        count("EventsRefused", reason="unmasked_pan")
        log_event("unmasked PAN dropped from a result", level="warning", request_id=request_id)
    to = result_state(result)
    now = deps.clock.now_ms()
    _expire_if_overdue(deps, dispatch, now)
    # The terminal is free once it reports a result. The claim goes before the final state, so an ECR
    # that sees its answer and sends the next payment at once finds the terminal free. (The release
    # is conditional on this request holding the claim: a repeated result frees nothing else.)
    deps.terminals.release(terminal_id, request_id)
    # The first result is the terminal's truth: on time, or late after a timeout or a failure that may
    # hide a payment. Both writes refuse once any result is recorded.
    for rule in (domain.RESULT, domain.LATE_RESULT):
        try:
            deps.payments.apply(Transition(request_id, rule, to, now, terminal_id=terminal_id, result=result))
        except ConditionFailed:
            continue
        count("PaymentsSucceeded" if to == DispatchState.SUCCEEDED else "PaymentsFailed")
        if rule.late:
            count("LateResults")
        return ("late_" if rule.late else "") + to.value
    count("EventsIgnored", reason="result_for_finished_dispatch")
    log_event("result refused: the first result stands", level="warning", request_id=request_id)
    return "ignored:already_final"


def handle_status(deps: EventDeps, topic: str, payload: bytes, received_at_ms: int) -> str:
    """A terminal's own ``status`` message: it counts only when newer than the last presence fact.

    Presence is the broker's word (``handle_presence``); a signed status can be captured and replayed,
    so it is ordered by when it was signed (never later than it arrived) and refused unless it is
    strictly newer than every fact recorded: a replay, or the last will signed at connect time and
    delivered after the broker already reported the disconnect, changes nothing.
    """
    try:
        envelope, terminal = _verified(deps, topic, payload, "status")
        if envelope["type"] != "status":
            raise EventRefused("unexpected_type", f"{envelope['type']!r} on a status topic")
        state = terminal_body(StatusBody, envelope["body"]).state
        signed_at_ms = protocol.parse_timestamp_ms(envelope["sent_at"])
    except EnvelopeError as exc:
        return _refuse(EventRefused(exc.reason, str(exc)), topic)
    except EventRefused as exc:
        return _refuse(exc, topic)
    online = state == "online"
    # A terminal whose clock runs ahead must not outrank the broker's later facts.
    at_ms = min(signed_at_ms, received_at_ms)
    recorded = deps.terminals.record_status(
        terminal.terminal_id, online, at_ms, protocol.timestamp_from_ms(received_at_ms)
    )
    if not recorded:
        count("EventsIgnored", reason="older_status")
        return "ignored:older_status"
    log_event("terminal status", terminal_id=terminal.terminal_id, online=online)
    if not online and terminal.busy_request_id:
        _fail_disconnected(deps, terminal)
    return state


_PRESENCE_FIELDS: dict[str, type] = {"clientId": str, "eventType": str, "sessionIdentifier": str, "timestamp": int}


def handle_presence(deps: EventDeps, event: dict[str, Any]) -> str:
    """A broker lifecycle event (``$aws/events/presence/{connected,disconnected}/{clientId}``).

    Only the broker publishes these, so they are the authority on presence; each carries the
    connection's session id and the broker's timestamp, and an older fact (an old session's
    disconnect delivered after a newer connect) changes nothing.
    """
    for key, kind in _PRESENCE_FIELDS.items():
        value = event.get(key) if isinstance(event, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            return _refuse(
                EventRefused("bad_presence", f"lifecycle event without a valid {key}"), "$aws/events/presence"
            )
    kind = event["eventType"]
    if kind not in ("connected", "disconnected"):
        return _refuse(EventRefused("bad_presence", f"eventType {kind!r}"), "$aws/events/presence")
    terminal_id = event["clientId"]
    terminal = deps.terminals.get(terminal_id)
    if terminal is None:
        # The cloud's own clients (and anything not enrolled) connect too: not a terminal's presence.
        count("EventsIgnored", reason="not_a_terminal")
        return "ignored:not_a_terminal"
    online = kind == "connected"
    at_ms = int(event["timestamp"])
    recorded = deps.terminals.record_presence(
        terminal_id, online, at_ms, event["sessionIdentifier"], protocol.timestamp_from_ms(at_ms)
    )
    if not recorded:
        count("EventsIgnored", reason="older_presence")
        return "ignored:older_presence"
    log_event("terminal presence", terminal_id=terminal_id, online=online, session=event["sessionIdentifier"])
    if not online and terminal.busy_request_id:
        _fail_disconnected(deps, terminal)
    return kind


def _fail_disconnected(deps: EventDeps, terminal: Terminal) -> None:
    request_id = terminal.busy_request_id
    if request_id is None:
        return
    # The final state first, then the claim: a dispatch that may not be failed (a cancel awaiting the
    # terminal's word) keeps the terminal claimed until its result or its expiry. (The terminal is
    # offline: nobody can start the next payment on it meanwhile.)
    try:
        deps.payments.apply(
            Transition(
                request_id,
                domain.DISCONNECTED,
                DispatchState.FAILED,
                deps.clock.now_ms(),
                terminal_id=terminal.terminal_id,
                reason=Reason.TERMINAL_DISCONNECTED,
            )
        )
    except ConditionFailed:
        # Already final (a result landed, or this is a redelivery whose release failed): free it.
        dispatch = deps.payments.get_dispatch(request_id)
        if dispatch is None or dispatch.state in FINAL:
            deps.terminals.release(terminal.terminal_id, request_id)
        return
    deps.terminals.release(terminal.terminal_id, request_id)
    count("TerminalUnreachable", reason="disconnected")
    deps.waker.wake(request_id)

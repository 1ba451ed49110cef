"""What terminals say, against the fakes: every refusal is counted and moves nothing; accepted
events move a dispatch only forward (docs/terminal-protocol.md)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from chalicelib import protocol
from chalicelib.errors import ApiError
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments import domain
from chalicelib.payments.domain import DispatchState, Terminal, Transition
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import Reply, order_status, reply_for, request_payment
from chalicelib.payments.terminal_events import handle_event, handle_status
from tests.conftest import MERCHANT, PASSPHRASE, TERMINAL_ID, World, example
from tests.logs import captured_logs

OTHER_TERMINAL = "PAX-77"
OTHER_PASSPHRASE = "another terminal's passphrase"
FRESHNESS_MS = 300_000


def pay(world: World, **kwargs: Any) -> Reply:
    body = example()
    return request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body, **kwargs)


def dispatched(world: World) -> str:
    """Start a payment without waiting for it; the id of its dispatch."""
    assert pay(world, respond_async=True).status == 202
    return str(world.last_request()["request_id"])


def state_of(world: World) -> Any:
    return copy.deepcopy((world.payments.dispatches, world.payments.heads, world.terminals.items))


def events_topic(terminal_id: str = TERMINAL_ID) -> str:
    return protocol.topic_for(terminal_id, "events")


def signed_payload(
    kind: str,
    request_id: str,
    body: dict[str, Any],
    *,
    terminal_id: str = TERMINAL_ID,
    passphrase: str = PASSPHRASE,
    sent_at: str = "",
    **overrides: Any,
) -> bytes:
    envelope = protocol.make_envelope(kind, request_id, terminal_id, body, passphrase, sent_at=sent_at or None)
    if overrides:
        envelope.update(overrides)
        envelope["sig"] = protocol.signature(envelope, passphrase)
    return protocol.encode(envelope)


# The detail logged beside each fixed refusal reason: what an operator reads to find the fault.
REFUSAL_DETAILS = {
    "terminal_mismatch": "envelope terminal_id differs from its topic's",
    "unknown_terminal": "no enrolled terminal with a passphrase",
    "bad_signature": "signature does not match the terminal's passphrase",
    "stale": "sent_at is outside the freshness window",
    "unknown_request": "request_id is not a dispatch to this terminal",
    "float_in_envelope": "envelopes carry integers only",
}


def assert_refused_and_nothing_moved(
    world: World, reason: str, act: Callable[[], str], detail: str | None = None
) -> None:
    """Refused: the outcome label, the metric, one warning line with reason, detail and topic, and no move."""
    before, woken = state_of(world), list(world.waker.woken)
    counted = METRIC_COUNTS[f"EventsRefused.reason={reason}"]
    with captured_logs() as logged:
        assert act() == f"refused:{reason}"
    assert METRIC_COUNTS[f"EventsRefused.reason={reason}"] == counted + 1
    line = logged.one("terminal message refused")
    assert (line["level"], line["reason"]) == ("warning", reason)
    assert line["detail"] == (detail or REFUSAL_DETAILS.get(reason, line["detail"]))
    assert isinstance(line["detail"], str) and line["detail"] not in ("", "None", reason)
    assert line["topic"].startswith(("nepting/", "devices/"))
    assert state_of(world) == before
    assert world.waker.woken == woken


@pytest.fixture
def request_id(world: World) -> str:
    return dispatched(world)


# -- refusals of handle_event ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"", b"{not json", b"[]", b'{"v":1,"type":"ack"}', b"\xff\xfe"],
    ids=["empty", "not-json", "array", "missing-fields", "not-utf8"],
)
def test_malformed_payload_is_refused(world: World, request_id: str, payload: bytes) -> None:
    assert_refused_and_nothing_moved(
        world, "malformed", lambda: handle_event(world.event_deps, events_topic(), payload)
    )


def test_other_envelope_version_is_refused(world: World, request_id: str) -> None:
    payload = signed_payload("ack", request_id, {}, v=2, sent_at=protocol.timestamp_from_ms(world.clock.now_ms()))
    assert_refused_and_nothing_moved(
        world, "bad_version", lambda: handle_event(world.event_deps, events_topic(), payload)
    )


@pytest.mark.parametrize(
    "body",
    [
        b'"body":{"x":1.5}',
        b'"body":{"accepted":true,"x":{"y":[0,{"z":-2.50}]}}',
        b'"body":{"x":[[1E+2]]}',
        b'"body":{"x":1e-1}',
        b'"body":{},"x":0.0',
    ],
    ids=["body", "nested", "exponent-in-arrays", "negative-exponent", "beside-the-body"],
)
def test_float_anywhere_in_the_envelope_is_refused(world: World, request_id: str, body: bytes) -> None:
    sent_at = protocol.timestamp_from_ms(world.clock.now_ms())
    envelope = protocol.make_envelope("ack", request_id, TERMINAL_ID, {}, PASSPHRASE, sent_at=sent_at)
    payload = protocol.encode(envelope).replace(b'"body":{}', body)
    assert_refused_and_nothing_moved(
        world, "float_in_envelope", lambda: handle_event(world.event_deps, events_topic(), payload)
    )


@pytest.mark.parametrize(
    "topic",
    ["nepting/v1/terminals/PAX-1850320198/acks", "devices/PAX-1850320198/events", "nepting/v1/terminals/events"],
)
def test_message_on_a_topic_that_is_not_a_terminal_topic_is_refused(world: World, request_id: str, topic: str) -> None:
    payload = signed_payload("ack", request_id, {}, sent_at=protocol.timestamp_from_ms(world.clock.now_ms()))
    assert_refused_and_nothing_moved(world, "bad_topic", lambda: handle_event(world.event_deps, topic, payload))


def test_event_published_on_the_status_topic_is_refused_by_the_event_handler(world: World, request_id: str) -> None:
    payload = signed_payload("ack", request_id, {}, sent_at=protocol.timestamp_from_ms(world.clock.now_ms()))
    topic = protocol.topic_for(TERMINAL_ID, "status")
    assert_refused_and_nothing_moved(
        world,
        "wrong_topic",
        lambda: handle_event(world.event_deps, topic, payload),
        detail="status message on the events handler",
    )


def test_envelope_terminal_id_differing_from_the_topics_is_refused(world: World, request_id: str) -> None:
    world.terminals.put(Terminal(OTHER_TERMINAL, MERCHANT, OTHER_PASSPHRASE, online=True))
    assert_refused_and_nothing_moved(
        world, "terminal_mismatch", lambda: world.terminal_says("ack", request_id, {}, topic_terminal=OTHER_TERMINAL)
    )


def test_event_from_a_terminal_that_is_not_enrolled_is_refused(world: World, request_id: str) -> None:
    assert_refused_and_nothing_moved(
        world, "unknown_terminal", lambda: world.terminal_says("ack", request_id, {}, terminal_id="PAX-404")
    )


def test_event_from_a_terminal_without_passphrase_is_refused(world: World, request_id: str) -> None:
    world.terminals.put(Terminal(OTHER_TERMINAL, MERCHANT, None, online=True))
    assert_refused_and_nothing_moved(
        world,
        "unknown_terminal",
        lambda: world.terminal_says("ack", request_id, {}, terminal_id=OTHER_TERMINAL, passphrase=""),
    )


def test_event_signed_with_another_passphrase_is_refused(world: World, request_id: str) -> None:
    assert_refused_and_nothing_moved(
        world, "bad_signature", lambda: world.terminal_says("ack", request_id, {}, passphrase="guess")
    )


def test_event_whose_signature_was_copied_onto_another_body_is_refused(world: World, request_id: str) -> None:
    sent_at = protocol.timestamp_from_ms(world.clock.now_ms())
    genuine = protocol.make_envelope("ack", request_id, TERMINAL_ID, {}, PASSPHRASE, sent_at=sent_at)
    forged = {**genuine, "type": "result", "body": {"payment_status": "Success"}}
    assert_refused_and_nothing_moved(
        world, "bad_signature", lambda: handle_event(world.event_deps, events_topic(), protocol.encode(forged))
    )


@pytest.mark.parametrize("offset_ms", [-(FRESHNESS_MS + 1), FRESHNESS_MS + 1, -86_400_000, 86_400_000])
def test_event_sent_more_than_5_minutes_from_now_is_refused(world: World, request_id: str, offset_ms: int) -> None:
    sent_at_ms = world.clock.now_ms() + offset_ms
    assert_refused_and_nothing_moved(
        world, "stale", lambda: world.terminal_says("ack", request_id, {}, sent_at_ms=sent_at_ms)
    )


@pytest.mark.parametrize("offset_ms", [-FRESHNESS_MS, FRESHNESS_MS])
def test_event_sent_exactly_5_minutes_from_now_is_accepted(world: World, request_id: str, offset_ms: int) -> None:
    assert world.terminal_says("ack", request_id, {}, sent_at_ms=world.clock.now_ms() + offset_ms) == "acknowledged"


def test_event_with_an_unreadable_sent_at_is_refused(world: World, request_id: str) -> None:
    payload = signed_payload("ack", request_id, {}, sent_at="yesterday")
    assert_refused_and_nothing_moved(
        world,
        "bad_timestamp",
        lambda: handle_event(world.event_deps, events_topic(), payload),
        detail="not an RFC 3339 timestamp: 'yesterday'",
    )


def test_event_for_a_request_id_never_dispatched_is_refused(world: World, request_id: str) -> None:
    assert_refused_and_nothing_moved(world, "unknown_request", lambda: world.terminal_says("ack", "r-unknown", {}))


def test_event_for_a_dispatch_to_another_terminal_is_refused(world: World, request_id: str) -> None:
    world.terminals.put(Terminal(OTHER_TERMINAL, MERCHANT, OTHER_PASSPHRASE, online=True))
    result = {"payment_status": "Success", "transaction_reference": "TX-FORGED"}
    assert_refused_and_nothing_moved(
        world,
        "unknown_request",
        lambda: world.terminal_says(
            "result", request_id, result, terminal_id=OTHER_TERMINAL, passphrase=OTHER_PASSPHRASE
        ),
    )


@pytest.mark.parametrize("kind", ["payment_request", "cancel_request", "status", "hello"])
def test_event_of_a_type_terminals_do_not_send_on_events_is_refused(world: World, request_id: str, kind: str) -> None:
    assert_refused_and_nothing_moved(
        world,
        "unexpected_type",
        lambda: world.terminal_says(kind, request_id, {"state": "online"}),
        detail=f"{kind!r} is not a terminal event",
    )


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("ack", {"accepted": "no"}),
        ("ack", {"accepted": 0}),
        ("result", {}),
        ("result", {"payment_status": "success"}),
        ("result", {"payment_status": "Success", "error_data": ["x"]}),
        ("result", {"payment_status": "Success", "authorized_online": "yes"}),
        ("result", {"payment_status": "Failed", "error_code": 51}),
        ("result", {"payment_status": "Success", "receipt": {"text": "x"}}),
        ("result", {"payment_status": "Success", "masked_pan": 4970100001}),
    ],
    ids=[
        "ack-accepted-text",
        "ack-accepted-int",
        "no-status",
        "status-case",
        "error-data-list",
        "online-text",
        "error-code-int",
        "receipt-object",
        "pan-int",
    ],
)
def test_event_with_a_body_of_the_wrong_shape_is_refused(
    world: World, request_id: str, kind: str, body: dict[str, Any]
) -> None:
    assert_refused_and_nothing_moved(world, "bad_body", lambda: world.terminal_says(kind, request_id, body))


# -- accepted events ---------------------------------------------------------------------------------


def test_ack_moves_pending_to_acknowledged_and_wakes_the_waiter(world: World, request_id: str) -> None:
    assert world.terminal_says("ack", request_id, {}) == "acknowledged"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.ACKNOWLEDGED
    assert dispatch.acked_at_ms == world.clock.now_ms()
    assert world.waker.woken == [request_id]


def test_busy_ack_fails_the_dispatch_and_frees_the_terminal(world: World, request_id: str) -> None:
    assert world.terminal_says("ack", request_id, {"accepted": False, "reason": "busy"}) == "busy"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and (dispatch.state, dispatch.reason) == (DispatchState.FAILED, "terminal_busy")
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None


def test_result_before_the_ack_is_accepted_and_the_late_ack_ignored(world: World, request_id: str) -> None:
    assert world.result()(request_id) == "succeeded"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.SUCCEEDED
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None
    ignored = METRIC_COUNTS["EventsIgnored.reason=ack_not_pending"]
    before = state_of(world)
    assert world.terminal_says("ack", request_id, {}) == "ignored:ack_not_pending"
    assert METRIC_COUNTS["EventsIgnored.reason=ack_not_pending"] == ignored + 1
    assert state_of(world) == before


def test_repeated_result_changes_nothing(world: World, request_id: str) -> None:
    world.terminal_says("ack", request_id, {})
    assert world.result()(request_id) == "succeeded"
    before, woken = state_of(world), list(world.waker.woken)
    ignored = METRIC_COUNTS["EventsIgnored.reason=result_for_finished_dispatch"]
    world.clock.advance(1_000)
    assert world.result()(request_id) == "ignored:already_final"
    assert METRIC_COUNTS["EventsIgnored.reason=result_for_finished_dispatch"] == ignored + 1
    assert state_of(world) == before
    assert world.waker.woken == woken


def test_forged_failure_after_success_cannot_flip_it(world: World, request_id: str) -> None:
    world.terminal_says("ack", request_id, {})
    world.result()(request_id)
    failure = {"payment_status": "Failed", "error_code": "declined"}
    assert_refused_and_nothing_moved(
        world, "bad_signature", lambda: world.terminal_says("result", request_id, failure, passphrase="forger")
    )
    # even the terminal itself cannot take a finished success back
    assert world.terminal_says("result", request_id, failure) == "ignored:already_final"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.SUCCEEDED
    assert dispatch.result is not None and dispatch.result["payment_status"] == "Success"


def test_unmasked_pan_is_dropped_counted_and_the_payment_still_recorded(world: World, request_id: str) -> None:
    counted = METRIC_COUNTS["EventsRefused.reason=unmasked_pan"]
    assert world.result(masked_pan="4970101234560001")(request_id) == "succeeded"
    assert METRIC_COUNTS["EventsRefused.reason=unmasked_pan"] == counted + 1
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.result is not None
    assert "masked_pan" not in dispatch.result and "masked_pan_refused" not in dispatch.result
    assert "4970101234560001" not in repr(world.payments.dispatches)
    payment = order_status(world.payment_deps, MERCHANT, "ORDER_1537532589263").wire()["payment"]
    assert payment["paymentStatus"] == "Success" and "masked_pan" not in payment["transaction"]


def test_result_keeps_only_contract_fields(world: World, request_id: str) -> None:
    world.result(cvv="123", track2="4970101234560001=2512")(request_id)
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.result is not None
    assert "cvv" not in dispatch.result and "track2" not in dispatch.result
    assert dispatch.result["transaction_reference"] == "TX-1"


# -- status -------------------------------------------------------------------------------------------


def say_status(world: World, state: str, received_at_ms: int, **kwargs: Any) -> str:
    payload = signed_payload("status", "s-" + state, {"state": state}, **kwargs)
    return handle_status(
        world.event_deps, protocol.topic_for(kwargs.get("terminal_id", TERMINAL_ID), "status"), payload, received_at_ms
    )


def test_status_is_recorded_in_arrival_order(world: World) -> None:
    now = world.clock.now_ms()
    assert say_status(world, "offline", now) == "offline"
    terminal = world.terminals.items[TERMINAL_ID]
    assert (terminal.online, terminal.status_at_ms, terminal.last_seen_at) == (
        False,
        now,
        protocol.timestamp_from_ms(now),
    )
    assert say_status(world, "online", now + 10) == "online"
    assert world.terminals.items[TERMINAL_ID].online is True
    ignored = METRIC_COUNTS["EventsIgnored.reason=older_status"]
    assert say_status(world, "offline", now + 5) == "ignored:older_status"
    assert METRIC_COUNTS["EventsIgnored.reason=older_status"] == ignored + 1
    assert world.terminals.items[TERMINAL_ID].online is True
    assert world.terminals.items[TERMINAL_ID].status_at_ms == now + 10


def test_last_will_signed_long_ago_still_takes_the_terminal_offline(world: World) -> None:
    # A last will is signed when the terminal connects: its sent_at is no measure of freshness.
    long_ago = protocol.timestamp_from_ms(world.clock.now_ms() - 86_400_000)
    assert say_status(world, "offline", world.clock.now_ms(), sent_at=long_ago) == "offline"
    assert world.terminals.items[TERMINAL_ID].online is False


@pytest.mark.parametrize(
    ("reason", "kwargs", "state"),
    [
        ("bad_signature", {"passphrase": "guess"}, "offline"),
        ("unknown_terminal", {"terminal_id": "PAX-404"}, "offline"),
        ("bad_body", {}, "away"),
    ],
)
def test_status_refusals_are_counted_and_change_nothing(
    world: World, reason: str, kwargs: dict[str, Any], state: str
) -> None:
    assert_refused_and_nothing_moved(world, reason, lambda: say_status(world, state, world.clock.now_ms(), **kwargs))


def test_event_types_other_than_status_are_refused_on_the_status_topic(world: World) -> None:
    payload = signed_payload("ack", "r-1", {"state": "offline"})
    topic = protocol.topic_for(TERMINAL_ID, "status")
    assert_refused_and_nothing_moved(
        world,
        "unexpected_type",
        lambda: handle_status(world.event_deps, topic, payload, world.clock.now_ms()),
        detail="'ack' on a status topic",
    )


def test_status_on_the_events_topic_is_refused_by_the_status_handler(world: World) -> None:
    payload = signed_payload("status", "r-1", {"state": "offline"})
    assert_refused_and_nothing_moved(
        world,
        "wrong_topic",
        lambda: handle_status(world.event_deps, events_topic(), payload, world.clock.now_ms()),
        detail="events message on the status handler",
    )


def test_going_offline_during_a_payment_fails_it_as_disconnected_with_a_502(world: World) -> None:
    def drop(request_id: str) -> None:
        world.terminal_says("ack", request_id, {})
        assert say_status(world, "offline", world.clock.now_ms()) == "offline"

    world.script(drop)
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert (caught.value.status, caught.value.code) == (502, "terminal.disconnected")
    request_id = world.last_request()["request_id"]
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and (dispatch.state, dispatch.reason) == (DispatchState.FAILED, "terminal_disconnected")
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None
    assert request_id in world.waker.woken


def test_reply_for_a_disconnected_dispatch_is_a_502(world: World, request_id: str) -> None:
    say_status(world, "offline", world.clock.now_ms())
    head = world.payments.get_head(MERCHANT, "ORDER_1537532589263")
    dispatch = world.payments.get_dispatch(request_id)
    assert head is not None and dispatch is not None
    with pytest.raises(ApiError) as caught:
        reply_for(head, dispatch)
    assert caught.value.status == 502 and caught.value.code == "terminal.disconnected"


def test_going_offline_when_idle_fails_nothing(world: World) -> None:
    pay_request_id = dispatched(world)
    world.result()(pay_request_id)
    before = copy.deepcopy(world.payments.dispatches)
    assert say_status(world, "offline", world.clock.now_ms()) == "offline"
    assert world.payments.dispatches == before


def test_a_result_after_the_disconnect_is_kept_as_late(world: World, request_id: str) -> None:
    world.terminal_says("ack", request_id, {})
    say_status(world, "offline", world.clock.now_ms())
    # the terminal paid, reconnected and reported: the money moved, so the result must be kept, marked late
    assert world.result()(request_id) == "late_succeeded"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.SUCCEEDED and dispatch.late


def test_the_terminal_is_free_by_the_time_the_final_state_is_visible(world: World) -> None:
    """An ECR that gets its answer and sends the next payment at once must not meet terminal_busy."""
    seen: list[tuple[str, str | None]] = []
    original = world.payments.apply

    def observe(transition: Transition) -> Any:
        terminal = world.terminals.get(TERMINAL_ID)
        seen.append((transition.to.value, terminal.busy_request_id if terminal else None))
        return original(transition)

    world.payments.apply = observe  # type: ignore[method-assign]
    world.script(world.ack(), world.result())
    reply = pay(world)
    assert reply.body["paymentStatus"] == "Success"
    final_writes = [holder for state, holder in seen if state == "succeeded"]
    assert final_writes == [None], "the claim was released before the final state was written"


# -- what operators see: the outcome line, the metrics, and when each write happened -----------------


ORDER_ID = "ORDER_1537532589263"


def test_every_applied_event_logs_its_outcome_with_the_ids_to_find_it(world: World, request_id: str) -> None:
    with captured_logs() as logged:
        world.terminal_says("ack", request_id, {})
        world.result()(request_id)
    assert logged.lines("terminal event") == [
        {
            "level": "info",
            "outcome": outcome,
            "request_id": request_id,
            "terminal_id": TERMINAL_ID,
            "order_id": ORDER_ID,
            "type": kind,
        }
        for outcome, kind in (("acknowledged", "ack"), ("succeeded", "result"))
    ]


@pytest.mark.parametrize(("status", "metric"), [("Success", "PaymentsSucceeded"), ("Failed", "PaymentsFailed")])
def test_each_final_result_is_counted_by_its_outcome(world: World, request_id: str, status: str, metric: str) -> None:
    other = "PaymentsFailed" if metric == "PaymentsSucceeded" else "PaymentsSucceeded"
    before = (METRIC_COUNTS[metric], METRIC_COUNTS[other], METRIC_COUNTS["LateResults"])
    world.result(status)(request_id)
    assert (METRIC_COUNTS[metric], METRIC_COUNTS[other], METRIC_COUNTS["LateResults"]) == (
        before[0] + 1,
        before[1],
        before[2],
    )


def test_a_late_result_is_counted_as_late_too(world: World, request_id: str) -> None:
    say_status(world, "offline", world.clock.now_ms())
    before = (METRIC_COUNTS["PaymentsSucceeded"], METRIC_COUNTS["LateResults"])
    assert world.result()(request_id) == "late_succeeded"
    assert (METRIC_COUNTS["PaymentsSucceeded"], METRIC_COUNTS["LateResults"]) == (before[0] + 1, before[1] + 1)


def test_a_busy_terminal_is_counted_and_the_dispatch_ends_when_it_said_so(world: World, request_id: str) -> None:
    busy = METRIC_COUNTS["PaymentsBusy.reason=terminal"]
    world.clock.advance(1_234)
    world.terminal_says("ack", request_id, {"accepted": False, "reason": "busy"})
    assert METRIC_COUNTS["PaymentsBusy.reason=terminal"] == busy + 1
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.finished_at_ms == world.clock.now_ms()


def test_a_result_ends_the_dispatch_at_the_time_it_arrived(world: World, request_id: str) -> None:
    world.clock.advance(4_321)
    world.result()(request_id)
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.finished_at_ms == world.clock.now_ms()


def test_a_late_result_ends_the_dispatch_at_the_time_it_arrived(world: World, request_id: str) -> None:
    say_status(world, "offline", world.clock.now_ms())
    world.clock.advance(7_000)
    world.result()(request_id)
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.late and dispatch.finished_at_ms == world.clock.now_ms()
    assert dispatch.result is not None and dispatch.result["transaction_reference"] == "TX-1"


def test_a_clean_result_counts_no_unmasked_pan(world: World, request_id: str) -> None:
    counted = METRIC_COUNTS["EventsRefused.reason=unmasked_pan"]
    with captured_logs() as logged:
        world.result()(request_id)
    assert METRIC_COUNTS["EventsRefused.reason=unmasked_pan"] == counted
    assert logged.lines("unmasked PAN dropped from a result") == []


def test_an_unmasked_pan_is_logged_as_a_warning_with_its_request_and_never_the_pan(
    world: World, request_id: str
) -> None:
    with captured_logs() as logged:
        world.result(masked_pan="4970101234560001")(request_id)
    assert logged.one("unmasked PAN dropped from a result") == {"level": "warning", "request_id": request_id}
    assert all("4970101234560001" not in repr(vars(record)) for record in logged.records)


def test_each_recorded_status_is_logged_with_the_terminal_and_its_presence(world: World) -> None:
    with captured_logs() as logged:
        say_status(world, "offline", world.clock.now_ms())
        say_status(world, "online", world.clock.now_ms() + 1)
    assert logged.lines("terminal status") == [
        {"level": "info", "terminal_id": TERMINAL_ID, "online": False},
        {"level": "info", "terminal_id": TERMINAL_ID, "online": True},
    ]


def test_an_online_status_during_a_payment_leaves_the_payment_running(world: World, request_id: str) -> None:
    world.terminal_says("ack", request_id, {})
    assert say_status(world, "online", world.clock.now_ms()) == "online"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.ACKNOWLEDGED
    assert world.terminals.items[TERMINAL_ID].busy_request_id == request_id


def test_a_disconnect_fails_the_payment_when_it_happened_counts_it_and_wakes_its_waiter(
    world: World, request_id: str
) -> None:
    world.terminal_says("ack", request_id, {})
    world.waker.woken.clear()
    world.clock.advance(2_500)
    unreachable = METRIC_COUNTS["TerminalUnreachable.reason=disconnected"]
    say_status(world, "offline", world.clock.now_ms())
    assert world.waker.woken == [request_id]
    assert METRIC_COUNTS["TerminalUnreachable.reason=disconnected"] == unreachable + 1
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.finished_at_ms == world.clock.now_ms()


def test_a_disconnect_after_the_payment_ended_counts_nothing(world: World, request_id: str) -> None:
    world.result()(request_id)
    # the claim is still held when the release lost a race: the disconnect finds nothing in flight
    world.terminals.items[TERMINAL_ID].busy_request_id = request_id
    world.waker.woken.clear()
    unreachable = METRIC_COUNTS["TerminalUnreachable.reason=disconnected"]
    say_status(world, "offline", world.clock.now_ms())
    assert METRIC_COUNTS["TerminalUnreachable.reason=disconnected"] == unreachable
    assert world.waker.woken == []
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None, "the stale claim is freed"


def test_a_disconnect_while_a_cancel_awaits_the_terminal_keeps_the_order_cancelling_and_claimed(
    world: World, request_id: str
) -> None:
    world.terminal_says("ack", request_id, {})
    world.payments.apply(Transition(request_id, domain.CANCEL, DispatchState.CANCELLING, world.clock.now_ms()))
    say_status(world, "offline", world.clock.now_ms())
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.CANCELLING
    assert world.terminals.items[TERMINAL_ID].busy_request_id == request_id


def test_a_status_with_an_unreadable_signing_time_is_refused(world: World) -> None:
    payload = signed_payload("status", "s-1", {"state": "offline"}, sent_at="yesterday")
    topic = protocol.topic_for(TERMINAL_ID, "status")
    assert_refused_and_nothing_moved(
        world,
        "bad_timestamp",
        lambda: handle_status(world.event_deps, topic, payload, world.clock.now_ms()),
        detail="not an RFC 3339 timestamp: 'yesterday'",
    )


# -- races and late events on the new rules ------------------------------------------------------------


def test_a_busy_ack_that_loses_to_the_terminals_own_ack_gives_the_claim_back_to_the_payment(
    world: World, request_id: str
) -> None:
    original = world.payments.apply

    def acknowledged_meanwhile(transition: Transition) -> Any:
        if transition.rule is domain.BUSY_ACK:
            original(Transition(request_id, domain.ACK, DispatchState.ACKNOWLEDGED, world.clock.now_ms()))
        return original(transition)

    world.payments.apply = acknowledged_meanwhile  # type: ignore[method-assign]
    world.clock.advance(500)
    assert world.terminal_says("ack", request_id, {"accepted": False, "reason": "busy"}) == "ignored:ack_not_pending"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.ACKNOWLEDGED
    terminal = world.terminals.items[TERMINAL_ID]
    assert (terminal.busy_request_id, terminal.busy_until_ms, terminal.busy_order) == (
        request_id,
        dispatch.deadline_ms,
        f"{MERCHANT}#{ORDER_ID}",
    )


def test_an_ack_after_the_ack_deadline_writes_the_timeout_first_and_frees_the_terminal(
    world: World, request_id: str
) -> None:
    world.clock.advance(world.settings.ack_timeout_ms)
    assert world.terminal_says("ack", request_id, {}) == "ignored:ack_not_pending"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None
    assert (dispatch.state, dispatch.reason, dispatch.finished_at_ms) == (
        DispatchState.TIMED_OUT,
        "ack_timeout",
        world.clock.now_ms(),
    )
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None


def test_a_result_after_the_payment_deadline_is_recorded_late_after_a_result_timeout(
    world: World, request_id: str
) -> None:
    world.terminal_says("ack", request_id, {})
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None
    world.clock.advance(dispatch.deadline_ms - world.clock.now_ms())
    assert world.result()(request_id) == "late_succeeded"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and (dispatch.state, dispatch.reason, dispatch.late) == (
        DispatchState.SUCCEEDED,
        "result_timeout",
        True,
    )


def test_a_result_wakes_a_cancel_waiting_for_the_terminal_and_an_ack_does_not(world: World, request_id: str) -> None:
    world.terminal_says("ack", request_id, {})
    assert f"{request_id}#cancel" not in world.waker.woken
    world.result()(request_id)
    assert f"{request_id}#cancel" in world.waker.woken


def test_a_second_result_is_refused_with_a_warning_naming_its_request(world: World, request_id: str) -> None:
    world.result()(request_id)
    with captured_logs() as logged:
        assert world.result("Failed", error_code="declined")(request_id) == "ignored:already_final"
    assert logged.one("result refused: the first result stands") == {"level": "warning", "request_id": request_id}

"""Presence cannot be forged or replayed (docs/terminal-protocol.md "Presence"): the broker's lifecycle events are
the authority, ordered by their timestamps and sessions; a terminal's signed ``status`` counts only
when it is newer than every presence fact recorded."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from chalicelib import protocol
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments.domain import DispatchState
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import request_payment
from chalicelib.payments.terminal_events import handle_presence, handle_status
from tests.conftest import MERCHANT, PASSPHRASE, TERMINAL_ID, World, example
from tests.logs import captured_logs


def lifecycle(kind: str, at_ms: int, session: str = "s-1", client_id: str = TERMINAL_ID) -> dict[str, Any]:
    """IoT Core's presence event, as the topic rule on ``$aws/events/presence/+/+`` hands it over."""
    event: dict[str, Any] = {
        "clientId": client_id,
        "timestamp": at_ms,
        "eventType": kind,
        "sessionIdentifier": session,
        "principalIdentifier": "cert-id",
        "versionNumber": 0,
    }
    if kind == "disconnected":
        event.update(clientInitiatedDisconnect=False, disconnectReason="CONNECTION_LOST")
    return event


def signed_status(state: str, sent_at_ms: int) -> bytes:
    envelope = protocol.make_envelope(
        "status",
        "s-" + state,
        TERMINAL_ID,
        {"state": state},
        PASSPHRASE,
        sent_at=protocol.timestamp_from_ms(sent_at_ms),
    )
    return protocol.encode(envelope)


def deliver_status(world: World, payload: bytes, received_at_ms: int | None = None) -> str:
    received = world.clock.now_ms() if received_at_ms is None else received_at_ms
    return handle_status(world.event_deps, protocol.topic_for(TERMINAL_ID, "status"), payload, received)


def start_payment(world: World) -> str:
    body = example()
    assert request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body, respond_async=True).status
    request_id = str(world.last_request()["request_id"])
    world.ack()(request_id)
    return request_id


def online(world: World) -> bool:
    return world.terminals.items[TERMINAL_ID].online


def test_lifecycle_events_set_presence_in_their_own_order(world: World) -> None:
    now = world.clock.now_ms()
    assert handle_presence(world.event_deps, lifecycle("disconnected", now, "s-1")) == "disconnected"
    assert not online(world)
    assert handle_presence(world.event_deps, lifecycle("connected", now + 10, "s-2")) == "connected"
    assert online(world) and world.terminals.items[TERMINAL_ID].presence_session == "s-2"


def test_an_old_sessions_disconnect_delivered_late_cannot_undo_a_newer_connect(world: World) -> None:
    now = world.clock.now_ms()
    handle_presence(world.event_deps, lifecycle("connected", now, "s-1"))
    handle_presence(world.event_deps, lifecycle("connected", now + 500, "s-2"))
    ignored = METRIC_COUNTS["EventsIgnored.reason=older_presence"]
    assert handle_presence(world.event_deps, lifecycle("disconnected", now + 400, "s-1")) == "ignored:older_presence"
    # a taken-over connection's disconnect may come later than the new connect: still not its end
    assert handle_presence(world.event_deps, lifecycle("disconnected", now + 900, "s-1")) == "ignored:older_presence"
    assert METRIC_COUNTS["EventsIgnored.reason=older_presence"] == ignored + 2
    assert online(world)
    # the current session's own disconnect, even in the same millisecond, does count
    assert handle_presence(world.event_deps, lifecycle("disconnected", now + 500, "s-2")) == "disconnected"
    assert not online(world)


def test_a_disconnect_mid_payment_fails_it_as_disconnected_and_frees_the_terminal(world: World) -> None:
    request_id = start_payment(world)
    handle_presence(world.event_deps, lifecycle("connected", world.clock.now_ms() - 1_000, "s-1"))
    assert handle_presence(world.event_deps, lifecycle("disconnected", world.clock.now_ms(), "s-1")) == "disconnected"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and (dispatch.state, dispatch.reason) == (DispatchState.FAILED, "terminal_disconnected")
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None
    assert request_id in world.waker.woken


def test_replayed_offline_status_during_a_payment_changes_nothing(world: World) -> None:
    # Captured yesterday (or a minute ago) from the terminal's previous connection: correctly signed.
    captured = signed_status("offline", world.clock.now_ms() - 60_000)
    handle_presence(world.event_deps, lifecycle("connected", world.clock.now_ms() - 30_000, "s-2"))
    request_id = start_payment(world)
    before = copy.deepcopy((world.payments.dispatches, world.terminals.items))
    assert deliver_status(world, captured) == "ignored:older_status"
    assert deliver_status(world, captured) == "ignored:older_status"
    assert (world.payments.dispatches, world.terminals.items) == before
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.ACKNOWLEDGED


def test_a_status_replayed_unchanged_is_refused_the_second_time(world: World) -> None:
    status = signed_status("online", world.clock.now_ms() - 10)
    assert deliver_status(world, status) == "online"
    recorded = world.terminals.items[TERMINAL_ID].status_at_ms
    assert deliver_status(world, status, world.clock.now_ms() + 5_000) == "ignored:older_status"
    assert world.terminals.items[TERMINAL_ID].status_at_ms == recorded


def test_the_last_will_delivered_after_the_brokers_disconnect_changes_nothing(world: World) -> None:
    connected_at = world.clock.now_ms()
    will = signed_status("offline", connected_at - 5)  # signed just before connecting
    handle_presence(world.event_deps, lifecycle("connected", connected_at, "s-1"))
    handle_presence(world.event_deps, lifecycle("disconnected", connected_at + 60_000, "s-1"))
    handle_presence(world.event_deps, lifecycle("connected", connected_at + 61_000, "s-2"))
    assert deliver_status(world, will, connected_at + 61_500) == "ignored:older_status"
    assert online(world)


def test_a_status_signed_by_a_clock_running_ahead_is_ordered_by_its_arrival(world: World) -> None:
    now = world.clock.now_ms()
    assert deliver_status(world, signed_status("online", now + 240_000), now) == "online"
    assert world.terminals.items[TERMINAL_ID].status_at_ms == now
    # so the broker's next fact still counts
    assert handle_presence(world.event_deps, lifecycle("disconnected", now + 1_000, "s-1")) == "disconnected"


def test_a_fresh_status_newer_than_every_fact_counts(world: World) -> None:
    now = world.clock.now_ms()
    handle_presence(world.event_deps, lifecycle("connected", now - 1_000, "s-1"))
    assert deliver_status(world, signed_status("offline", now)) == "offline"
    assert not online(world)


def test_lifecycle_of_a_client_that_is_not_a_terminal_is_ignored_and_counted(world: World) -> None:
    ignored = METRIC_COUNTS["EventsIgnored.reason=not_a_terminal"]
    outcome = handle_presence(world.event_deps, lifecycle("connected", world.clock.now_ms(), client_id="cloud-1"))
    assert outcome == "ignored:not_a_terminal"
    assert METRIC_COUNTS["EventsIgnored.reason=not_a_terminal"] == ignored + 1


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"clientId": TERMINAL_ID},
        {**lifecycle("connected", 1), "eventType": "subscribed"},
        {**lifecycle("connected", 1), "timestamp": "1"},
        {**lifecycle("connected", 1), "timestamp": True},
        {**lifecycle("connected", 1), "sessionIdentifier": None},
        {**lifecycle("connected", 1), "clientId": ["x"]},
    ],
)
def test_malformed_lifecycle_events_are_refused_counted_and_change_nothing(world: World, event: Any) -> None:
    before = copy.deepcopy(world.terminals.items)
    refused = METRIC_COUNTS["EventsRefused.reason=bad_presence"]
    assert handle_presence(world.event_deps, event) == "refused:bad_presence"
    assert METRIC_COUNTS["EventsRefused.reason=bad_presence"] == refused + 1
    assert world.terminals.items == before


def test_each_recorded_presence_is_logged_with_the_terminal_its_state_and_session(world: World) -> None:
    now = world.clock.now_ms()
    with captured_logs() as logged:
        handle_presence(world.event_deps, lifecycle("connected", now, "s-1"))
        handle_presence(world.event_deps, lifecycle("disconnected", now + 10, "s-1"))
    assert logged.lines("terminal presence") == [
        {"level": "info", "terminal_id": TERMINAL_ID, "online": True, "session": "s-1"},
        {"level": "info", "terminal_id": TERMINAL_ID, "online": False, "session": "s-1"},
    ]
    terminal = world.terminals.items[TERMINAL_ID]
    assert terminal.last_seen_at == protocol.timestamp_from_ms(now + 10)


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        ({"clientId": TERMINAL_ID}, "lifecycle event without a valid eventType"),
        ({**lifecycle("connected", 1), "timestamp": True}, "lifecycle event without a valid timestamp"),
        ({**lifecycle("connected", 1), "eventType": "subscribed"}, "eventType 'subscribed'"),
    ],
)
def test_a_refused_lifecycle_event_is_logged_with_what_is_wrong(world: World, event: Any, detail: str) -> None:
    with captured_logs() as logged:
        handle_presence(world.event_deps, event)
    assert logged.one("terminal message refused") == {
        "level": "warning",
        "reason": "bad_presence",
        "detail": detail,
        "topic": "$aws/events/presence",
    }


def test_a_status_signed_ahead_of_its_arrival_is_ordered_by_its_arrival(world: World) -> None:
    now = world.clock.now_ms()
    assert deliver_status(world, signed_status("offline", now + 60_000), received_at_ms=now) == "offline"
    # a broker fact just after the arrival outranks the status, whatever its signed time said
    assert handle_presence(world.event_deps, lifecycle("connected", now + 1, "s-2")) == "connected"
    assert online(world)


def test_a_lifecycle_event_that_is_not_an_object_is_refused(world: World) -> None:
    assert handle_presence(world.event_deps, ["connected"]) == "refused:bad_presence"  # type: ignore[arg-type]


def test_a_reconnect_during_a_payment_leaves_it_running(world: World) -> None:
    request_id = start_payment(world)
    assert handle_presence(world.event_deps, lifecycle("connected", world.clock.now_ms(), "s-2")) == "connected"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.ACKNOWLEDGED
    assert world.terminals.items[TERMINAL_ID].busy_request_id == request_id


def test_the_brokers_disconnect_during_a_payment_fails_it_as_disconnected(world: World) -> None:
    request_id = start_payment(world)
    assert handle_presence(world.event_deps, lifecycle("disconnected", world.clock.now_ms(), "s-1")) == "disconnected"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and (dispatch.state, dispatch.reason) == (DispatchState.FAILED, "terminal_disconnected")

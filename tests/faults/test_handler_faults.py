"""An event handler whose storage fails raises out of the Lambda (so Lambda retries the event, then
parks it in the terminal-messages dead-letter queue with its error), and the retried event converges:
the same answer, counted once."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

import app as app_module
from chalicelib import bootstrap, protocol
from chalicelib.config import Settings
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments.domain import DispatchState, Terminal
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import request_payment
from tests.conftest import MERCHANT, PASSPHRASE, TERMINAL_ID, example
from tests.fakes import RecordingChannel
from tests.faults.conftest import DynamoFaults


@pytest.fixture
def components(aws: Settings, faults: DynamoFaults) -> Iterator[bootstrap.Components]:
    built = bootstrap.build(replace(aws, ack_timeout_ms=10_000))
    built.channel = RecordingChannel()
    built.terminals.put(Terminal(TERMINAL_ID, MERCHANT, PASSPHRASE, online=True))
    bootstrap.install(built)
    yield built
    bootstrap.install(None)


def rule_event(kind: str, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    envelope = protocol.make_envelope(kind, request_id, TERMINAL_ID, body, PASSPHRASE)
    return {
        "topic": protocol.topic_for(TERMINAL_ID, "events"),
        "payload": base64.b64encode(protocol.encode(envelope)).decode(),
        "received_at": time.time_ns() // 1_000_000,
    }


def started(components: bootstrap.Components) -> str:
    body = example()
    deps = components.payment_deps()
    assert request_payment(deps, MERCHANT, parse_order_request(body), body, respond_async=True).status == 202
    channel = components.channel
    assert isinstance(channel, RecordingChannel)
    return str(channel.published[-1][1]["request_id"])


@pytest.mark.parametrize("error", ["throttling", "5xx", "timeout"])
def test_event_handler_raises_on_a_storage_error_and_the_retry_converges(
    components: bootstrap.Components, faults: DynamoFaults, aws: Settings, error: str
) -> None:
    request_id = started(components)
    event = rule_event("result", request_id, {"payment_status": "Success", "transaction_reference": "TX-1"})
    succeeded = METRIC_COUNTS["PaymentsSucceeded"]
    faults.fail("UpdateItem", aws.payments_table, error)
    with pytest.raises(Exception) as caught:
        app_module.terminal_events_handler(event, None)
    # raised, not swallowed: Lambda retries it, then parks it with this error as its reason
    assert type(caught.value).__name__ in ("ClientError", "ReadTimeoutError")
    assert app_module.terminal_events_handler(event, None) == {"outcome": "succeeded"}
    assert app_module.terminal_events_handler(event, None) == {"outcome": "ignored:already_final"}
    assert METRIC_COUNTS["PaymentsSucceeded"] == succeeded + 1
    dispatch = components.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.SUCCEEDED
    terminal = components.terminals.get(TERMINAL_ID)
    assert terminal is not None and terminal.busy_request_id is None


def test_presence_handler_raises_on_a_storage_error_and_the_retry_converges(
    components: bootstrap.Components, faults: DynamoFaults, aws: Settings
) -> None:
    request_id = started(components)
    now = time.time_ns() // 1_000_000
    connected = {"clientId": TERMINAL_ID, "timestamp": now - 1_000, "eventType": "connected", "sessionIdentifier": "a"}
    dropped = {**connected, "timestamp": now, "eventType": "disconnected"}
    assert app_module.terminal_status_handler(connected, None) == {"outcome": "connected"}
    faults.fail("UpdateItem", aws.terminals_table, "5xx")
    with pytest.raises(Exception, match="injected 500"):
        app_module.terminal_status_handler(dropped, None)
    assert app_module.terminal_status_handler(dropped, None) == {"outcome": "disconnected"}
    dispatch = components.payments.get_dispatch(request_id)
    assert dispatch is not None and (dispatch.state, dispatch.reason) == (DispatchState.FAILED, "terminal_disconnected")
    terminal = components.terminals.get(TERMINAL_ID)
    assert terminal is not None and (terminal.online, terminal.busy_request_id) == (False, None)


def test_a_refused_message_is_answered_not_raised(components: bootstrap.Components) -> None:
    request_id = started(components)
    forged = rule_event("result", request_id, {"payment_status": "Success"})
    envelope = protocol.decode(base64.b64decode(forged["payload"]))
    envelope["sig"] = "0" * 64
    forged["payload"] = base64.b64encode(protocol.encode(envelope)).decode()
    assert app_module.terminal_events_handler(forged, None) == {"outcome": "refused:bad_signature"}
    assert app_module.terminal_status_handler({"eventType": 7}, None) == {"outcome": "refused:bad_presence"}

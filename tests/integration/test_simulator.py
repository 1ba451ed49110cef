"""The terminal simulator against a scripted cloud speaking docs/terminal-protocol.md through a real broker."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from chalicelib.protocol import (
    decode,
    encode,
    format_timestamp,
    make_envelope,
    new_request_id,
    parse_topic,
    topic_for,
    verify_signature,
)
from local.broker import RunningBroker, start_broker
from local.simulated_payment import ONLINE_FLOOR_MINOR
from local.simulator import SimulatedTerminal, TerminalConnectError, TerminalSpec, run_terminals

TIMEOUT_S = 10.0
PASSPHRASE = "s3cret-passphrase"
TERMINAL_ID = "PAX-1850320198"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ScriptedCloud:
    """The cloud side: sends signed requests, records every status and event, checks signatures."""

    def __init__(self, broker: RunningBroker) -> None:
        self.envelopes: list[tuple[str, str, dict[str, Any]]] = []  # (terminal_id, kind, envelope)
        self._arrived = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scripted-cloud")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(topic_for("+", "status"), 1), (topic_for("+", "events"), 1)])
        assert self._subscribed.wait(TIMEOUT_S)

    def pay(self, terminal_id: str = TERMINAL_ID, passphrase: str = PASSPHRASE, **body: Any) -> str:
        request_id = new_request_id()
        request = {
            "order_id": f"order-{request_id[:8]}",
            "transaction_type": "Debit",
            "amount": 1250,
            "currency": "EUR",
            "force_authorization": False,
            "description": "POS payment",
            "expires_at": format_timestamp(datetime.now(UTC) + timedelta(seconds=120)),
            **body,
        }
        self.send(make_envelope("payment_request", request_id, terminal_id, request, passphrase))
        return request_id

    def cancel(self, target_request_id: str, order_id: str, terminal_id: str = TERMINAL_ID) -> None:
        body = {"order_id": order_id, "target_request_id": target_request_id}
        self.send(make_envelope("cancel_request", new_request_id(), terminal_id, body, PASSPHRASE))

    def send(self, envelope: dict[str, Any], to: str | None = None) -> None:
        terminal_id = to or envelope["terminal_id"]
        self.client.publish(topic_for(terminal_id, "requests"), encode(envelope), qos=1)

    def send_raw(self, payload: bytes, terminal_id: str = TERMINAL_ID) -> None:
        self.client.publish(topic_for(terminal_id, "requests"), payload, qos=1)

    def event(self, request_id: str, message_type: str) -> dict[str, Any]:
        return self._wait(
            lambda tid, kind, env: kind == "events" and env["request_id"] == request_id and env["type"] == message_type
        )

    def status(self, terminal_id: str, state: str, after: int = 0) -> dict[str, Any]:
        return self._wait(
            lambda tid, kind, env: tid == terminal_id and kind == "status" and env["body"] == {"state": state}, after
        )

    def events_for(self, request_id: str) -> list[dict[str, Any]]:
        with self._arrived:
            return [env for _, kind, env in self.envelopes if kind == "events" and env["request_id"] == request_id]

    def received_count(self) -> int:
        with self._arrived:
            return len(self.envelopes)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _wait(self, match: Callable[[str, str, dict[str, Any]], bool], after: int = 0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((env for tid, kind, env in self.envelopes[after:] if match(tid, kind, env)), None)

        with self._arrived:
            envelope = self._arrived.wait_for(found, TIMEOUT_S)
        assert envelope is not None, f"nothing matching within {TIMEOUT_S}s; got {self.envelopes}"
        return envelope

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        terminal_id, kind = parse_topic(message.topic)
        envelope = decode(message.payload)
        # Everything a terminal sends is signed with its passphrase and names itself.
        assert verify_signature(envelope, PASSPHRASE), envelope
        assert envelope["terminal_id"] == terminal_id
        with self._arrived:
            self.envelopes.append((terminal_id, kind, envelope))
            self._arrived.notify_all()


@pytest.fixture
def broker() -> Iterator[RunningBroker]:
    with start_broker() as running:
        yield running


@pytest.fixture
def cloud(broker: RunningBroker) -> Iterator[ScriptedCloud]:
    scripted = ScriptedCloud(broker)
    yield scripted
    scripted.stop()


@pytest.fixture
def terminal_factory(broker: RunningBroker) -> Iterator[Callable[..., SimulatedTerminal]]:
    started: list[SimulatedTerminal] = []

    def start(behavior: str, delay_ms: int | None = None, **kwargs: Any) -> SimulatedTerminal:
        terminal = SimulatedTerminal(TERMINAL_ID, PASSPHRASE, behavior, delay_ms, port=broker.port, **kwargs)
        terminal.start()
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.stop()


def _settle(terminal: SimulatedTerminal, cloud: ScriptedCloud) -> None:
    """Stop the terminal and wait for its offline status: whatever it sent before has arrived."""
    mark = cloud.received_count()
    terminal.stop()
    cloud.status(terminal.terminal_id, "offline", after=mark)


def test_approve_acks_then_sends_a_signed_success_result_with_card_details(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    results: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    terminal_factory("approve", 5, on_result=lambda *args: results.append(args))

    request_id = cloud.pay(amount=1250)
    ack = cloud.event(request_id, "ack")
    result = cloud.event(request_id, "result")

    assert ack["body"] == {}
    body = result["body"]
    assert body["payment_status"] == "Success"
    assert body["card_brand"] == "VISA"
    assert re.fullmatch(r"\d{6}\*+\d{4}", body["masked_pan"])
    assert re.fullmatch(r"\d{6}", body["authorization_code"])
    assert body["authorized_online"] is False
    receipt = base64.b64decode(body["receipt"]).decode("utf-8")
    assert "12.50 EUR" in receipt
    assert "APPROVED" in receipt
    assert cloud.events_for(request_id).index(ack) < cloud.events_for(request_id).index(result)
    # The hook runs after the publish returns, so the cloud may have the result first.
    deadline = time.monotonic() + 5
    while not results and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(tid, req["request_id"], res) for tid, req, res in results] == [(TERMINAL_ID, request_id, body)]


@pytest.mark.parametrize(
    ("amount", "force_authorization", "online"),
    [(ONLINE_FLOOR_MINOR - 1, False, False), (ONLINE_FLOOR_MINOR, False, True), (100, True, True)],
)
def test_authorized_online_follows_force_authorization_and_the_floor_limit(
    cloud: ScriptedCloud,
    terminal_factory: Callable[..., SimulatedTerminal],
    amount: int,
    force_authorization: bool,
    online: bool,
) -> None:
    terminal_factory("approve")

    request_id = cloud.pay(amount=amount, force_authorization=force_authorization)

    assert cloud.event(request_id, "result")["body"]["authorized_online"] is online


def test_each_success_carries_a_new_transaction_reference(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal_factory("approve")

    references = set()
    for _ in range(3):
        request_id = cloud.pay()
        references.add(cloud.event(request_id, "result")["body"]["transaction_reference"])

    assert len(references) == 3


def test_decline_acks_then_fails_with_declined(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal_factory("decline")

    request_id = cloud.pay(amount=99_999_999, transaction_type="Credit")

    assert cloud.event(request_id, "ack")["body"] == {}
    body = cloud.event(request_id, "result")["body"]
    assert body["payment_status"] == "Failed"
    assert body["error_code"] == "declined"
    assert body["error_data"] == {"reason": "insufficient_funds"}
    assert "REFUND 999999.99 EUR" in base64.b64decode(body["receipt"]).decode()


def test_no_ack_receives_the_request_and_never_answers(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("no_ack")

    request_id = cloud.pay()
    assert terminal.wait_for_counter("received.payment_request")
    _settle(terminal, cloud)

    assert cloud.events_for(request_id) == []


def test_ack_then_silent_acks_stays_busy_and_ignores_cancel(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("ack_then_silent")

    first = cloud.pay(order_id="order-silent")
    assert cloud.event(first, "ack")["body"] == {}
    second = cloud.pay()
    assert cloud.event(second, "ack")["body"] == {"accepted": False, "reason": "busy"}
    cloud.cancel(first, "order-silent")
    assert terminal.wait_for_counter("cancels_ignored")
    _settle(terminal, cloud)

    assert [env["type"] for env in cloud.events_for(first)] == ["ack"]


def test_ack_then_silent_takes_payments_again_once_the_open_one_expires(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("ack_then_silent")
    soon = format_timestamp(datetime.now(UTC) + timedelta(milliseconds=200))

    first = cloud.pay(expires_at=soon)
    cloud.event(first, "ack")
    assert terminal.wait_for_counter("payments_expired")
    second = cloud.pay()

    assert cloud.event(second, "ack")["body"] == {}
    assert [env["type"] for env in cloud.events_for(first)] == ["ack"]


def test_payment_still_open_at_its_expiry_fails_with_timeout(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal_factory("slow", 60_000)
    soon = format_timestamp(datetime.now(UTC) + timedelta(milliseconds=200))

    request_id = cloud.pay(expires_at=soon)
    result = cloud.event(request_id, "result")

    assert result["body"]["payment_status"] == "Failed"
    assert result["body"]["error_code"] == "timeout"


def test_slow_acks_at_once_and_results_after_its_delay(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal_factory("slow", 150)

    sent_at = time.monotonic()
    request_id = cloud.pay()
    ack = cloud.event(request_id, "ack")
    result = cloud.event(request_id, "result")

    assert ack["body"] == {}
    assert result["body"]["payment_status"] == "Success"
    # A lower bound only (noise can only make it longer): no result before the configured delay.
    assert time.monotonic() - sent_at >= 0.15


def test_busy_behavior_refuses_every_payment(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("busy")

    request_id = cloud.pay()
    assert cloud.event(request_id, "ack")["body"] == {"accepted": False, "reason": "busy"}
    _settle(terminal, cloud)

    assert len(cloud.events_for(request_id)) == 1


def test_offline_terminal_never_connects(broker: RunningBroker, cloud: ScriptedCloud) -> None:
    offline = SimulatedTerminal("PAX-OFFLINE1", PASSPHRASE, "offline", port=broker.port)
    online = SimulatedTerminal("PAX-ONLINE1", PASSPHRASE, "approve", port=broker.port)
    offline.start()
    online.start()

    request_id = cloud.pay(terminal_id="PAX-OFFLINE1")
    cloud.status("PAX-ONLINE1", "online")
    online.stop()
    offline.stop()
    cloud.status("PAX-ONLINE1", "offline")

    assert not offline.connected
    assert offline.counters == {}
    assert cloud.events_for(request_id) == []
    assert {tid for tid, _, _ in cloud.envelopes} == {"PAX-ONLINE1"}


def test_second_payment_while_one_is_in_progress_is_refused_busy(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal_factory("approve", 300)

    first = cloud.pay()
    cloud.event(first, "ack")
    second = cloud.pay()

    assert cloud.event(second, "ack")["body"] == {"accepted": False, "reason": "busy"}
    assert cloud.event(first, "result")["body"]["payment_status"] == "Success"
    assert [env["type"] for env in cloud.events_for(second)] == ["ack"]


def test_cancel_of_the_payment_in_progress_fails_it_as_cancelled(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("slow", 5_000)

    request_id = cloud.pay(order_id="order-to-cancel")
    cloud.event(request_id, "ack")
    cloud.cancel(request_id, "order-to-cancel")
    result = cloud.event(request_id, "result")
    _settle(terminal, cloud)

    assert result["body"]["payment_status"] == "Failed"
    assert result["body"]["error_code"] == "cancelled"
    assert [env["type"] for env in cloud.events_for(request_id)] == ["ack", "result"]
    assert terminal.counters["cancels_honoured"] == 1


def test_cancel_after_the_payment_completed_is_answered_with_the_real_result_again(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("approve")

    request_id = cloud.pay(order_id="order-done")
    paid = cloud.event(request_id, "result")
    cloud.cancel(request_id, "order-done")
    assert terminal.wait_for_counter("results_resent")
    _settle(terminal, cloud)

    results = [env for env in cloud.events_for(request_id) if env["type"] == "result"]
    assert len(results) == 2 and results[1]["body"] == paid["body"]
    assert results[1]["body"]["payment_status"] == "Success"
    assert terminal.counters.get("cancels_honoured", 0) == 0


def test_cancel_of_a_request_never_received_is_ignored(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("approve")

    cloud.cancel("never-dispatched", "order-other")
    assert terminal.wait_for_counter("cancels_ignored", 1)
    _settle(terminal, cloud)

    assert cloud.events_for("never-dispatched") == []


def _valid_request(**overrides: Any) -> dict[str, Any]:
    body = {
        "order_id": "order-bad",
        "transaction_type": "Debit",
        "amount": 100,
        "currency": "EUR",
        "force_authorization": False,
        "description": "POS payment",
        "expires_at": format_timestamp(datetime.now(UTC) + timedelta(seconds=120)),
    }
    return {"body": body, "type": "payment_request", "terminal_id": TERMINAL_ID, "passphrase": PASSPHRASE} | overrides


@pytest.mark.parametrize(
    ("reason", "overrides"),
    [
        ("bad_signature", {"passphrase": "not-the-passphrase"}),
        ("terminal_mismatch", {"terminal_id": "PAX-OTHER"}),
        ("unknown_type", {"type": "refund_request"}),
        ("bad_body", {"body": {"order_id": "order-bad", "amount": "12.50"}}),
    ],
)
def test_invalid_requests_are_counted_and_ignored(
    cloud: ScriptedCloud,
    terminal_factory: Callable[..., SimulatedTerminal],
    reason: str,
    overrides: dict[str, Any],
) -> None:
    terminal = terminal_factory("approve")
    spec = _valid_request(**overrides)
    bad = make_envelope(spec["type"], new_request_id(), spec["terminal_id"], spec["body"], spec["passphrase"])

    cloud.send(bad, to=TERMINAL_ID)
    cloud.send_raw(b"not json at all")
    assert terminal.wait_for_counter("rejected", 2)
    good = cloud.pay()
    cloud.event(good, "result")

    assert terminal.counters[f"rejected.{reason}"] == 1
    assert terminal.counters["rejected.malformed"] == 1
    assert cloud.events_for(bad["request_id"]) == []


def test_a_redelivered_request_is_answered_once(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("approve")
    spec = _valid_request()
    request = make_envelope("payment_request", new_request_id(), TERMINAL_ID, spec["body"], PASSPHRASE)

    cloud.send(request)
    cloud.send(request)
    assert terminal.wait_for_counter("duplicates")
    _settle(terminal, cloud)

    assert [env["type"] for env in cloud.events_for(request["request_id"])] == ["ack", "result"]


def test_dropped_connection_publishes_the_signed_offline_will_then_reconnects(
    cloud: ScriptedCloud, terminal_factory: Callable[..., SimulatedTerminal]
) -> None:
    terminal = terminal_factory("approve")
    cloud.status(TERMINAL_ID, "online")
    mark = cloud.received_count()

    raw_socket = terminal._client.socket()
    assert isinstance(raw_socket, socket.socket)
    raw_socket.shutdown(socket.SHUT_RDWR)

    will = cloud.status(TERMINAL_ID, "offline", after=mark)
    cloud.status(TERMINAL_ID, "online", after=mark + 1)
    assert will["request_id"] != ""
    request_id = cloud.pay()
    assert cloud.event(request_id, "result")["body"]["payment_status"] == "Success"


def test_clean_stop_leaves_a_retained_offline_status(broker: RunningBroker, cloud: ScriptedCloud) -> None:
    terminal = SimulatedTerminal(TERMINAL_ID, PASSPHRASE, "approve", port=broker.port)
    terminal.start()
    cloud.status(TERMINAL_ID, "online")
    terminal.stop()
    cloud.status(TERMINAL_ID, "offline")

    late = ScriptedCloud(broker)
    retained = late.status(TERMINAL_ID, "offline")
    late.stop()

    assert retained["body"] == {"state": "offline"}


def test_terminal_that_cannot_reach_the_broker_fails_to_start_with_the_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    terminal = SimulatedTerminal(TERMINAL_ID, PASSPHRASE, "approve", port=closed_port)

    terminal.start(wait=False)
    with pytest.raises(TerminalConnectError, match=f"127.0.0.1:{closed_port}"):
        terminal.wait_connected(timeout=0.5)


def test_run_terminals_starts_a_fleet_and_stops_it_offline(broker: RunningBroker, cloud: ScriptedCloud) -> None:
    specs = [
        TerminalSpec(f"PAX-SIM{n:04d}", PASSPHRASE, behavior)
        for n, behavior in enumerate(["approve", "decline", "busy"], start=1)
    ]

    with run_terminals(specs, port=broker.port) as fleet:
        for spec in specs:
            cloud.status(spec.terminal_id, "online")
        declined = cloud.pay(terminal_id="PAX-SIM0002")
        assert cloud.event(declined, "result")["body"]["error_code"] == "declined"
        assert fleet["PAX-SIM0002"].counters["results_sent"] == 1

    for spec in specs:
        cloud.status(spec.terminal_id, "offline")


def test_command_line_runs_a_terminal_until_terminated(broker: RunningBroker, cloud: ScriptedCloud) -> None:
    command = [
        sys.executable,
        "-m",
        "local.simulator",
        "--port",
        str(broker.port),
        "--terminal",
        TERMINAL_ID,
        "--passphrase",
        PASSPHRASE,
        "--behavior",
        "approve",
        "--delay-ms",
        "10",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        cloud.status(TERMINAL_ID, "online")
        request_id = cloud.pay()
        assert cloud.event(request_id, "result")["body"]["payment_status"] == "Success"
        mark = cloud.received_count()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        process.kill()

    assert process.returncode == 0, stderr
    cloud.status(TERMINAL_ID, "offline", after=mark)
    assert '"event": "payment_result_sent"' in stderr


def test_command_line_rejects_tls_without_the_device_certificate() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "local.simulator", "--passphrase", "x", "--tls", "--ca", "root.pem"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )

    assert completed.returncode == 2
    assert "--tls needs --ca, --cert and --key" in completed.stderr

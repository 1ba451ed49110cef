"""The local stack driven from outside, through real HTTP and MQTT, as an ECR and a terminal would."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from chalicelib import jsonutil, protocol
from chalicelib.observability import METRIC_COUNTS
from local.notify_sink import NotificationSink
from local.stack import RunningStack, StackConfig, start_stack

pytestmark = pytest.mark.e2e

LOGIN, PASSWORD = "e2e", "e2e-password-2026"
NOTIFY_PASSPHRASE = "e2e-notify-passphrase"
SEED = {
    "ipn_secret": "e2e-ipn-secret",
    "merchants": [
        {
            "merchant_id": "M1",
            "login": LOGIN,
            "password": PASSWORD,
            "notify_passphrase": NOTIFY_PASSPHRASE,
            "notify_url": None,
        },
        {"merchant_id": "M2", "login": "other", "password": "other-password-2026", "notify_passphrase": "np2"},
    ],
    "terminals": [
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "APPROVE1",
            "passphrase": "p-approve",
            "simulator": {"behavior": "approve", "delay_ms": 0},
        },
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "DECLINE1",
            "passphrase": "p-decline",
            "simulator": {"behavior": "decline", "delay_ms": 0},
        },
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "NOACK1",
            "passphrase": "p-noack",
            "simulator": {"behavior": "no_ack"},
        },
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "SILENT1",
            "passphrase": "p-silent",
            "simulator": {"behavior": "ack_then_silent"},
        },
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "OFFLINE1",
            "passphrase": "p-offline",
            "simulator": {"behavior": "offline"},
        },
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "SLOW1",
            "passphrase": "p-slow",
            "simulator": {"behavior": "slow", "delay_ms": 1500},
        },
        {
            "merchant_id": "M1",
            "manufacturer": "INGENICO",
            "serial_number": "OUTSIDE1",
            "passphrase": "p-outside",
            "simulator": None,
        },
        {
            "merchant_id": "M2",
            "manufacturer": "PAX",
            "serial_number": "FOREIGN1",
            "passphrase": "p-foreign",
            "simulator": {"behavior": "approve", "delay_ms": 0},
        },
    ],
}


@pytest.fixture(scope="module")
def sink() -> Iterator[NotificationSink]:
    receiver = NotificationSink().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sink: NotificationSink) -> Iterator[RunningStack]:
    seed_path = tmp_path_factory.mktemp("seed") / "seed.json"
    seed = json.loads(json.dumps(SEED))
    seed["merchants"][0]["notify_url"] = sink.url
    seed_path.write_text(json.dumps(seed))
    running = start_stack(
        StackConfig(
            api_port=0,
            mqtt_port=0,
            seed_path=seed_path,
            environment={"ACK_TIMEOUT_MS": "700", "PAYMENT_DEADLINE_MS": "2500"},
        )
    )
    yield running
    assert running.crash_report() is None
    running.stop()


def order(serial: str, manufacturer: str = "PAX", amount: int = 1250, order_id: str | None = None) -> dict[str, Any]:
    return {
        "order": {"order_id": order_id or f"E2E-{time.time_ns()}", "price": {"amount": amount, "currency": "EUR"}},
        "pos_technical_info": {
            "device_information": {"serial_number": serial, "manufacturer": manufacturer},
            "terminal_transaction_display": {"protocol": "AppNepting"},
        },
    }


def call(
    stack: RunningStack,
    method: str,
    path: str,
    body: Any = None,
    auth: tuple[str, str] | None = (LOGIN, PASSWORD),
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if auth:
        all_headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(stack.api_url + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


def test_approving_terminal_answers_success_with_the_transaction(stack: RunningStack) -> None:
    status, _, body = call(stack, "POST", "/v1/connector/order", order("APPROVE1"))
    assert status == 200, body
    assert body["paymentStatus"] == "Success"
    assert body["transaction"]["masked_pan"] == "497010******0001"
    assert base64.b64decode(body["receipt"]).decode().find("12.50") >= 0


def test_declining_terminal_answers_200_failed(stack: RunningStack) -> None:
    status, _, body = call(stack, "POST", "/v1/connector/order", order("DECLINE1"))
    assert status == 200
    assert body["paymentStatus"] == "Failed" and body["errorCode"] == "declined"


def test_terminal_that_never_acknowledges_is_a_504(stack: RunningStack) -> None:
    status, _, body = call(stack, "POST", "/v1/connector/order", order("NOACK1"))
    assert status == 504 and body["error"]["code"] == "terminal.ack_timeout"


def test_silent_terminal_is_a_504_result_timeout_and_the_order_stays_tracked(stack: RunningStack) -> None:
    request = order("SILENT1")
    status, _, body = call(stack, "POST", "/v1/connector/order", request)
    assert status == 504 and body["error"]["code"] == "terminal.result_timeout"
    status, _, tracked = call(stack, "GET", f"/v1/connector/order/{request['order']['order_id']}")
    assert status == 200 and tracked["state"] == "timed_out" and tracked["reason"] == "result_timeout"


def test_offline_terminal_is_a_502_and_nothing_is_sent(stack: RunningStack) -> None:
    status, _, body = call(stack, "POST", "/v1/connector/order", order("OFFLINE1"))
    assert status == 502 and body["error"]["code"] == "terminal.offline"
    _, _, tracked = call(stack, "GET", "/v1/terminals")
    offline = [t for t in tracked["terminals"] if t["terminal_id"] == "PAX-OFFLINE1"]
    assert offline == [
        {"terminal_id": "PAX-OFFLINE1", "online": False, "last_seen_at": None, "busy": False, "cloud_api_enabled": True}
    ]


def test_second_payment_on_a_busy_terminal_is_200_failed_terminal_busy(stack: RunningStack) -> None:
    results: list[tuple[int, dict[str, Any]]] = []
    first = threading.Thread(
        target=lambda: results.append(call(stack, "POST", "/v1/connector/order", order("SLOW1"))[::2])
    )
    first.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until the first payment holds the terminal
        _, _, terminals = call(stack, "GET", "/v1/terminals")
        if any(t["terminal_id"] == "PAX-SLOW1" and t["busy"] for t in terminals["terminals"]):
            break
        time.sleep(0.02)
    status, _, body = call(stack, "POST", "/v1/connector/order", order("SLOW1"))
    first.join(timeout=10)
    assert status == 200 and body["errorCode"] == "terminal_busy"
    assert results and results[0][0] == 200 and results[0][1]["paymentStatus"] == "Success"


def test_same_order_again_after_success_is_replayed_not_paid_twice(stack: RunningStack) -> None:
    request = order("APPROVE1")
    _, _, first = call(stack, "POST", "/v1/connector/order", request)
    status, headers, again = call(stack, "POST", "/v1/connector/order", request)
    assert status == 200 and headers.get("Idempotent-Replayed") == "true"
    assert again == first
    fleet_terminal = stack.fleet["PAX-APPROVE1"]
    assert fleet_terminal.counters.get("duplicates", 0) == 0


def test_another_merchants_terminal_is_unknown_and_bad_credentials_are_401(stack: RunningStack) -> None:
    assert call(stack, "POST", "/v1/connector/order", order("FOREIGN1"))[0] == 404
    assert call(stack, "POST", "/v1/connector/order", order("APPROVE1"), auth=(LOGIN, "wrong-password"))[0] == 401
    assert call(stack, "GET", "/v1/unknown/route")[0] == 404


class OutsideTerminal:
    """A terminal app written against docs/terminal-protocol.md alone, connected from outside the stack."""

    def __init__(self, port: int, terminal_id: str, passphrase: str) -> None:
        self.terminal_id, self.passphrase = terminal_id, passphrase
        self.received: list[dict[str, Any]] = []
        self.topics: set[str] = set()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=terminal_id)
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(protocol.topic_for(terminal_id, "requests"), qos=1)
        assert self.subscribed.wait(5)
        self.send("status", "status-" + protocol.new_request_id(), {"state": "online"}, retain=True).wait_for_publish(5)

    def send(self, kind: str, request_id: str, body: dict[str, Any], retain: bool = False) -> mqtt.MQTTMessageInfo:
        # Never wait for the PUBACK here: this runs in paho's network thread, which must read it.
        envelope = protocol.make_envelope(kind, request_id, self.terminal_id, body, self.passphrase)
        topic = protocol.topic_for(self.terminal_id, "status" if kind == "status" else "events")
        return self.client.publish(topic, protocol.encode(envelope), qos=1, retain=retain)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.topics.add(message.topic)
        request = json.loads(message.payload)
        assert protocol.verify_signature(request, self.passphrase)
        self.received.append(request)
        if request["type"] == "payment_request":
            self.send("ack", request["request_id"], {})
            self.send(
                "result",
                request["request_id"],
                {
                    "payment_status": "Success",
                    "transaction_reference": "OUT-1",
                    "authorization_code": "X1",
                    "card_brand": "MASTERCARD",
                    "masked_pan": "541333******4111",
                    "authorized_online": False,
                },
            )

    def stop(self) -> None:
        self.send("status", "status-" + protocol.new_request_id(), {"state": "offline"}, retain=True).wait_for_publish(
            5
        )
        self.client.disconnect()
        self.client.loop_stop()


def test_outside_terminal_and_simulator_pay_side_by_side(stack: RunningStack) -> None:
    outside = OutsideTerminal(stack.mqtt_port, "INGENICO-OUTSIDE1", "p-outside")
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            _, _, terminals = call(stack, "GET", "/v1/terminals")
            if any(t["terminal_id"] == "INGENICO-OUTSIDE1" and t["online"] for t in terminals["terminals"]):
                break
            time.sleep(0.02)
        replies: dict[str, Any] = {}
        threads = [
            threading.Thread(
                target=lambda: replies.__setitem__(
                    "outside", call(stack, "POST", "/v1/connector/order", order("OUTSIDE1", manufacturer="INGENICO"))
                )
            ),
            threading.Thread(
                target=lambda: replies.__setitem__(
                    "simulated", call(stack, "POST", "/v1/connector/order", order("APPROVE1"))
                )
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=15)
        assert replies["outside"][2]["paymentStatus"] == "Success"
        assert replies["outside"][2]["transaction"]["card_brand"] == "MASTERCARD"
        assert replies["simulated"][2]["paymentStatus"] == "Success"
        # the outside terminal received its own requests topic only (no other terminal's retained status)
        assert outside.topics == {protocol.topic_for("INGENICO-OUTSIDE1", "requests")}
        # the simulated gateway reports the outside terminal's payment too: it is a Console transaction
        transaction = wait_for(lambda: _transaction(stack, "OUT-1"))
        assert (transaction["terminal_id"], transaction["status_code"]) == ("INGENICO-OUTSIDE1", 118)
    finally:
        outside.stop()


def _transaction(stack: RunningStack, reference: str) -> dict[str, Any] | None:
    status, _, found = call(stack, "GET", f"/v1/transactions/{reference}")
    return found if status == 200 else None


def test_a_declined_payment_becomes_a_refused_transaction(stack: RunningStack) -> None:
    request = order("DECLINE1", amount=777)
    order_id = request["order"]["order_id"]
    assert call(stack, "POST", "/v1/connector/order", request)[2]["errorCode"] == "declined"

    def refused() -> list[dict[str, Any]]:
        _, _, page = call(stack, "GET", f"/v1/transactions?order_id={order_id}")
        return page.get("transactions", [])

    (transaction,) = wait_for(refused)
    assert (transaction["status_code"], transaction["status"]) == (113, "Refused")
    assert (transaction["terminal_id"], transaction["amount_minor"]) == ("PAX-DECLINE1", 777)


def test_forged_result_from_outside_cannot_change_a_finished_payment(stack: RunningStack) -> None:
    request = order("APPROVE1")
    _, _, paid = call(stack, "POST", "/v1/connector/order", request)
    _, _, tracked = call(stack, "GET", f"/v1/connector/order/{request['order']['order_id']}")
    forger = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="forger")
    forger.connect("127.0.0.1", stack.mqtt_port)
    forger.loop_start()
    forged = protocol.make_envelope(
        "result", tracked["request_id"], "PAX-APPROVE1", {"payment_status": "Failed"}, "not-the-passphrase"
    )
    refused_key = "EventsRefused.reason=bad_signature"
    refused_before = METRIC_COUNTS[refused_key]
    forger.publish(protocol.topic_for("PAX-APPROVE1", "events"), protocol.encode(forged), qos=1).wait_for_publish(5)
    forger.disconnect()
    forger.loop_stop()
    # the handler saw the forgery and refused it (not merely: it has not arrived yet)
    wait_for(lambda: METRIC_COUNTS[refused_key] > refused_before)
    _, _, after = call(stack, "GET", f"/v1/connector/order/{request['order']['order_id']}")
    assert after["state"] == "succeeded" and after["payment"] == paid


def test_seed_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    from local.seed import SeedError, load_seed

    bad = dict(SEED, terminals=[dict(SEED["terminals"][0], simulator={"behavior": "dance"})])
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(SeedError) as caught:
        load_seed(path)
    assert str(path) in str(caught.value) and "terminals.0.simulator.behavior" in str(caught.value)


def wait_for(predicate: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_paid_order_becomes_a_captured_transaction_and_the_merchant_is_notified(
    stack: RunningStack, sink: NotificationSink
) -> None:
    import hashlib

    request = jsonutil.loads((Path(__file__).parents[2] / "examples" / "order-full.json").read_text())
    request["order"]["order_id"] = f"E2E-FULL-{time.time_ns()}"
    request["pos_technical_info"]["device_information"] = {"serial_number": "APPROVE1", "manufacturer": "PAX"}
    request["pos_technical_info"].pop("notify_url")
    order_id = request["order"]["order_id"]
    status, _, paid = call(stack, "POST", "/v1/connector/order", json.loads(jsonutil.dumps(request)))
    assert status == 200 and paid["paymentStatus"] == "Success"
    reference = paid["transaction"]["reference"]

    def captured() -> dict[str, Any] | None:
        code, _, found = call(stack, "GET", f"/v1/transactions/{reference}")
        return found if code == 200 and found.get("basket") and found.get("customer") else None

    transaction = wait_for(captured)
    assert transaction["status_code"] == 118 and transaction["status"] == "Captured"
    assert transaction["order_id"] == order_id and transaction["amount_minor"] == 899
    assert transaction["basket"][0]["unit_price"] == 8.99
    assert transaction["customer"]["last_name"] == "Doe"
    assert transaction["custom_data"]["internal_reference"] == "ORD_987465"
    assert call(stack, "GET", f"/v1/transactions/{reference}", auth=("other", "other-password-2026"))[0] == 404

    notification = wait_for(
        lambda: next((n for n in sink.received if n.form.get("transaction_reference") == reference), None)
    )
    assert notification.form["state"] == "completed" and notification.form["order[id]"] == order_id
    assert notification.form["order[amount]"] == "8.99"
    expected = hashlib.sha256(notification.body + NOTIFY_PASSPHRASE.encode()).hexdigest()
    assert notification.signature == expected


def test_the_same_order_twice_while_in_flight_is_paid_once_and_both_get_the_result(stack: RunningStack) -> None:
    request = order("SLOW1")
    received_before = stack.fleet["PAX-SLOW1"].counters.get("received", 0)
    replies: list[tuple[int, dict[str, str], dict[str, Any]]] = []
    threads = [
        threading.Thread(target=lambda: replies.append(call(stack, "POST", "/v1/connector/order", request)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.2)  # the second one arrives while the first is in flight
    for thread in threads:
        thread.join(timeout=15)
    assert [status for status, _, _ in replies] == [200, 200]
    assert replies[0][2] == replies[1][2] and replies[0][2]["paymentStatus"] == "Success"
    assert stack.fleet["PAX-SLOW1"].counters.get("received", 0) - received_before == 1


def test_after_a_decline_the_same_order_is_a_new_attempt_sent_to_the_terminal(stack: RunningStack) -> None:
    request = order("DECLINE1")
    received_before = stack.fleet["PAX-DECLINE1"].counters.get("received", 0)
    first = call(stack, "POST", "/v1/connector/order", request)[2]
    second = call(stack, "POST", "/v1/connector/order", request)[2]
    assert (first["errorCode"], first["attempt"]) == ("declined", 1)
    assert (second["errorCode"], second["attempt"]) == ("declined", 2)
    assert stack.fleet["PAX-DECLINE1"].counters.get("received", 0) - received_before == 2

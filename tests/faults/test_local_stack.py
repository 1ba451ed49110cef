"""The local stack over real MQTT with the simulator: the broker restarting (terminals and the cloud
reconnect, presence follows the broker's lifecycle facts, a payment caught mid-way ends truthfully
and the next one works), and a cancel confirmed by the terminal."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from local.stack import RunningStack, StackConfig, start_stack

pytestmark = pytest.mark.e2e

LOGIN, PASSWORD = "faults", "faults-password-2026"
SEED = {
    "ipn_secret": "faults-ipn-secret",
    "merchants": [{"merchant_id": "M1", "login": LOGIN, "password": PASSWORD, "notify_passphrase": "np"}],
    "terminals": [
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "SLOW9",
            "passphrase": "p-slow",
            "simulator": {"behavior": "slow", "delay_ms": 2500},
        },
    ],
}
TERMINAL = "PAX-SLOW9"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    seed_path = tmp_path_factory.mktemp("seed") / "seed.json"
    seed_path.write_text(json.dumps(SEED))
    running = start_stack(
        StackConfig(
            api_port=0,
            mqtt_port=0,
            seed_path=seed_path,
            environment={"ACK_TIMEOUT_MS": "2000", "PAYMENT_DEADLINE_MS": "15000", "POLL_MAX_MS": "100"},
        )
    )
    yield running
    assert running.crash_report() is None
    running.stop()


def call(stack: RunningStack, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, dict[str, Any]]:
    auth = base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        stack.api_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json", "Authorization": f"Basic {auth}", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def order(order_id: str) -> dict[str, Any]:
    return {
        "order": {"order_id": order_id, "price": {"amount": 700, "currency": "EUR"}},
        "pos_technical_info": {
            "device_information": {"serial_number": "SLOW9", "manufacturer": "PAX"},
            "terminal_transaction_display": {"protocol": "AppNepting"},
        },
    }


def eventually(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def terminal(stack: RunningStack) -> dict[str, Any]:
    _, body = call(stack, "GET", "/v1/terminals")
    (found,) = [t for t in body["terminals"] if t["terminal_id"] == TERMINAL]
    return dict(found)


def state_of(stack: RunningStack, order_id: str) -> dict[str, Any]:
    return call(stack, "GET", f"/v1/connector/order/{order_id}")[1]


def test_the_broker_runs_in_a_process_of_its_own(stack: RunningStack) -> None:
    command = Path(f"/proc/{stack.broker.pid}/cmdline").read_bytes().split(b"\0")

    assert stack.broker.pid != os.getpid()
    assert command[1:3] == [b"-m", b"local.broker"]
    assert stack.broker.port == stack.mqtt_port


def test_broker_restart_mid_payment_ends_it_truthfully_and_payments_resume(stack: RunningStack) -> None:
    order_id = f"RESTART-{time.time_ns()}"
    status, _ = call(stack, "POST", "/v1/connector/order", order(order_id), Prefer="respond-async")
    assert status == 202
    eventually(lambda: state_of(stack, order_id)["state"] == "acknowledged")

    stack.broker.restart()

    # The broker reported the drop: the payment in flight failed as disconnected, the terminal offline.
    dropped = eventually(lambda: (s := state_of(stack, order_id))["state"] != "acknowledged" and s)
    assert (dropped["state"], dropped["reason"]) == ("failed", "terminal_disconnected")
    # The terminal reconnects on its own; the customer's payment it was showing completes and its
    # result, delivered after the reconnect, is kept as the order's truth.
    eventually(lambda: terminal(stack)["online"])
    final = eventually(lambda: (s := state_of(stack, order_id))["state"] == "succeeded" and s)
    assert final["late_result"] is True and final["payment"]["paymentStatus"] == "Success"
    assert terminal(stack)["busy"] is False

    # The cloud's publisher reconnected too: the next payment goes through end to end.
    status, body = call(stack, "POST", "/v1/connector/order", order(f"AFTER-{time.time_ns()}"))
    assert status == 200 and body["paymentStatus"] == "Success", body
    assert stack.crash_report() is None


def test_cancel_through_real_mqtt_is_confirmed_by_the_terminal(stack: RunningStack) -> None:
    order_id = f"CANCEL-{time.time_ns()}"
    replies: list[tuple[int, dict[str, Any]]] = []
    waiting = threading.Thread(
        target=lambda: replies.append(call(stack, "POST", "/v1/connector/order", order(order_id)))
    )
    waiting.start()
    eventually(lambda: state_of(stack, order_id).get("state") == "acknowledged")
    cancel = order(order_id)
    cancel["order"]["transaction_type"] = "Cancel"
    status, body = call(stack, "POST", "/v1/connector/order", cancel)
    waiting.join(timeout=20)
    assert status == 200 and body["paymentStatus"] == "Success", body
    # the waiting request answers from the terminal's result, not from the cancel
    ((paid_status, paid),) = replies
    assert paid_status == 200 and (paid["paymentStatus"], paid["errorCode"]) == ("Failed", "cancelled")
    assert state_of(stack, order_id)["state"] == "cancelled"
    # once it is over, a cancel has nothing to cancel
    status, again = call(stack, "POST", "/v1/connector/order", cancel)
    assert (again["errorCode"], again["errorData"]) == ("not_cancellable", {"state": "cancelled"})
    eventually(lambda: not terminal(stack)["busy"])

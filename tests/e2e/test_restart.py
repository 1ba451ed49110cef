"""`kill -9` the local stack in the middle of payments, start it again on the same data directory:
every order resolves (its result kept, or timed out by its deadline), the terminals are usable
again, and transactions and queued messages are still there."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from chalicelib import protocol
from chalicelib.adapters.sqlite.store import SqliteStore

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
LOGIN, PASSWORD = "restart", "restart-password-2026"
# The claim outlives the ack deadline by long enough to see it kept across the restart.
ENV = {"ACK_TIMEOUT_MS": "3000", "PAYMENT_DEADLINE_MS": "12000", "ASYNC_PAYMENT_DEADLINE_MS": "12000"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_seed(path: Path) -> None:
    terminal = {"merchant_id": "M1", "manufacturer": "PAX"}
    seed = {
        "ipn_secret": "restart-ipn-secret",
        "merchants": [
            {
                "merchant_id": "M1",
                "login": LOGIN,
                "password": PASSWORD,
                "notify_passphrase": "np",
                # Nobody listens: every notification fails and waits on the queue for its retry.
                "notify_url": f"http://127.0.0.1:{closed_port()}/notify",
            }
        ],
        "terminals": [
            {**terminal, "serial_number": "APPROVE1", "passphrase": "p-approve", "simulator": {"behavior": "approve"}},
            {**terminal, "serial_number": "OUT1", "passphrase": "p-out1", "simulator": None},
            {**terminal, "serial_number": "OUT2", "passphrase": "p-out2", "simulator": None},
        ],
    }
    path.write_text(json.dumps(seed))


class Stack:
    """``python -m local.stack`` as a process, with the API and broker ports it printed."""

    def __init__(self, data_dir: Path, seed: Path) -> None:
        env = {
            **os.environ,
            **ENV,
            "API_PORT": "0",
            "MQTT_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            "DATA_DIR": str(data_dir),
            "SEED_FILE": str(seed),
            "STORE": "sqlite",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local.stack"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        banner = self._read_until_ready()
        self.api_url = re.search(r"API +(http://\S+)", banner).group(1)  # type: ignore[union-attr]
        self.mqtt_port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        assert str(data_dir) in banner

    def _read_until_ready(self, timeout_s: float = 60) -> str:
        assert self.process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("(ready in"):
                # Keep draining stdout so the stack never blocks on a full pipe.
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return "".join(lines)
        self.process.kill()
        raise AssertionError("the stack did not get ready:\n" + "".join(lines))

    def call(self, method: str, path: str, body: Any = None, timeout_s: float = 30) -> tuple[int, dict[str, Any]]:
        headers = {
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode(),
        }
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no clean-up of any kind
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Terminal:
    """A terminal outside the stack, played by the test: it answers only what it is told to."""

    def __init__(self, port: int, serial: str, passphrase: str, respond: bool = False) -> None:
        self.terminal_id, self.passphrase, self.respond = f"PAX-{serial}", passphrase, respond
        self.requests: list[dict[str, Any]] = []
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.terminal_id)
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(protocol.topic_for(self.terminal_id, "requests"), qos=1)
        assert subscribed.wait(5)
        self.send("status", "status-" + protocol.new_request_id(), {"state": "online"}).wait_for_publish(5)

    def send(self, kind: str, request_id: str, body: dict[str, Any]) -> mqtt.MQTTMessageInfo:
        envelope = protocol.make_envelope(kind, request_id, self.terminal_id, body, self.passphrase)
        topic = protocol.topic_for(self.terminal_id, "status" if kind == "status" else "events")
        return self.client.publish(topic, protocol.encode(envelope), qos=1)

    def pay(self, request_id: str) -> mqtt.MQTTMessageInfo:
        return self.send(
            "result",
            request_id,
            {
                "payment_status": "Success",
                "transaction_reference": f"REF-{request_id[:8]}",
                "authorization_code": "A1",
                "card_brand": "VISA",
                "masked_pan": "497010******0001",
                "authorized_online": True,
            },
        )

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        request = json.loads(message.payload)
        if request.get("type") != "payment_request":
            return
        self.requests.append(request)
        if self.respond:
            self.send("ack", request["request_id"], {})
            self.pay(request["request_id"])

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def order(serial: str, order_id: str) -> dict[str, Any]:
    return {
        "order": {"order_id": order_id, "price": {"amount": 1250, "currency": "EUR"}},
        "pos_technical_info": {
            "device_information": {"serial_number": serial, "manufacturer": "PAX"},
            "terminal_transaction_display": {"protocol": "AppNepting"},
        },
    }


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout_s} s")


def in_background(action: Callable[[], Any]) -> None:
    """An ECR whose request dies with the stack: its outcome does not matter, the order's does."""

    def run() -> None:
        with contextlib.suppress(OSError):
            action()

    threading.Thread(target=run, daemon=True).start()


@pytest.fixture
def data(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    seed = tmp_path / "seed.json"
    write_seed(seed)
    yield tmp_path / "data", seed


def online(stack: Stack) -> set[str]:
    _, listed = stack.call("GET", "/v1/terminals")
    return {t["terminal_id"] for t in listed.get("terminals", []) if t.get("online")}


def queued_notifications(data_dir: Path) -> int:
    store = SqliteStore.open(data_dir)
    try:
        return store.notifications.depth()
    finally:
        store.close()


def test_kill_9_mid_payment_then_restart_resolves_every_order_and_loses_nothing(data: tuple[Path, Path]) -> None:
    data_dir, seed = data
    suffix = str(time.time_ns())
    stack = Stack(data_dir, seed)
    out1 = out2 = None
    try:
        status, paid = stack.call("POST", "/v1/connector/order", order("APPROVE1", f"PAID-{suffix}"))
        assert status == 200 and paid["paymentStatus"] == "Success", paid
        reference = paid["transaction"]["reference"]
        wait_for(lambda: stack.call("GET", f"/v1/transactions/{reference}")[0] == 200)
        # The merchant's server is down: the notification waits on the queue for its retry.
        wait_for(lambda: queued_notifications(data_dir) >= 1)

        out1 = Terminal(stack.mqtt_port, "OUT1", "p-out1")
        out2 = Terminal(stack.mqtt_port, "OUT2", "p-out2")
        wait_for(lambda: online(stack) >= {"PAX-OUT1", "PAX-OUT2"})  # else the payments answer 502 offline
        in_background(lambda: stack.call("POST", "/v1/connector/order", order("OUT1", f"ACKED-{suffix}")))
        in_background(lambda: stack.call("POST", "/v1/connector/order", order("OUT2", f"SILENT-{suffix}")))
        wait_for(lambda: out1.requests and out2.requests)
        acked_request = out1.requests[0]["request_id"]
        out1.send("ack", acked_request, {}).wait_for_publish(5)
        wait_for(lambda: stack.call("GET", f"/v1/connector/order/ACKED-{suffix}")[1].get("state") == "acknowledged")
        assert stack.call("GET", f"/v1/connector/order/SILENT-{suffix}")[1]["state"] == "pending"

        stack.kill()
        out1.close()
        out2.close()

        stack = Stack(data_dir, seed)
        # Kept: the finished payment, its transaction, the notification waiting for its retry.
        status, before = stack.call("GET", f"/v1/connector/order/PAID-{suffix}")
        assert status == 200 and before["state"] == "succeeded" and before["payment"]["paymentStatus"] == "Success"
        status, transaction = stack.call("GET", f"/v1/transactions/{reference}")
        assert status == 200 and transaction["status_code"] == 118
        assert queued_notifications(data_dir) >= 1
        # The silent terminal's claim is kept, with its expiry: it is still busy.
        _, listed = stack.call("GET", "/v1/terminals")
        assert {t["terminal_id"]: t["busy"] for t in listed["terminals"]}["PAX-OUT2"] is True

        # The acknowledged payment's result, sent after the restart, lands on the kept attempt.
        out1 = Terminal(stack.mqtt_port, "OUT1", "p-out1")
        out1.pay(acked_request).wait_for_publish(5)
        acked = wait_for(
            lambda: (
                (found := stack.call("GET", f"/v1/connector/order/ACKED-{suffix}")[1])["state"] == "succeeded" and found
            )
        )
        assert acked["request_id"] == acked_request and acked["payment"]["paymentStatus"] == "Success"

        # The never-acknowledged one ends by its deadline, and its terminal is free again after it.
        silent = wait_for(
            lambda: (
                (found := stack.call("GET", f"/v1/connector/order/SILENT-{suffix}")[1])["state"] == "timed_out"
                and found
            )
        )
        assert silent["reason"] == "ack_timeout"
        out2 = Terminal(stack.mqtt_port, "OUT2", "p-out2", respond=True)

        def paid_again() -> dict[str, Any] | None:
            status, body = stack.call("POST", "/v1/connector/order", order("OUT2", f"AGAIN-{suffix}-{time.time_ns()}"))
            return body if status == 200 and body.get("paymentStatus") == "Success" else None

        assert wait_for(paid_again)["transaction"]["reference"].startswith("REF-")
    finally:
        for terminal in (out1, out2):
            if terminal is not None:
                terminal.close()
        stack.stop()

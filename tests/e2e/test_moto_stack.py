"""`STORE=moto`: the same stack on the AWS adapters (DynamoDB, its stream, SQS) in moto, through a
whole payment: the order route, the terminal, the IPN, the transaction, the merchant notification."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib.adapters.dynamodb.payments import DynamoTerminalRepository
from local.notify_sink import NotificationSink
from local.stack import RunningStack, StackConfig, start_stack

pytestmark = pytest.mark.e2e
LOGIN, PASSWORD = "moto", "moto-password-2026"


@pytest.fixture(scope="module")
def sink() -> Iterator[NotificationSink]:
    receiver = NotificationSink().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, sink: NotificationSink) -> Iterator[RunningStack]:
    seed_path = tmp_path_factory.mktemp("seed") / "seed.json"
    seed_path.write_text(
        json.dumps(
            {
                "ipn_secret": "moto-ipn-secret",
                "merchants": [
                    {
                        "merchant_id": "M1",
                        "login": LOGIN,
                        "password": PASSWORD,
                        "notify_passphrase": "np",
                        "notify_url": sink.url,
                    }
                ],
                "terminals": [
                    {
                        "merchant_id": "M1",
                        "manufacturer": "PAX",
                        "serial_number": "APPROVE1",
                        "passphrase": "p-approve",
                        "simulator": {"behavior": "approve", "delay_ms": 0},
                    }
                ],
            }
        )
    )
    running = start_stack(StackConfig(api_port=0, mqtt_port=0, seed_path=seed_path, store="moto"))
    yield running
    assert running.crash_report() is None
    running.stop()


def call(stack: RunningStack, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode(),
    }
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(stack.api_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_a_payment_on_the_aws_adapters_is_paid_recorded_and_notified(
    stack: RunningStack, sink: NotificationSink
) -> None:
    assert stack.store is None and stack.moto_url.startswith("http://")
    # The terminal record lives in DynamoDB (moto), not in a data directory.
    assert DynamoTerminalRepository(stack.settings.terminals_table).get("PAX-APPROVE1") is not None
    order_id = f"MOTO-{time.time_ns()}"
    request = {
        "order": {"order_id": order_id, "description": "moto smoke", "price": {"amount": 1250, "currency": "EUR"}},
        "pos_technical_info": {
            "device_information": {"serial_number": "APPROVE1", "manufacturer": "PAX"},
            "terminal_transaction_display": {"protocol": "AppNepting"},
        },
    }
    status, paid = call(stack, "POST", "/v1/connector/order", request)
    assert status == 200 and paid["paymentStatus"] == "Success", paid
    reference = paid["transaction"]["reference"]
    assert call(stack, "GET", f"/v1/connector/order/{order_id}")[1]["state"] == "succeeded"

    deadline = time.monotonic() + 20
    transaction: dict[str, Any] = {}
    notified = None
    while time.monotonic() < deadline and not (transaction.get("description") and notified):
        _code, transaction = call(stack, "GET", f"/v1/transactions/{reference}")
        notified = next((n for n in sink.received if n.form.get("transaction_reference") == reference), None)
        time.sleep(0.1)
    # The IPN (SQS) made the transaction, the order head's stream record added the order's details.
    assert transaction["status_code"] == 118 and transaction["order_id"] == order_id
    assert transaction["description"] == "moto smoke"
    assert notified is not None and notified.form["status"] == "118"

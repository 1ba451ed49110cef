"""End to end through the local pollers against moto in server mode, as ``make run`` feeds them:
order head written -> order details recorded; IPN posted -> transaction Captured with basket and
customer -> signed notification received by the merchant's server."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from chalice.test import Client

from chalicelib import bootstrap, jsonutil
from chalicelib.adapters import aws as aws_adapter
from chalicelib.adapters.dynamodb.payments import DynamoPaymentRepository
from chalicelib.adapters.dynamodb.tables import create_tables
from chalicelib.adapters.sqs import create_queues
from chalicelib.config import Settings
from chalicelib.payments.domain import Dispatch, DispatchState, OrderHead
from local.notify_sink import NotificationSink
from local.pollers import Poller, start_pollers
from tests.console_helpers import IPN_SECRET, NOTIFY_PASSPHRASE, ipn_body, order_request, seed_merchant, signed_headers


def wait_until(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, list[Poller], NotificationSink]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    aws_adapter.reset_clients()
    stop = threading.Event()
    pollers: list[Poller] = []
    try:
        settings = create_queues(Settings(ipn_secret=IPN_SECRET, notify_allow_loopback_http=1))
        create_tables(settings)
        bootstrap.install(bootstrap.build(settings))
        with NotificationSink() as sink:
            seed_merchant(settings, "M1", notify_url=sink.url)
            pollers = start_pollers(settings, stop)
            yield settings, pollers, sink
    finally:
        stop.set()
        for poller in pollers:
            poller.join(timeout=5)
        bootstrap.install(None)
        server.stop()
        aws_adapter.reset_clients()


def start_attempt(settings: Settings, request: dict[str, Any]) -> None:
    """What the payment path writes when it accepts a payment request (its tests cover it)."""
    now = int(time.time() * 1000)
    order_id = request["order"]["order_id"]
    head = OrderHead("M1", order_id, 1, "req-1", "PAX-1850320198", "hash", jsonutil.dumps(request), now, now)
    dispatch = Dispatch(
        "req-1", "M1", order_id, 1, "PAX-1850320198", "Debit", 899, "EUR", DispatchState.PENDING, now, now, now
    )
    DynamoPaymentRepository(settings.payments_table, 86_400).start_attempt(head, dispatch, None)


def test_order_ipn_and_notification_flow_through_the_pollers(
    stack: tuple[Settings, list[Poller], NotificationSink],
) -> None:
    settings, pollers, sink = stack
    request = order_request()
    request["pos_technical_info"].pop("notify_url")  # the merchant's default: the sink
    start_attempt(settings, request)
    details = wait_until(lambda: bootstrap.components().order_details.get("M1", "ORDER_1537532589264"))
    assert details.amount == 899 and details.attempt == 1

    raw = json.dumps(ipn_body()).encode()
    with Client(__import__("app").app) as client:
        response = client.http.post("/v1/ipn/nepting", headers=signed_headers(raw), body=raw)
    assert response.status_code == 200, response.body

    assert sink.wait_for(1, timeout_s=20), "the merchant got its notification"
    tx = bootstrap.components().transactions.get("TX-1001")
    assert tx is not None and (tx.status_code, tx.status) == (118, "Captured")
    assert jsonutil.loads(tx.basket_json or "")[0]["name"] == "My first product"
    assert jsonutil.loads(tx.customer_json or "")["first_name"] == "Cathy"
    [received] = sink.received
    assert received.signature == hashlib.sha256(received.body + NOTIFY_PASSPHRASE.encode()).hexdigest()
    assert received.form["status"] == "118" and received.form["custom_data[internal_reference]"] == "ORD_987465"
    wait_until(lambda: (bootstrap.components().transactions.get("TX-1001") or tx).notified_statuses == [118])
    time.sleep(0.5)
    assert len(sink.received) == 1 and sink.attempts == 1, "exactly once"
    assert all(poller.crash is None for poller in pollers)
    assert all(poller.is_alive() for poller in pollers)


def test_a_receiver_that_fails_first_gets_the_notification_when_it_recovers(
    stack: tuple[Settings, list[Poller], NotificationSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, sink = stack
    # Short delays so that the retry comes back within the test; the schedule itself is unit-tested.
    import dataclasses

    parts = bootstrap.components()
    bootstrap.install(dataclasses.replace(parts, settings=dataclasses.replace(parts.settings, notify_first_delay_s=1)))
    sink.status = 500
    raw = json.dumps(ipn_body(transaction_reference="TX-2")).encode()
    with Client(__import__("app").app) as client:
        assert client.http.post("/v1/ipn/nepting", headers=signed_headers(raw), body=raw).status_code == 200
    assert sink.wait_for(1, timeout_s=20, attempts=True)
    sink.status = 200
    assert sink.wait_for(1, timeout_s=20)
    assert sink.received[0].form["transaction_reference"] == "TX-2"
    assert sink.attempts == 2


def test_a_poller_whose_handler_raises_logs_keeps_the_traceback_and_retries(
    stack: tuple[Settings, list[Poller], NotificationSink],
) -> None:
    from chalicelib.adapters.sqs import SqsQueue
    from local.pollers import QueuePoller

    calls: list[int] = []

    def broken(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(len(event["Records"]))
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        return {"batchItemFailures": []}

    from chalicelib.adapters.aws import client

    url = client("sqs").create_queue(QueueName="extra")["QueueUrl"]
    SqsQueue(url).send({"x": 1})
    stop = threading.Event()
    poller = QueuePoller(url, broken, stop, wait_s=0)
    poller.start()
    try:
        wait_until(lambda: len(calls) >= 2, timeout_s=15)
    finally:
        stop.set()
        poller.join(timeout=5)
    assert poller.crash is not None and "handler bug" in poller.crash
    assert calls == [1, 1], "the message came back after the crash and was then handled"

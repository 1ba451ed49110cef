"""Merchant notifications on AWS: the notifier through the real HTTP poster to a merchant's server,
retries delayed on SQS, and the parked messages replayed from the dead-letter queue."""

from __future__ import annotations

import argparse
import hashlib
from typing import Any
from urllib.parse import parse_qsl

import pytest

import app as chalice_app
from chalicelib.adapters.http_notifier import UrllibFormPoster
from chalicelib.config import Settings
from chalicelib.console.ingest import ingest_ipn
from local.notify_sink import NotificationSink
from tests.console_helpers import (
    NOTIFY_PASSPHRASE,
    drain,
    head_image,
    install_ledger,
    ipn_body,
    order_request,
    seed_merchant,
    signed_headers,
    sqs_event,
    stream_event,
)
from tests.fakes import FakeClock, RecordingQueue


@pytest.fixture
def world(console_aws: Settings) -> Any:
    """A captured transaction with its order's details, its notification message taken off the queue."""
    with NotificationSink() as sink:
        clock = FakeClock()
        retries, parked = RecordingQueue(), RecordingQueue()
        parts = install_ledger(console_aws, clock=clock)
        seed_merchant(console_aws, "M1", notify_url="http://127.0.0.1:9/unused-default")
        request = order_request()
        request["pos_technical_info"]["notify_url"] = sink.url
        chalice_app.order_notifications_handler(stream_event(head_image("M1", request)), None)
        _receive_ipn(parts)
        ingest_ipn(parts.ingest_deps(), "TX-1001")
        [message] = drain(console_aws.notifications_queue_url)
        install_ledger(console_aws, clock=clock, notifications=retries, dead_letters=parked, poster=UrllibFormPoster(2))

        class World:
            pass

        state = World()
        state.__dict__.update(sink=sink, clock=clock, retries=retries, parked=parked, message=message)
        yield state


def _receive_ipn(parts: Any) -> None:
    import json
    import time

    from chalicelib.console.ipn import receive_ipn

    raw = json.dumps(ipn_body()).encode()
    parts.clock.now = int(time.time() * 1000)
    receive_ipn(parts.ipn_deps(), {k.lower(): v for k, v in signed_headers(raw).items()}, raw)


def notify(message: dict[str, Any]) -> dict[str, Any]:
    return chalice_app.merchant_notifier_handler(sqs_event(message), None)


def test_the_notification_goes_to_the_orders_notify_url_signed_with_the_merchants_passphrase(world: Any) -> None:
    assert notify(world.message) == {"batchItemFailures": []}
    [received] = world.sink.received
    assert received.headers["content-type"] == "application/x-www-form-urlencoded"
    assert received.signature == hashlib.sha256(received.body + NOTIFY_PASSPHRASE.encode()).hexdigest()
    form = dict(parse_qsl(received.body.decode()))
    assert form["state"] == "completed" and form["status"] == "118" and form["order[amount]"] == "8.99"
    assert form["custom_data[internal_reference]"] == "ORD_987465"
    assert form["transaction_reference"] == "TX-1001" and form["payment_product"] == "visa"


def test_an_unreachable_receiver_counts_as_a_failure(world: Any) -> None:
    world.sink.stop()
    notify(world.message)
    [(retry, delay)] = world.retries.sent
    assert retry["last_http"] == 0 and retry["failures"] == 1 and delay == 30


def test_retries_use_sqs_delay_seconds(console_aws: Settings) -> None:
    from chalicelib.adapters.aws import client
    from chalicelib.adapters.sqs import SqsQueue

    SqsQueue(console_aws.notifications_queue_url).send({"transaction_reference": "T"}, delay_s=5000)
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=console_aws.notifications_queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1", "delayed, and 5000 s capped to SQS's 900"
    assert drain(console_aws.notifications_queue_url) == []


def test_replay_dlq_moves_parked_messages_back_with_a_fresh_24_hours(
    console_aws: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from admin import dlq
    from chalicelib.adapters.sqs import SqsQueue

    for name in ("notifications_queue_url", "notifications_dlq_url"):
        monkeypatch.setenv(name.upper(), getattr(console_aws, name))
    parked = {
        "transaction_reference": "T1",
        "status_code": 118,
        "first_try_ms": 1,
        "failures": 96,
        "parked_reason": "x",
    }
    SqsQueue(console_aws.notifications_dlq_url).send(parked)
    SqsQueue(console_aws.notifications_dlq_url).send_raw("not json, from SQS's own redrive")
    parser = argparse.ArgumentParser()
    dlq.register(parser.add_subparsers())
    args = parser.parse_args(["replay-dlq", "--queue", "merchant-notifications"])
    assert args.func(args) == 0
    assert drain(console_aws.notifications_dlq_url) == []
    from chalicelib.adapters.aws import client

    bodies = []
    for message in client("sqs").receive_message(QueueUrl=console_aws.notifications_queue_url, MaxNumberOfMessages=10)[
        "Messages"
    ]:
        bodies.append(message["Body"])
    assert sorted(bodies) == sorted(
        ['{"transaction_reference":"T1","status_code":118}', "not json, from SQS's own redrive"]
    )

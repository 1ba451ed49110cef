"""Merchant notifications (CONTRACT §4): the signed form, retries with growing delays, parking, replay."""

from __future__ import annotations

import argparse
import hashlib
from typing import Any
from urllib.parse import parse_qsl

import pytest

import app as chalice_app
from chalicelib.adapters.http_notifier import UrllibFormPoster
from chalicelib.bootstrap import components as ledger
from chalicelib.config import Settings
from chalicelib.console.domain import Transaction
from chalicelib.console.ingest import ingest_ipn
from chalicelib.console.notifications import (
    allopass_signature,
    encode_form,
    format_major,
    notification_fields,
    retry_delay_s,
)
from chalicelib.observability import METRIC_COUNTS
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
from tests.fakes import FakeClock

KNOWN_BODY = (
    "state=completed&status=118&message=Captured&transaction_reference=TX-1001"
    "&order%5Bid%5D=ORDER_1537532589264&order%5Bamount%5D=8.99&order%5Bcurrency%5D=EUR"
    "&captured_amount=8.99&authorization_code=A1B2C3&payment_product=visa"
    "&custom_data%5Binternal_reference%5D=ORD_987465&custom_data%5Bcustomer_first_order%5D=true"
    "&date_created=2026-11-28T03%3A12%3A00.123Z"
)
# printf '%s' "$KNOWN_BODY"'merchant notify passphrase' | sha256sum
KNOWN_SIGNATURE = "d5b6c6459d454bbf10c406c1748c5b73f1c755558b3f2d87bda3cd93489abd5d"


class RecordingQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], int]] = []

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None:
        self.sent.append((body, delay_s))


def captured() -> Transaction:
    return Transaction(
        transaction_reference="TX-1001",
        merchant_id="M1",
        order_id="ORDER_1537532589264",
        terminal_id="PAX-1850320198",
        operation="Debit",
        ipn_status="approved",
        status_code=118,
        status="Captured",
        amount_minor=899,
        currency="EUR",
        created_at="2026-11-28T03:12:00.123Z",
        updated_at="2026-11-28T03:12:01.000Z",
        authorization_code="A1B2C3",
        card_brand="VISA",
        custom_data_json='{"internal_reference":"ORD_987465","customer_first_order":true}',
    )


def test_the_form_body_and_its_signature_match_the_known_vector() -> None:
    body = encode_form(notification_fields(captured(), 118))
    assert body.decode() == KNOWN_BODY
    assert allopass_signature(body, NOTIFY_PASSPHRASE) == KNOWN_SIGNATURE
    assert allopass_signature(b"state=completed", "secret") == hashlib.sha256(b"state=completedsecret").hexdigest()


@pytest.mark.parametrize(
    ("minor", "major"), [(899, "8.99"), (5, "0.05"), (100, "1.00"), (99_999_999, "999999.99"), (0, "0.00")]
)
def test_amounts_are_major_units_with_two_decimals_without_floats(minor: int, major: str) -> None:
    assert format_major(minor) == major


@pytest.mark.parametrize(
    ("ipn_status", "code", "state", "captured_amount"),
    [("declined", 113, "declined", "0.00"), ("error", 113, "error", "0.00"), ("cancelled", 115, "declined", "0.00")],
)
def test_states_of_failed_payments(ipn_status: str, code: int, state: str, captured_amount: str) -> None:
    tx = captured()
    tx.ipn_status, tx.status_code = ipn_status, code
    fields = dict(notification_fields(tx, code))
    assert (fields["state"], fields["status"], fields["captured_amount"]) == (state, str(code), captured_amount)


def test_retry_delays_grow_and_are_capped_at_900_s() -> None:
    delays = [retry_delay_s(Settings(), failures) for failures in range(1, 10)]
    assert delays == [30, 60, 120, 240, 480, 900, 900, 900, 900]


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
        install_ledger(
            console_aws,
            clock=clock,
            notifications=retries,
            dead_letters=parked,
            poster=UrllibFormPoster(2, allow_loopback_http=True),
        )

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


def test_receiver_down_then_up_is_delivered_later_exactly_once(world: Any) -> None:
    world.sink.status = 500
    notify(world.message)
    notify(world.retries.sent[-1][0])
    assert world.sink.attempts == 2 and world.sink.received == []
    assert [delay for _, delay in world.retries.sent] == [30, 60]
    world.sink.status = 200
    world.clock.advance(90_000)
    notify(world.retries.sent[-1][0])
    assert len(world.sink.received) == 1
    tx = ledger().transactions.get("TX-1001")
    assert tx is not None and tx.notified_statuses == [118]
    # The same message delivered again (SQS at-least-once), or the first one replayed: nothing sent.
    notify(world.retries.sent[-1][0])
    notify(world.message)
    assert world.sink.attempts == 3 and len(world.sink.received) == 1
    assert len(world.retries.sent) == 2


def test_after_24_hours_of_failures_the_message_is_parked_with_its_reason(world: Any) -> None:
    world.sink.status = 503
    parked_before = METRIC_COUNTS["NotificationsParked"]
    message, started = world.message, world.clock.now_ms()
    for _ in range(200):
        notify(message)
        if world.parked.sent:
            break
        message, delay = world.retries.sent[-1]
        assert 0 < delay <= 900
        world.clock.advance(delay * 1000)
    [(parked, _)] = world.parked.sent
    assert world.clock.now_ms() - started >= 24 * 3600 * 1000
    assert world.clock.now_ms() - started < 24 * 3600 * 1000 + 900_000, "parked at the first failure past 24 h"
    assert parked["parked_reason"].endswith("last_http_503")
    assert parked["transaction_reference"] == "TX-1001" and parked["status_code"] == 118
    assert METRIC_COUNTS["NotificationsParked"] == parked_before + 1
    assert world.sink.attempts == len(world.retries.sent) + 1
    assert world.sink.received == []


def test_an_unreachable_receiver_counts_as_a_failure(world: Any) -> None:
    world.sink.stop()
    notify(world.message)
    [(retry, delay)] = world.retries.sent
    assert retry["last_http"] == 0 and retry["failures"] == 1 and delay == 30


def test_without_any_notify_url_nothing_is_sent_and_it_is_counted(console_aws: Settings) -> None:
    from chalicelib.console.domain import IpnFacts
    from chalicelib.console.ingest import merge

    seed_merchant(console_aws, "M1", notify_url=None)
    retries = RecordingQueue()
    parts = install_ledger(console_aws, notifications=retries)
    facts = IpnFacts(
        "T9",
        "M1",
        "O9",
        "PAX-1",
        "Debit",
        "approved",
        1,
        "EUR",
        None,
        None,
        None,
        None,
        None,
        "2026-11-28T03:12:00.000Z",
    )
    merge(parts.ingest_deps(), "T9", ipn=facts)
    before = METRIC_COUNTS["NotificationsSkipped.reason=no_notify_url"]
    assert notify(retries.sent[0][0]) == {"batchItemFailures": []}
    assert METRIC_COUNTS["NotificationsSkipped.reason=no_notify_url"] == before + 1


def test_a_failed_send_to_the_queue_leaves_the_message_for_a_retry(world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    world.sink.status = 500
    monkeypatch.setattr(world.retries, "send", lambda body, delay_s=0: (_ for _ in ()).throw(ConnectionError("down")))
    assert notify(world.message) == {"batchItemFailures": [{"itemIdentifier": "m0"}]}


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

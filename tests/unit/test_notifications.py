"""Merchant notifications (docs/merchant-notifications.md) on fakes: the signed form, retries with
growing delays, parking.

The real HTTP poster, SQS's delays and the dead-letter replay are pinned in tests/integration."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import pytest

import app as chalice_app
from chalicelib import protocol
from chalicelib.bootstrap import Components
from chalicelib.bootstrap import components as ledger
from chalicelib.config import Settings
from chalicelib.console.domain import Transaction
from chalicelib.console.ingest import ingest_ipn
from chalicelib.console.ipn import receive_ipn
from chalicelib.console.notifications import (
    allopass_signature,
    encode_form,
    format_major,
    notification_fields,
    replayable,
    retry_delay_s,
)
from chalicelib.exceptions import ConditionFailed
from chalicelib.observability import METRIC_COUNTS
from tests.console_helpers import (
    NOTIFY_PASSPHRASE,
    add_merchant,
    head_image,
    ipn_body,
    order_request,
    signed_headers,
    sqs_event,
    stream_event,
)
from tests.logs import captured_logs

KNOWN_BODY = (
    "state=completed&status=118&message=Captured&transaction_reference=TX-1001"
    "&order%5Bid%5D=ORDER_1537532589264&order%5Bamount%5D=8.99&order%5Bcurrency%5D=EUR"
    "&captured_amount=8.99&authorization_code=A1B2C3&payment_product=visa"
    "&custom_data%5Binternal_reference%5D=ORD_987465&custom_data%5Bcustomer_first_order%5D=true"
    "&date_created=2026-11-28T03%3A12%3A00.123Z"
)
# printf '%s' "$KNOWN_BODY"'merchant notify passphrase' | sha256sum
KNOWN_SIGNATURE = "d5b6c6459d454bbf10c406c1748c5b73f1c755558b3f2d87bda3cd93489abd5d"
ORDER_NOTIFY_URL = "https://merchant.example/orders/notify"


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
    ("minor", "major"),
    [(899, "8.99"), (5, "0.05"), (100, "1.00"), (99_999_999, "999999.99"), (0, "0.00"), (-120, "-1.20"), (-5, "-0.05")],
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
def world(console: Components) -> Any:
    """A captured transaction with its order's details, its notification message taken off the queue;
    the merchant's server is the fake poster, answering ``world.poster.status``."""
    add_merchant(console.merchants, "M1", notify_url="http://127.0.0.1:9/unused-default")
    request = order_request()
    request["pos_technical_info"]["notify_url"] = ORDER_NOTIFY_URL
    chalice_app.order_notifications_handler(stream_event(head_image("M1", request)), None)
    raw = json.dumps(ipn_body()).encode()
    now_s = console.clock.now_ms() // 1000
    receive_ipn(console.ipn_deps(), {k.lower(): v for k, v in signed_headers(raw, timestamp=now_s).items()}, raw)
    ingest_ipn(console.ingest_deps(), "TX-1001")
    retries = console.notifications
    [message] = retries.take()  # type: ignore[attr-defined]
    return SimpleNamespace(
        poster=console.poster, clock=console.clock, retries=retries, parked=console.dead_letters, message=message
    )


def notify(message: dict[str, Any]) -> dict[str, Any]:
    return chalice_app.merchant_notifier_handler(sqs_event(message), None)


def test_the_notification_goes_to_the_orders_notify_url_signed_with_the_merchants_passphrase(world: Any) -> None:
    assert notify(world.message) == {"batchItemFailures": []}
    [received] = world.poster.delivered
    assert received.url == ORDER_NOTIFY_URL
    assert received.headers["Content-Type"] == "application/x-www-form-urlencoded"
    signature = received.headers["X-Allopass-Signature"]
    assert signature == hashlib.sha256(received.body + NOTIFY_PASSPHRASE.encode()).hexdigest()
    form = dict(parse_qsl(received.body.decode()))
    assert form["state"] == "completed" and form["status"] == "118" and form["order[amount]"] == "8.99"
    assert form["custom_data[internal_reference]"] == "ORD_987465"
    assert form["transaction_reference"] == "TX-1001" and form["payment_product"] == "visa"


def test_receiver_down_then_up_is_delivered_later_exactly_once(world: Any) -> None:
    world.poster.status = 500
    notify(world.message)
    notify(world.retries.sent[-1][0])
    assert len(world.poster.posts) == 2 and world.poster.delivered == []
    assert [delay for _, delay in world.retries.sent] == [30, 60]
    world.poster.status = 200
    world.clock.advance(90_000)
    notify(world.retries.sent[-1][0])
    assert len(world.poster.delivered) == 1
    tx = ledger().transactions.get("TX-1001")
    assert tx is not None and tx.notified_statuses == [118]
    # The same message delivered again (SQS at-least-once), or the first one replayed: nothing sent.
    notify(world.retries.sent[-1][0])
    notify(world.message)
    assert len(world.poster.posts) == 3 and len(world.poster.delivered) == 1
    assert len(world.retries.sent) == 2


def test_after_24_hours_of_failures_the_message_is_parked_with_its_reason(world: Any) -> None:
    world.poster.status = 503
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
    assert len(world.poster.posts) == len(world.retries.sent) + 1
    assert world.poster.delivered == []


def test_a_receiver_that_never_answers_counts_as_a_failure(world: Any) -> None:
    world.poster.status = 0  # the FormPoster's answer when nobody answered
    notify(world.message)
    [(retry, delay)] = world.retries.sent
    assert retry["last_http"] == 0 and retry["failures"] == 1 and delay == 30


def test_without_any_notify_url_nothing_is_sent_and_it_is_counted(console: Components) -> None:
    from chalicelib.console.ingest import merge
    from chalicelib.console.schemas import IpnBody

    add_merchant(console.merchants, "M1", notify_url=None)
    retries, parts = console.notifications, console
    facts = IpnBody(
        transaction_reference="T9",
        merchant_id="M1",
        order_id="O9",
        terminal_id="PAX-1",
        operation="Debit",
        status="approved",
        amount=1,
        processed_at="2026-11-28T03:12:00.000Z",
    )
    merge(parts.ingest_deps(), "T9", ipn=facts)
    before = METRIC_COUNTS["NotificationsSkipped.reason=no_notify_url"]
    assert notify(retries.sent[0][0]) == {"batchItemFailures": []}  # type: ignore[attr-defined]
    assert METRIC_COUNTS["NotificationsSkipped.reason=no_notify_url"] == before + 1
    assert console.poster.posts == []  # type: ignore[attr-defined]


def test_a_failed_send_to_the_queue_leaves_the_message_for_a_retry(world: Any) -> None:
    world.poster.status = 500
    world.retries.fail = ConnectionError("down")
    assert notify(world.message) == {"batchItemFailures": [{"itemIdentifier": "m0"}]}


# -- each outcome of one delivery, and what operators see of it ------------------------------------------


def deliver_now(message: dict[str, Any]) -> str:
    from chalicelib.console.notifications import deliver

    return deliver(ledger().notifier_deps(), message)


def test_a_delivery_is_recorded_counted_and_logged_with_its_ids(world: Any) -> None:
    delivered = METRIC_COUNTS["NotificationsDelivered"]
    with captured_logs() as logged:
        assert deliver_now(world.message) == "delivered"
    assert METRIC_COUNTS["NotificationsDelivered"] == delivered + 1
    assert logged.one("notification delivered") == {
        "level": "info",
        "transaction_reference": "TX-1001",
        "order_id": "ORDER_1537532589264",
        "status": 118,
    }


def test_a_status_already_acknowledged_is_skipped_and_counted(world: Any) -> None:
    deliver_now(world.message)
    skipped = METRIC_COUNTS["NotificationsSkipped.reason=already_acknowledged"]
    assert deliver_now(world.message) == "already_acknowledged"
    assert METRIC_COUNTS["NotificationsSkipped.reason=already_acknowledged"] == skipped + 1
    assert len(world.poster.posts) == 1


def test_a_delivery_recorded_concurrently_is_still_delivered_and_counted_as_such(world: Any) -> None:
    transactions = ledger().transactions

    def recorded_meanwhile(reference: str, status_code: int) -> None:
        raise ConditionFailed(reference)

    transactions.record_delivery = recorded_meanwhile  # type: ignore[method-assign]
    concurrent = METRIC_COUNTS["NotificationsSkipped.reason=recorded_concurrently"]
    assert deliver_now(world.message) == "delivered"
    assert METRIC_COUNTS["NotificationsSkipped.reason=recorded_concurrently"] == concurrent + 1


def test_a_failed_post_is_counted_and_its_retry_logged_with_the_answer_and_the_delay(world: Any) -> None:
    world.poster.status = 502
    failed = METRIC_COUNTS["NotificationsFailed"]
    with captured_logs() as logged:
        assert deliver_now(world.message) == "retry_scheduled"
    assert METRIC_COUNTS["NotificationsFailed"] == failed + 1
    assert logged.one("notification retry scheduled") == {
        "level": "info",
        "transaction_reference": "TX-1001",
        "http_status": 502,
        "failures": 1,
        "delay_s": 30,
    }
    [(retry, delay)] = world.retries.sent
    assert (retry["first_try_ms"], retry["failures"], retry["last_http"], delay) == (world.clock.now_ms(), 1, 502, 30)


def test_a_message_for_a_missing_transaction_is_parked_with_its_reason_and_time(world: Any) -> None:
    message = {**world.message, "transaction_reference": "TX-GONE"}
    with captured_logs() as logged:
        assert deliver_now(message) == "parked"
    [(parked, _)] = world.parked.sent
    assert parked["parked_reason"] == "transaction_missing"
    assert parked["parked_at"] == protocol.timestamp_from_ms(world.clock.now_ms())
    assert parked["first_try_ms"] == world.clock.now_ms()
    assert logged.one("notification parked") == {
        "level": "error",
        "transaction_reference": "TX-GONE",
        "reason": "transaction_missing",
    }


def test_a_merchant_without_a_notify_passphrase_gets_nothing_and_the_message_is_parked(world: Any) -> None:
    merchants = ledger().merchants
    merchants.put_merchant("M1", "http://127.0.0.1:9/unused-default", "")
    assert deliver_now(world.message) == "parked"
    assert world.parked.bodies[0]["parked_reason"] == "no_notify_passphrase"
    assert world.poster.posts == []


def test_without_an_order_notify_url_the_merchants_own_is_used(console: Components) -> None:
    from chalicelib.console.ingest import merge
    from chalicelib.console.schemas import IpnBody

    add_merchant(console.merchants, "M1", notify_url="https://merchant.example/default")
    facts = IpnBody(
        transaction_reference="T9",
        merchant_id="M1",
        order_id="O9",
        terminal_id="PAX-1",
        operation="Debit",
        status="approved",
        amount=1,
        processed_at="2026-11-28T03:12:00.000Z",
    )
    merge(console.ingest_deps(), "T9", ipn=facts)
    [(message, _)] = console.notifications.sent  # type: ignore[attr-defined]
    with captured_logs() as logged:
        assert deliver_now(message) == "delivered"
    assert [post.url for post in console.poster.posts] == ["https://merchant.example/default"]  # type: ignore[attr-defined]
    assert logged.lines("no notify url; notification not sent") == []


def test_a_missing_notify_url_is_logged_naming_the_transaction(console: Components) -> None:
    from chalicelib.console.ingest import merge
    from chalicelib.console.schemas import IpnBody

    add_merchant(console.merchants, "M1", notify_url=None)
    facts = IpnBody(
        transaction_reference="T9",
        merchant_id="M1",
        order_id="O9",
        terminal_id="PAX-1",
        operation="Debit",
        status="approved",
        amount=1,
        processed_at="2026-11-28T03:12:00.000Z",
    )
    merge(console.ingest_deps(), "T9", ipn=facts)
    [(message, _)] = console.notifications.sent  # type: ignore[attr-defined]
    with captured_logs() as logged:
        assert deliver_now(message) == "no_notify_url"
    assert logged.one("no notify url; notification not sent") == {"level": "info", "transaction_reference": "T9"}


def test_a_replayed_parked_message_starts_its_tries_afresh() -> None:
    parked = {
        "transaction_reference": "TX-1",
        "status_code": 118,
        "parked_reason": "transaction_missing",
        "parked_at": "2026-11-28T03:12:00.000Z",
        "first_try_ms": 1,
        "failures": 3,
        "last_http": 500,
    }
    assert replayable(parked) == {"transaction_reference": "TX-1", "status_code": 118}


def test_a_status_without_a_label_has_an_empty_message() -> None:
    assert dict(notification_fields(captured(), 999))["message"] == ""

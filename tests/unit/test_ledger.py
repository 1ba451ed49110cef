"""order_notifications and ipn_ingest on fakes: one Console transaction, whichever half came first."""

from __future__ import annotations

import json
from typing import Any

import pytest

import app as chalice_app
from chalicelib import bootstrap, jsonutil, protocol
from chalicelib.bootstrap import Components
from chalicelib.bootstrap import components as ledger
from chalicelib.console.domain import OrderDetails, Transaction, details_from_head
from chalicelib.console.ipn import receive_ipn
from chalicelib.exceptions import ConditionFailed
from chalicelib.observability import METRIC_COUNTS
from tests.console_helpers import (
    add_merchant,
    head_image,
    ipn_body,
    order_request,
    signed_headers,
    sqs_event,
    stream_event,
)
from tests.fakes import fake_components
from tests.logs import captured_logs

QUEUED_118 = [{"transaction_reference": "TX-1001", "status_code": 118}]


@pytest.fixture
def settings(console: Components) -> Components:
    add_merchant(console.merchants, "M1")
    return console


def receive(body: dict[str, Any]) -> None:
    """The route's job, without HTTP (the route itself is tested in test_ipn_route)."""
    raw = json.dumps(body).encode()
    now_s = ledger().clock.now_ms() // 1000
    headers = {key.lower(): value for key, value in signed_headers(raw, timestamp=now_s).items()}
    receive_ipn(ledger().ipn_deps(), headers, raw)


def queued_notifications() -> list[dict[str, Any]]:
    """The notification messages sent since the last look (a fake queue: ``take`` empties it)."""
    taken: list[dict[str, Any]] = ledger().notifications.take()  # type: ignore[attr-defined]
    return taken


def ingest(reference: str = "TX-1001") -> dict[str, Any]:
    return chalice_app.ipn_ingest_handler(sqs_event({"transaction_reference": reference}), None)


def order_notification(request: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    return chalice_app.order_notifications_handler(stream_event(head_image("M1", request, attempt)), None)


def stored(reference: str = "TX-1001") -> Transaction:
    tx = ledger().transactions.get(reference)
    assert tx is not None
    return tx


def test_order_details_are_recorded_from_the_order_head_stream_record(settings: Components) -> None:
    assert order_notification(order_request()) == {"batchItemFailures": []}
    details = ledger().order_details.get("M1", "ORDER_1537532589264")
    assert details is not None
    assert (details.amount, details.currency, details.attempt, details.terminal_id) == (899, "EUR", 1, "PAX-1850320198")
    assert details.notify_url == "https://merchant.example/notify"
    assert jsonutil.loads(details.basket_json or "")[0]["unit_price"] == jsonutil.loads("8.99")
    assert jsonutil.loads(details.custom_data_json or "") == {
        "internal_reference": "ORD_987465",
        "customer_first_order": True,
    }


def test_only_order_heads_are_taken_from_the_payments_stream(settings: Components) -> None:
    dispatch = {"pk": "DISPATCH#r1", "request_id": "r1", "merchant_id": "M1", "order_id": "X"}
    assert chalice_app.order_notifications_handler(stream_event(dispatch), None) == {"batchItemFailures": []}
    assert ledger().order_details.get("M1", "X") is None


def test_an_older_or_equal_attempt_never_replaces_newer_details(settings: Components) -> None:
    order_notification(order_request(description="second try"), attempt=2)
    order_notification(order_request(description="first try"), attempt=1)
    order_notification(order_request(description="second try, redelivered"), attempt=2)
    details = ledger().order_details.get("M1", "ORDER_1537532589264")
    assert details is not None and (details.attempt, details.description) == (2, "second try")


def test_ipn_alone_creates_a_captured_transaction_without_details(settings: Components) -> None:
    receive(ipn_body())
    assert ingest() == {"batchItemFailures": []}
    tx = stored()
    assert (tx.status_code, tx.status, tx.amount_minor, tx.currency) == (118, "Captured", 899, "EUR")
    assert (tx.card_brand, tx.masked_pan, tx.entry_mode) == ("VISA", "497010******0001", "contactless")
    assert tx.basket_json is None and tx.flags == []
    assert tx.created_at == "2026-11-28T03:12:00.123Z"


def _both_orders(settings: Components, ipn_first: bool, request: dict[str, Any], body: dict[str, Any]) -> Transaction:
    if ipn_first:
        receive(body)
        ingest()
        order_notification(request)
    else:
        order_notification(request)
        receive(body)
        ingest()
    return stored()


@pytest.mark.parametrize("ipn_first", [True, False])
def test_ipn_and_details_merge_into_one_transaction_in_either_order(settings: Components, ipn_first: bool) -> None:
    tx = _both_orders(settings, ipn_first, order_request(), ipn_body())
    assert tx.status_code == 118
    assert jsonutil.loads(tx.basket_json or "")[0]["product_reference"] == "NF-a1690"
    assert jsonutil.loads(tx.customer_json or "")["customer_id"] == "283749291"
    assert tx.custom_data == {"internal_reference": "ORD_987465", "customer_first_order": True}
    assert tx.notify_url == "https://merchant.example/notify"
    assert tx.flags == []


def test_both_arrival_orders_give_the_same_transaction(settings: Components) -> None:
    ipn_first = _both_orders(settings, True, order_request(), ipn_body())
    fresh = fake_components()  # empty stores, the same merchant
    add_merchant(fresh.merchants, "M1")
    bootstrap.install(fresh)
    details_first = _both_orders(fresh, False, order_request(), ipn_body())
    assert ledger() is fresh and ipn_first.business_view() == details_first.business_view()


@pytest.mark.parametrize("ipn_first", [True, False])
def test_amount_mismatch_is_flagged_and_the_ipn_figures_stand(settings: Components, ipn_first: bool) -> None:
    request = order_request(amount=1000, basket=None)
    tx = _both_orders(settings, ipn_first, request, ipn_body(amount=899))
    assert tx.flags == ["amount_mismatch"]
    assert tx.amount_minor == 899 and tx.order_amount == 1000


@pytest.mark.parametrize(
    ("operation", "status", "code", "label"),
    [
        ("Debit", "approved", 118, "Captured"),
        ("Credit", "approved", 125, "Refunded"),
        ("Debit", "declined", 113, "Refused"),
        ("Debit", "cancelled", 115, "Cancelled"),
        ("Debit", "error", 113, "Refused"),
        ("Credit", "declined", 113, "Refused"),
    ],
)
def test_status_mapping_of_contract_section_3(
    settings: Components, operation: str, status: str, code: int, label: str
) -> None:
    receive(ipn_body(operation=operation, status=status))
    ingest()
    tx = stored()
    assert (tx.status_code, tx.status) == (code, label)


def test_a_redelivered_ipn_message_writes_nothing_and_queues_no_second_notification(settings: Components) -> None:
    receive(ipn_body())
    ingest()
    first = stored()
    assert queued_notifications() == QUEUED_118
    ingest()
    assert stored().version == first.version
    assert queued_notifications() == []


def test_a_new_transaction_is_announced_once_and_marked_enqueued(settings: Components) -> None:
    receive(ipn_body())
    ingest()
    tx = stored()
    assert (tx.notify_pending_status, tx.notify_enqueued) == (118, True)
    order_notification(order_request())
    assert queued_notifications() == QUEUED_118


def test_a_crash_between_the_write_and_the_enqueue_is_healed_by_the_redelivery(
    settings: Components,
) -> None:
    receive(ipn_body())
    queue = ledger().notifications
    queue.fail = ConnectionError("SQS unreachable")  # type: ignore[attr-defined]
    result = ingest()
    assert result == {"batchItemFailures": [{"itemIdentifier": "m0"}]}, "the message stays for a retry"
    tx = stored()
    assert (tx.notify_pending_status, tx.notify_enqueued) == (118, False)
    queue.fail = None  # type: ignore[attr-defined]
    assert ingest() == {"batchItemFailures": []}
    assert stored().notify_enqueued is True
    assert queued_notifications() == QUEUED_118


def test_an_ipn_message_without_a_stored_ipn_is_reported_failed(settings: Components) -> None:
    assert ingest("TX-NOPE") == {"batchItemFailures": [{"itemIdentifier": "m0"}]}


def test_a_failed_stream_record_stops_the_batch_at_that_record(
    settings: Components, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = head_image("M1", order_request("A")), head_image("M1", order_request("B"))
    event = stream_event(first, second)
    monkeypatch.setattr(ledger().order_details, "put_if_newer", lambda details: (_ for _ in ()).throw(OSError("x")))
    result = chalice_app.order_notifications_handler(event, None)
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["dynamodb"]["SequenceNumber"]}]}


def test_conditional_write_refuses_a_stale_version(settings: Components) -> None:
    receive(ipn_body())
    ingest()
    tx = stored()
    with pytest.raises(ConditionFailed):
        ledger().transactions.put(tx, tx.version - 1)


# -- the order head as the Console reads it ---------------------------------------------------------


def test_order_details_carry_every_field_of_the_order_head() -> None:
    request = {
        "order": {
            "order_id": "A-1",
            "transaction_type": "Credit",
            "price": {"amount": 1250, "currency": "USD"},
            "description": "Two coffees",
            "basket": [{"label": "coffee", "price": "6.25"}],
            "custom_data": {"table": 4},
        },
        "customer": {"name": "Ada"},
        "pos_technical_info": {"notify_url": "https://shop.example/ipn"},
    }
    details = details_from_head(head_image("M1", request, attempt=3, at_ms=1_795_000_000_000))
    assert details == OrderDetails(
        merchant_id="M1",
        order_id="A-1",
        attempt=3,
        terminal_id="PAX-1850320198",
        transaction_type="Credit",
        amount=1250,
        currency="USD",
        description="Two coffees",
        notify_url="https://shop.example/ipn",
        basket_json='[{"label":"coffee","price":"6.25"}]',
        customer_json='{"name":"Ada"}',
        custom_data_json='{"table":4}',
        created_at_ms=1_795_000_000_000,
        updated_at_ms=1_795_000_000_003,
    )


def test_an_order_head_without_optional_fields_reads_as_a_euro_debit_of_unknown_amount() -> None:
    image = head_image("M1", {"order": {"order_id": "A-1", "price": {"amount": "12"}}})
    for optional in ("terminal_id", "created_at_ms", "updated_at_ms"):
        del image[optional]
    details = details_from_head(image)
    assert (details.transaction_type, details.amount, details.currency) == ("Debit", None, "EUR")
    assert (details.terminal_id, details.created_at_ms, details.updated_at_ms) == ("", 0, 0)
    assert (details.notify_url, details.basket_json, details.customer_json, details.custom_data_json) == (
        None,
        None,
        None,
        None,
    )


# -- the merge's writes, races and signals ------------------------------------------------------------


def test_a_new_transaction_is_counted_created_then_updated_and_each_write_is_logged(settings: Components) -> None:
    created, updated = METRIC_COUNTS["TransactionsCreated"], METRIC_COUNTS["TransactionsUpdated"]
    receive(ipn_body())
    with captured_logs() as logged:
        ingest()
    first = stored()
    # one write, then the notification's "enqueued" mark
    assert (first.version, first.updated_at) == (2, protocol.timestamp_from_ms(ledger().clock.now_ms()))
    ledger().clock.advance(5_000)
    order_notification(order_request())
    second = stored()
    assert (second.version, second.updated_at) == (3, protocol.timestamp_from_ms(ledger().clock.now_ms()))
    assert (METRIC_COUNTS["TransactionsCreated"], METRIC_COUNTS["TransactionsUpdated"]) == (created + 1, updated + 1)
    assert logged.one("transaction merged") == {
        "level": "info",
        "transaction_reference": "TX-1001",
        "order_id": "ORDER_1537532589264",
        "terminal_id": "PAX-1850320198",
        "status_code": 118,
        "flags": [],
    }


def test_a_merge_that_loses_a_write_race_counts_it_and_reads_again(settings: Components) -> None:
    receive(ipn_body())
    transactions = ledger().transactions
    original = transactions.put
    lost: list[int] = []

    def lose_once(tx: Transaction, expected_version: int) -> None:
        if not lost:
            lost.append(expected_version)
            raise ConditionFailed(tx.transaction_reference)
        original(tx, expected_version)

    transactions.put = lose_once  # type: ignore[method-assign]
    races = METRIC_COUNTS["TransactionWriteRaces"]
    assert ingest() == {"batchItemFailures": []}
    assert METRIC_COUNTS["TransactionWriteRaces"] == races + 1
    assert stored().status_code == 118


def test_an_ipn_for_an_order_with_known_details_is_written_once_with_them(settings: Components) -> None:
    order_notification(order_request())
    receive(ipn_body())
    created, updated = METRIC_COUNTS["TransactionsCreated"], METRIC_COUNTS["TransactionsUpdated"]
    ingest()
    tx = stored()
    assert (METRIC_COUNTS["TransactionsCreated"], METRIC_COUNTS["TransactionsUpdated"]) == (created + 1, updated)
    assert tx.details_attempt == 1 and tx.basket_json is not None


def test_details_stored_while_the_ipn_merges_are_merged_into_it(settings: Components) -> None:
    order_notification(order_request())
    details_store = ledger().order_details
    original = details_store.get
    reads: list[str] = []

    def stored_meanwhile(merchant_id: str, order_id: str) -> OrderDetails | None:
        # The first read comes before the details landed; the second, after our write, sees them.
        reads.append(order_id)
        return None if len(reads) == 1 else original(merchant_id, order_id)

    details_store.get = stored_meanwhile  # type: ignore[method-assign]
    receive(ipn_body())
    ingest()
    tx = stored()
    assert len(reads) == 2 and tx.details_attempt == 1 and tx.basket_json is not None


def test_a_merged_ipn_is_marked_with_the_time_it_was_merged(settings: Components) -> None:
    receive(ipn_body())
    ingest()
    entry = ledger().ipn_inbox.get("TX-1001")
    assert entry is not None and entry["merged_at_ms"] == ledger().clock.now_ms()


def test_recorded_order_details_are_counted_and_logged_with_what_they_merged(settings: Components) -> None:
    receive(ipn_body())
    ingest()
    recorded = METRIC_COUNTS["OrderDetailsRecorded"]
    with captured_logs() as logged:
        order_notification(order_request())
        order_notification(order_request())  # redelivered: nothing new to store
    assert METRIC_COUNTS["OrderDetailsRecorded"] == recorded + 1
    assert (
        logged.lines("order details recorded")
        == [
            {
                "level": "info",
                "order_id": "ORDER_1537532589264",
                "terminal_id": "PAX-1850320198",
                "attempt": 1,
                "merged": 1,
            }
        ]
        * 2
    )


def test_recording_details_merges_the_newest_stored_into_each_transaction_of_the_order(settings: Components) -> None:
    from chalicelib.console.ingest import record_order_details

    receive(ipn_body())
    ingest()
    order_notification(order_request(description="second try"), attempt=2)
    older = details_from_head(head_image("M1", order_request(description="first try"), attempt=1))
    assert record_order_details(ledger().ingest_deps(), older) == ["TX-1001"]
    assert stored().details_attempt == 2


def test_a_notification_queued_by_another_writer_meanwhile_is_counted_as_an_enqueue_race(
    settings: Components,
) -> None:
    transactions = ledger().transactions

    def queued_meanwhile(reference: str, status_code: int) -> None:
        raise ConditionFailed(reference)

    transactions.mark_enqueued = queued_meanwhile  # type: ignore[method-assign]
    races, enqueued = METRIC_COUNTS["NotificationsEnqueueRaces"], METRIC_COUNTS["NotificationsEnqueued"]
    receive(ipn_body())
    ingest()
    assert (METRIC_COUNTS["NotificationsEnqueueRaces"], METRIC_COUNTS["NotificationsEnqueued"]) == (
        races + 1,
        enqueued + 1,
    )
    assert [m["status_code"] for m in queued_notifications()] == [118]

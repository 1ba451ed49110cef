"""The Console's stores: transactions (versioned writes, notification outbox, listings), order
details (the newest attempt wins) and the IPN inbox (the first IPN of a reference is kept)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chalicelib.console.domain import Transaction, TransactionQuery
from chalicelib.console.ports import IpnInbox, OrderDetailsRepository, Position, TransactionRepository
from chalicelib.exceptions import ConditionFailed
from tests.contract.builders import NOW, transaction
from tests.contract.builders import order_details as details_of

DAY = "2026-11-28T"

# -- transactions: writes -------------------------------------------------------------------------


def test_a_new_transaction_is_written_only_if_none_exists(transactions: TransactionRepository) -> None:
    tx = transaction("T1", flags=["amount_mismatch"], custom_data_json='{"k":"v"}', masked_pan="497010******0001")
    transactions.put(tx, 0)
    assert transactions.get("T1") == tx
    with pytest.raises(ConditionFailed):
        transactions.put(replace(tx, amount_minor=1), 0)
    assert transactions.get("T1") == tx
    assert transactions.get("T-unknown") is None


def test_a_write_lands_only_on_the_version_it_read(transactions: TransactionRepository) -> None:
    transactions.put(transaction("T1", version=1), 0)
    transactions.put(transaction("T1", version=2, description="second"), 1)
    with pytest.raises(ConditionFailed):
        transactions.put(transaction("T1", version=2, description="stale"), 1)
    with pytest.raises(ConditionFailed):
        transactions.put(transaction("T1", version=4, description="ahead"), 3)
    stored = transactions.get("T1")
    assert stored is not None and (stored.version, stored.description) == (2, "second")


def test_a_versioned_write_of_an_unknown_transaction_fails_without_creating_it(
    transactions: TransactionRepository,
) -> None:
    with pytest.raises(ConditionFailed):
        transactions.put(transaction("T1", version=2), 1)
    assert transactions.get("T1") is None


def test_a_read_transaction_is_a_copy_the_store_does_not_follow(transactions: TransactionRepository) -> None:
    transactions.put(transaction("T1"), 0)
    read = transactions.get("T1")
    assert read is not None
    read.flags.append("changed")
    read.notified_statuses.append(118)
    stored = transactions.get("T1")
    assert stored is not None and (stored.flags, stored.notified_statuses) == ([], [])


def test_mark_enqueued_applies_once_to_the_pending_status(transactions: TransactionRepository) -> None:
    transactions.put(transaction("T1", version=1, notify_pending_status=118), 0)
    with pytest.raises(ConditionFailed):
        transactions.mark_enqueued("T1", 113)
    transactions.mark_enqueued("T1", 118)
    stored = transactions.get("T1")
    assert stored is not None and (stored.notify_enqueued, stored.version) == (True, 2)
    with pytest.raises(ConditionFailed):
        transactions.mark_enqueued("T1", 118)
    assert transactions.get("T1").version == 2  # type: ignore[union-attr]


def test_mark_enqueued_without_a_pending_status_or_transaction_fails(transactions: TransactionRepository) -> None:
    transactions.put(transaction("T1"), 0)
    with pytest.raises(ConditionFailed):
        transactions.mark_enqueued("T1", 118)
    with pytest.raises(ConditionFailed):
        transactions.mark_enqueued("T-unknown", 118)
    assert transactions.get("T-unknown") is None


def test_record_delivery_records_each_status_once(transactions: TransactionRepository) -> None:
    transactions.put(transaction("T1", version=1), 0)
    transactions.record_delivery("T1", 118)
    with pytest.raises(ConditionFailed):
        transactions.record_delivery("T1", 118)
    transactions.record_delivery("T1", 125)
    stored = transactions.get("T1")
    assert stored is not None and (stored.notified_statuses, stored.version) == ([118, 125], 3)


def test_record_delivery_of_an_unknown_transaction_fails_without_creating_it(
    transactions: TransactionRepository,
) -> None:
    with pytest.raises(ConditionFailed):
        transactions.record_delivery("T-unknown", 118)
    assert transactions.get("T-unknown") is None


# -- transactions: listings -----------------------------------------------------------------------


def add(transactions: TransactionRepository, reference: str, at: str, merchant: str = "M1", **fields: object) -> None:
    transactions.put(transaction(reference, merchant=merchant, created_at=DAY + at, **fields), 0)


def every_page(
    transactions: TransactionRepository, query: TransactionQuery, limit: int
) -> tuple[list[str], list[list[str]]]:
    """Follow the positions to the end: every reference in order, and each page's references."""
    pages: list[list[str]] = []
    after: Position | None = None
    for _ in range(100):
        items, after = transactions.page(query, limit, after)
        assert len(items) <= limit
        pages.append([tx.transaction_reference for tx in items])
        if after is None:
            return [ref for page in pages for ref in page], pages
    raise AssertionError("the positions never reached the end")


def refs(items: list[Transaction]) -> list[str]:
    return [tx.transaction_reference for tx in items]


def test_list_for_order_finds_every_transaction_of_that_order_only(transactions: TransactionRepository) -> None:
    add(transactions, "T1", "10:00:00.000Z", order_id="SHARED")
    add(transactions, "T2", "11:00:00.000Z", order_id="SHARED", ipn_status="declined", status_code=113)
    add(transactions, "T3", "12:00:00.000Z", order_id="OTHER")
    add(transactions, "X1", "10:30:00.000Z", merchant="M2", order_id="SHARED")
    assert sorted(refs(transactions.list_for_order("M1", "SHARED"))) == ["T1", "T2"]
    assert refs(transactions.list_for_order("M2", "SHARED")) == ["X1"]
    assert transactions.list_for_order("M1", "NONE") == []


def test_list_for_order_goes_past_one_internal_page(transactions: TransactionRepository) -> None:
    for n in range(105):
        add(transactions, f"T{n:03}", f"10:{n // 60:02}:{n % 60:02}.000Z", order_id="BIG")
    assert sorted(refs(transactions.list_for_order("M1", "BIG"))) == [f"T{n:03}" for n in range(105)]


def test_a_page_is_one_merchants_transactions_newest_first(transactions: TransactionRepository) -> None:
    add(transactions, "T1", "10:00:00.000Z")
    add(transactions, "T2", "11:00:00.000Z")
    add(transactions, "T0", "09:00:00.000Z")
    add(transactions, "X1", "10:30:00.000Z", merchant="M2")
    items, after = transactions.page(TransactionQuery("M1"), 10, None)
    assert refs(items) == ["T2", "T1", "T0"] and after is None
    assert refs(transactions.page(TransactionQuery("M2"), 10, None)[0]) == ["X1"]
    assert transactions.page(TransactionQuery("M3"), 10, None) == ([], None)


def test_positions_continue_across_pages_without_gaps_or_repeats(transactions: TransactionRepository) -> None:
    for minute in range(7):
        add(transactions, f"T{minute}", f"10:0{minute}:00.000Z")
    seen, pages = every_page(transactions, TransactionQuery("M1"), 3)
    assert seen == [f"T{minute}" for minute in reversed(range(7))]
    assert pages[:3] == [["T6", "T5", "T4"], ["T3", "T2", "T1"], ["T0"]]


def test_a_position_is_plain_created_at_and_reference(transactions: TransactionRepository) -> None:
    for minute in range(3):
        add(transactions, f"T{minute}", f"10:0{minute}:00.000Z")
    items, after = transactions.page(TransactionQuery("M1"), 2, None)
    assert refs(items) == ["T2", "T1"]
    assert after == {"created_at": DAY + "10:01:00.000Z", "transaction_reference": "T1"}
    # A position written by hand (as a cursor carries it) continues just as well.
    assert refs(transactions.page(TransactionQuery("M1"), 2, dict(after))[0]) == ["T0"]


def test_transactions_of_the_same_instant_are_each_listed_once(transactions: TransactionRepository) -> None:
    for reference in ("TA", "TB", "TC", "TD"):
        add(transactions, reference, "10:00:00.000Z")
    add(transactions, "T-later", "10:00:00.001Z")
    seen, _ = every_page(transactions, TransactionQuery("M1"), 1)
    assert seen[0] == "T-later" and sorted(seen[1:]) == ["TA", "TB", "TC", "TD"]


def test_created_bounds_are_both_inclusive(transactions: TransactionRepository) -> None:
    for hour in ("09", "10", "11", "12"):
        add(transactions, f"T{hour}", f"{hour}:00:00.000Z")
    between = TransactionQuery("M1", created_from=DAY + "10:00:00.000Z", created_to=DAY + "11:00:00.000Z")
    assert every_page(transactions, between, 10)[0] == ["T11", "T10"]
    since = TransactionQuery("M1", created_from=DAY + "11:00:00.000Z")
    assert every_page(transactions, since, 10)[0] == ["T12", "T11"]
    until = TransactionQuery("M1", created_to=DAY + "09:59:59.999Z")
    assert every_page(transactions, until, 10)[0] == ["T09"]


def test_status_terminal_and_order_filters_combine(transactions: TransactionRepository) -> None:
    add(transactions, "T1", "09:00:00.000Z")
    add(transactions, "T2", "10:00:00.000Z", ipn_status="declined", status_code=113, status="Refused")
    add(transactions, "T3", "11:00:00.000Z", terminal_id="PAX-2")
    add(transactions, "T4", "12:00:00.000Z", order_id="SHARED")
    add(transactions, "T5", "12:30:00.000Z", order_id="SHARED", ipn_status="declined", status_code=113)
    add(transactions, "X1", "12:45:00.000Z", merchant="M2", order_id="SHARED")

    def listed(**query: object) -> list[str]:
        return every_page(transactions, TransactionQuery("M1", **query), 10)[0]

    assert listed(status_code=113) == ["T5", "T2"]
    assert listed(terminal_id="PAX-2") == ["T3"]
    assert listed(order_id="SHARED") == ["T5", "T4"]
    assert listed(order_id="SHARED", status_code=118) == ["T4"]
    assert listed(order_id="SHARED", created_from=DAY + "12:15:00.000Z") == ["T5"]
    assert listed(status_code=118, terminal_id="PAX-2", created_to=DAY + "11:00:00.000Z") == ["T3"]
    assert listed(status_code=125) == []


def test_filters_apply_after_the_limit_so_pages_may_be_short_and_still_continue(
    transactions: TransactionRepository,
) -> None:
    for minute in range(6):
        code = 118 if minute % 3 == 0 else 113
        add(transactions, f"T{minute}", f"10:0{minute}:00.000Z", status_code=code)
    query = TransactionQuery("M1", status_code=118)
    first, after = transactions.page(query, 2, None)
    assert refs(first) == [] and after is not None, "T5 and T4 were read and filtered out"
    seen, pages = every_page(transactions, query, 2)
    assert seen == ["T3", "T0"]
    assert [len(page) for page in pages][:3] == [0, 1, 1]


def test_a_position_from_one_query_never_leaves_its_merchant(transactions: TransactionRepository) -> None:
    add(transactions, "T1", "10:00:00.000Z")
    add(transactions, "X1", "09:00:00.000Z", merchant="M2")
    after = {"created_at": DAY + "10:00:00.000Z", "transaction_reference": "T1"}
    assert refs(transactions.page(TransactionQuery("M1"), 10, after)[0]) == []
    assert refs(transactions.page(TransactionQuery("M2"), 10, after)[0]) == ["X1"]


# -- order details --------------------------------------------------------------------------------


def test_order_details_round_trip(order_details: OrderDetailsRepository) -> None:
    details = details_of(1)
    assert order_details.put_if_newer(details)
    assert order_details.get("M1", "O-1") == details
    assert order_details.get("M2", "O-1") is None and order_details.get("M1", "O-2") is None


def test_details_of_a_newer_attempt_replace_older_ones_never_the_reverse(
    order_details: OrderDetailsRepository,
) -> None:
    assert order_details.put_if_newer(details_of(2, description="second"))
    assert not order_details.put_if_newer(details_of(1, description="first"))
    assert not order_details.put_if_newer(details_of(2, description="second, redelivered"))
    stored = order_details.get("M1", "O-1")
    assert stored is not None and (stored.attempt, stored.description) == (2, "second")
    assert order_details.put_if_newer(details_of(3, description="third", amount=None))
    stored = order_details.get("M1", "O-1")
    assert stored is not None and (stored.attempt, stored.description, stored.amount) == (3, "third", None)


# -- IPN inbox ------------------------------------------------------------------------------------


def test_the_first_ipn_of_a_reference_is_kept(ipn_inbox: IpnInbox) -> None:
    assert ipn_inbox.store("T1", "M1", '{"amount":899}', "sha-1", NOW)
    assert not ipn_inbox.store("T1", "M1", '{"amount":1}', "sha-2", NOW + 5)
    assert ipn_inbox.get("T1") == {
        "transaction_reference": "T1",
        "merchant_id": "M1",
        "body_json": '{"amount":899}',
        "body_sha256": "sha-1",
        "received_at_ms": NOW,
    }
    assert ipn_inbox.get("T2") is None


def test_marking_merged_keeps_the_first_merge_time(ipn_inbox: IpnInbox) -> None:
    ipn_inbox.store("T1", "M1", "{}", "sha", NOW)
    ipn_inbox.mark_merged("T1", NOW + 10)
    ipn_inbox.mark_merged("T1", NOW + 20)
    stored = ipn_inbox.get("T1")
    assert stored is not None and (stored["merged_at_ms"], stored["body_sha256"]) == (NOW + 10, "sha")


def test_marking_an_unknown_ipn_merged_is_refused_and_creates_nothing(ipn_inbox: IpnInbox) -> None:
    with pytest.raises(ConditionFailed):
        ipn_inbox.mark_merged("T-unknown", NOW)
    assert ipn_inbox.get("T-unknown") is None

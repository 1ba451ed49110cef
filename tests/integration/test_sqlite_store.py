"""The embedded SQLite store of the local stack: the same conditional semantics as the DynamoDB
adapters (claims, conditional transitions, the head and dispatch written together, version guards),
and the queue and stream tables that stand in for SQS and DynamoDB Streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chalicelib import jsonutil
from chalicelib.adapters.sqlite.store import SqliteStore
from chalicelib.console.domain import OrderDetails, Transaction, TransactionQuery
from chalicelib.exceptions import ConditionFailed
from chalicelib.merchants import enrollment
from chalicelib.merchants.auth import Authenticator
from chalicelib.payments import domain
from chalicelib.payments.domain import Dispatch, DispatchState, Terminal, Transition
from local.pollers import SqliteQueuePoller
from tests.conftest import PASSPHRASE, TERMINAL_ID
from tests.contract.builders import NOW, head_and_dispatch, race
from tests.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    """A fresh store in its own directory, per test."""
    store = SqliteStore.open(tmp_path / "data", clock=clock)
    yield store
    store.close()


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    sqlite_store.terminals.put(Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True))
    return sqlite_store


def started(store: SqliteStore, request_id: str = "r-1", **kwargs: Any) -> Dispatch:
    head, dispatch = head_and_dispatch(request_id, **kwargs)
    store.payments.start_attempt(head, dispatch, None)
    return dispatch


# -- terminals ----------------------------------------------------------------------------------------


def test_terminal_round_trips(store: SqliteStore) -> None:
    terminal = Terminal("PAX-2", "M1", None, online=False, last_seen_at="2026-11-28T03:00:00Z", status_at_ms=5)
    store.terminals.put(terminal)
    assert store.terminals.get("PAX-2") == terminal
    assert store.terminals.get("PAX-unknown") is None


def test_claim_marks_a_free_terminal_busy_with_its_order(store: SqliteStore) -> None:
    assert store.terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 1000, "M1#O-1")
    terminal = store.terminals.get(TERMINAL_ID)
    assert terminal is not None
    assert (terminal.busy_request_id, terminal.busy_until_ms, terminal.busy_order) == ("r-1", NOW + 1000, "M1#O-1")
    assert terminal.is_busy(NOW + 999) and not terminal.is_busy(NOW + 1000)


# -- payments -------------------------------------------------------------------------------------------


def test_first_attempt_writes_head_dispatch_and_the_stream_record_together(store: SqliteStore) -> None:
    head, dispatch = head_and_dispatch()
    store.payments.start_attempt(head, dispatch, None)
    assert store.payments.get_head("M1", "O-1") == head
    assert store.payments.get_dispatch("r-1") == dispatch
    [record] = store.payments_stream.read(0)
    assert record.event_name == "INSERT"
    assert record.image["pk"] == "ORDER#M1#O-1" and record.image["request_json"] == head.request_json
    assert record.image["expires_at"] == head.updated_at_ms // 1000 + 90 * 86_400


def test_a_retry_replaces_the_head_it_read_and_streams_a_change(store: SqliteStore) -> None:
    started(store)
    head, dispatch = head_and_dispatch("r-2", attempt=2)
    store.payments.start_attempt(head, dispatch, 1)
    assert store.payments.get_head("M1", "O-1") == head
    assert store.payments.get_dispatch("r-1") is not None and store.payments.get_dispatch("r-2") == dispatch
    assert [r.event_name for r in store.payments_stream.read(0)] == ["INSERT", "MODIFY"]


def test_retry_against_a_stale_attempt_number_or_a_missing_head_fails(store: SqliteStore) -> None:
    head, dispatch = head_and_dispatch("r-2", attempt=2)
    with pytest.raises(ConditionFailed):
        store.payments.start_attempt(head, dispatch, 1)
    started(store)
    head, dispatch = head_and_dispatch("r-3", attempt=3)
    with pytest.raises(ConditionFailed):
        store.payments.start_attempt(head, dispatch, 2)
    assert store.payments.get_dispatch("r-3") is None and store.payments.get_dispatch("r-2") is None


def test_a_reused_request_id_fails_and_writes_nothing(store: SqliteStore) -> None:
    started(store)
    head, dispatch = head_and_dispatch("r-1", order_id="O-2")
    with pytest.raises(ConditionFailed):
        store.payments.start_attempt(head, dispatch, None)
    assert store.payments.get_head("M1", "O-2") is None


def test_transition_moves_forward_and_counts_versions(store: SqliteStore) -> None:
    started(store)
    acked = store.payments.apply(
        Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, NOW + 50, terminal_id=TERMINAL_ID)
    )
    assert (acked.state, acked.acked_at_ms, acked.finished_at_ms, acked.version) == (
        DispatchState.ACKNOWLEDGED,
        NOW + 50,
        None,
        1,
    )
    result = {"payment_status": "Success", "error_data": {"code": "00", "rate": Decimal("0.055")}}
    done = store.payments.apply(Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, NOW + 900, result=result))
    assert (done.state, done.finished_at_ms, done.version, done.result) == (
        DispatchState.SUCCEEDED,
        NOW + 900,
        2,
        result,
    )
    assert store.payments.get_dispatch("r-1") == done
    assert done.result is not None and done.result["error_data"]["rate"] == Decimal("0.055")


def after_each_read(
    monkeypatch: pytest.MonkeyPatch, repository: Any, method: str, action: Callable[[str], object]
) -> None:
    """``repository.<method>`` (a read by key) returns what it read, and then ``action`` runs with
    that key: another writer, between the read and the write that follows it. The action's own
    reads are plain reads."""
    owner = type(repository)
    read = getattr(owner, method)

    def intercepted(self: Any, key: str) -> Any:
        found = read(self, key)
        monkeypatch.setattr(owner, method, read)
        try:
            action(key)
        finally:
            monkeypatch.setattr(owner, method, intercepted)
        return found

    monkeypatch.setattr(owner, method, intercepted)


def writes_between_read_and_write(store: SqliteStore, monkeypatch: pytest.MonkeyPatch, *moves: Transition) -> None:
    """Each of the next reads of a dispatch returns what it read, and then another writer applies
    the next of ``moves``: the version judged is stale by the time the update lands."""
    pending = list(moves)
    after_each_read(
        monkeypatch, store.payments, "get_dispatch", lambda _: pending and store.payments.apply(pending.pop(0))
    )


def an_ack_is_refused_and_the_result_stands(store: SqliteStore) -> None:
    """An ACK judged on a pending copy lands after the result: refused, and nothing is written."""
    with pytest.raises(ConditionFailed, match="ack refused"):
        store.payments.apply(
            Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, NOW + 50, terminal_id=TERMINAL_ID)
        )
    now = store.payments.get_dispatch("r-1")
    assert now is not None and (now.state, now.acked_at_ms, now.version) == (DispatchState.SUCCEEDED, None, 1)


def test_a_transition_that_lost_a_race_is_judged_again_on_the_row_as_it_now_is(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(store)
    ack = Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, NOW + 50, terminal_id=TERMINAL_ID)
    writes_between_read_and_write(store, monkeypatch, ack)
    # Judged on PENDING, written after the ACK landed: judged again on ACKNOWLEDGED, still allowed.
    result = {"payment_status": "Success"}
    done = store.payments.apply(Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, NOW + 900, result=result))
    assert (done.state, done.acked_at_ms, done.version) == (DispatchState.SUCCEEDED, NOW + 50, 2)


def test_a_transition_the_new_row_no_longer_allows_is_refused_and_writes_nothing(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(store)
    result = {"payment_status": "Success"}
    writes_between_read_and_write(
        store, monkeypatch, Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, NOW + 40, result=result)
    )
    an_ack_is_refused_and_the_result_stands(store)


def test_a_dispatch_that_keeps_changing_under_a_transition_is_reported_not_looped_on_forever(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(store)
    from chalicelib.adapters.sqlite import payments as sqlite_payments

    # Every read is stale by the time its update lands: someone else keeps writing the row.
    after_each_read(
        monkeypatch,
        store.payments,
        "get_dispatch",
        lambda request_id: store.db.write_one(
            "UPDATE dispatches SET version = version + 1 WHERE request_id = ?", (request_id,)
        ),
    )
    with pytest.raises(ConditionFailed, match="kept changing"):
        store.payments.apply(
            Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, NOW + 50, terminal_id=TERMINAL_ID)
        )
    monkeypatch.undo()
    after = store.payments.get_dispatch("r-1")
    assert after is not None and after.state == DispatchState.PENDING
    assert after.version == sqlite_payments._MAX_APPLY_RACES


def in_another_thread(action: Any) -> Any:
    """What another handler or request thread does: its own copy of each dispatch, not ours."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(action()))
    worker.start()
    worker.join(10)
    return out[0]


def test_a_stale_copy_this_thread_read_is_judged_again_before_a_refusal(store: SqliteStore) -> None:
    started(store)
    assert store.payments.get_dispatch("r-1") is not None  # this thread's copy: pending
    in_another_thread(
        lambda: store.payments.apply(
            Transition("r-1", domain.ACK_TIMEOUT, DispatchState.TIMED_OUT, NOW + 10_000, reason="ack_timeout")
        )
    )
    # A late result is refused on a pending dispatch, allowed on a timed-out one: the copy is stale,
    # so the refusal is not final until the row is read again.
    late = store.payments.apply(
        Transition(
            "r-1", domain.LATE_RESULT, DispatchState.SUCCEEDED, NOW + 12_000, result={"payment_status": "Success"}
        )
    )
    assert (late.state, late.late, late.version) == (DispatchState.SUCCEEDED, True, 2)


def test_a_stale_copy_that_would_allow_a_transition_loses_to_the_row_as_it_now_is(store: SqliteStore) -> None:
    started(store)
    assert store.payments.get_dispatch("r-1") is not None  # this thread's copy: pending, version 0
    result = {"payment_status": "Success"}
    in_another_thread(
        lambda: store.payments.apply(Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, NOW + 40, result=result))
    )
    an_ack_is_refused_and_the_result_stands(store)


def test_a_transition_right_after_a_read_judges_that_copy_without_reading_again(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(store)
    assert store.payments.get_dispatch("r-1") is not None
    reads: list[str] = []
    after_each_read(monkeypatch, store.payments, "get_dispatch", reads.append)
    acked = store.payments.apply(
        Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, NOW + 50, terminal_id=TERMINAL_ID)
    )
    assert reads == [] and acked.version == 1
    # The written row is the thread's copy now: the next transition reads nothing either.
    store.payments.apply(Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, NOW + 90, result={"x": 1}))
    assert reads == []


def test_heads_and_dispatches_past_their_retention_are_purged_and_no_others(store: SqliteStore) -> None:
    started(store, "r-old", order_id="O-old")
    head, dispatch = head_and_dispatch("r-new", order_id="O-new")
    store.payments.start_attempt(replace(head, updated_at_ms=NOW + 10_000), dispatch, None)
    old_expiry = (NOW + 1) // 1000 + 90 * 86_400
    assert store.payments.purge_expired(old_expiry) == 0
    assert store.payments.purge_expired(old_expiry + 1) == 2
    assert store.payments.get_head("M1", "O-old") is None and store.payments.get_dispatch("r-old") is None
    assert store.payments.get_head("M1", "O-new") is not None and store.payments.get_dispatch("r-new") is not None


def test_every_attribute_of_a_dispatch_comes_back_in_its_own_place(store: SqliteStore) -> None:
    """Rows are taken apart by position: every attribute distinct, so a swapped pair would show,
    in what a read returns and in what a transition returns."""
    head, dispatch = head_and_dispatch()
    dispatch = replace(
        dispatch,
        state=DispatchState.CANCELLING,
        acked_at_ms=NOW + 1,
        finished_at_ms=NOW + 2,
        reason="a reason",
        late=True,
        cancel_requested_at_ms=NOW + 4,
        version=5,
        extra={"source": "ecr"},
    )
    store.payments.start_attempt(head, dispatch, None)
    assert store.payments.get_dispatch("r-1") == dispatch
    result = {"payment_status": "Failed", "error_data": {"rate": Decimal("0.5")}}
    done = store.payments.apply(Transition("r-1", domain.RESULT, DispatchState.CANCELLED, NOW + 9, result=result))
    assert done == replace(
        dispatch, state=DispatchState.CANCELLED, finished_at_ms=NOW + 9, result=result, result_at_ms=NOW + 9, version=6
    )
    assert store.payments.get_dispatch("r-1") == done


def test_dispatch_extra_attributes_round_trip(store: SqliteStore) -> None:
    head, dispatch = head_and_dispatch()
    dispatch = replace(dispatch, extra={"notified_at_ms": NOW, "source": "ecr"})
    store.payments.start_attempt(head, dispatch, None)
    assert store.payments.get_dispatch("r-1") == dispatch


# -- merchants ------------------------------------------------------------------------------------------


def test_merchant_and_login_round_trip_and_authenticate(sqlite_store: SqliteStore) -> None:
    merchants = sqlite_store.merchants
    assert merchants.get_merchant("M1") is None and merchants.get_login("shop") is None
    passphrase = enrollment.create_merchant(merchants, "M1", "shop", "a-long-password-1", None, None)
    assert merchants.get_merchant("M1") == {
        "pk": "MERCHANT#M1",
        "merchant_id": "M1",
        "notify_passphrase": passphrase,
        "basket_policy": "lenient",
    }
    merchants.put_merchant("M1", "https://shop.example/notify", "np", "strict")
    assert merchants.get_merchant("M1") == {
        "pk": "MERCHANT#M1",
        "merchant_id": "M1",
        "notify_url": "https://shop.example/notify",
        "notify_passphrase": "np",
        "basket_policy": "strict",
    }
    login = merchants.get_login("shop")
    assert login is not None and login["merchant_id"] == "M1" and "a-long-password-1" not in str(login)
    import base64

    header = "Basic " + base64.b64encode(b"shop:a-long-password-1").decode()
    assert Authenticator(merchants, 60).merchant_for(header) == "M1"


# -- Console: transactions ------------------------------------------------------------------------------


def tx(reference: str = "T-1", created_at: str = "2026-11-28T03:00:00.000Z", **overrides: Any) -> Transaction:
    values: dict[str, Any] = {
        "transaction_reference": reference,
        "merchant_id": "M1",
        "order_id": "O-1",
        "terminal_id": TERMINAL_ID,
        "operation": "Debit",
        "ipn_status": "approved",
        "status_code": 118,
        "status": "Captured",
        "amount_minor": 899,
        "currency": "EUR",
        "created_at": created_at,
        "updated_at": created_at,
        "version": 1,
    }
    values.update(overrides)
    return Transaction(**values)


def test_transaction_is_created_once_then_written_only_at_its_version(store: SqliteStore) -> None:
    transactions = store.transactions
    first = tx(custom_data_json=jsonutil.dumps({"price": Decimal("8.99")}), flags=["amount_mismatch"])
    transactions.put(first, 0)
    assert transactions.get("T-1") == first
    assert transactions.get("T-1").custom_data == {"price": Decimal("8.99")}  # type: ignore[union-attr]
    with pytest.raises(ConditionFailed):
        transactions.put(replace(first, status_code=113), 0)
    with pytest.raises(ConditionFailed):
        transactions.put(replace(first, status_code=113, version=3), 2)
    assert transactions.get("T-1") == first
    second = replace(first, status_code=125, version=2)
    transactions.put(second, 1)
    assert transactions.get("T-1") == second
    with pytest.raises(ConditionFailed):
        transactions.put(replace(first, version=1), 5)
    assert transactions.get("T-unknown") is None


def test_of_concurrent_writers_at_one_version_exactly_one_wins(store: SqliteStore) -> None:
    store.transactions.put(tx(), 0)
    outcomes = race(*[lambda i=i: store.transactions.put(tx(status_code=100 + i, version=2), 1) for i in range(6)])
    assert outcomes.count(None) == 1 and sum(isinstance(o, ConditionFailed) for o in outcomes) == 5
    assert store.transactions.get("T-1").version == 2  # type: ignore[union-attr]


def test_notification_is_marked_enqueued_once_for_its_pending_status(store: SqliteStore) -> None:
    transactions = store.transactions
    with pytest.raises(ConditionFailed):
        transactions.mark_enqueued("T-unknown", 118)
    transactions.put(tx(notify_pending_status=118, notify_enqueued=False), 0)
    with pytest.raises(ConditionFailed):
        transactions.mark_enqueued("T-1", 113)
    transactions.mark_enqueued("T-1", 118)
    stored = transactions.get("T-1")
    assert stored is not None and (stored.notify_enqueued, stored.version) == (True, 2)
    with pytest.raises(ConditionFailed):
        transactions.mark_enqueued("T-1", 118)


def test_a_notification_change_that_lost_a_race_keeps_the_other_writers_change_too(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = store.transactions
    # Written by another thread (the copy this thread would judge first is its own last write):
    # this thread reads the row, and the delivery lands between that read and its write.
    in_another_thread(lambda: transactions.put(tx(notify_pending_status=118, notify_enqueued=False), 0))
    raced: list[str] = []

    def delivered_meanwhile(reference: str) -> None:
        if not raced:  # between the first read and its write, a delivery is recorded
            raced.append(reference)
            transactions.record_delivery(reference, 116)

    after_each_read(monkeypatch, transactions, "get", delivered_meanwhile)
    transactions.mark_enqueued("T-1", 118)
    monkeypatch.undo()
    stored = transactions.get("T-1")
    assert stored is not None
    assert (stored.notify_enqueued, stored.notified_statuses, stored.version) == (True, [116], 3)


def test_a_transaction_that_keeps_changing_under_a_notification_change_is_reported(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = store.transactions
    in_another_thread(lambda: transactions.put(tx(notify_pending_status=118, notify_enqueued=False), 0))
    # Every read is stale by the time its write lands: someone else keeps writing the row.
    after_each_read(
        monkeypatch,
        transactions,
        "get",
        lambda reference: store.db.write_one(
            "UPDATE transactions SET version = version + 1 WHERE transaction_reference = ?", (reference,)
        ),
    )
    with pytest.raises(ConditionFailed, match="kept changing"):
        transactions.mark_enqueued("T-1", 118)
    monkeypatch.undo()
    stored = transactions.get("T-1")
    assert stored is not None and stored.notify_enqueued is False


def test_a_notification_change_right_after_this_threads_write_judges_that_copy_without_reading_again(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = store.transactions
    transactions.put(tx(notify_pending_status=118, notify_enqueued=False), 0)
    reads: list[str] = []
    after_each_read(monkeypatch, transactions, "get", reads.append)
    transactions.mark_enqueued("T-1", 118)
    assert reads == []
    # The written row is the thread's copy now: the next change reads nothing either.
    transactions.record_delivery("T-1", 118)
    assert reads == []
    monkeypatch.undo()
    stored = transactions.get("T-1")
    assert stored is not None
    assert (stored.notify_enqueued, stored.notified_statuses, stored.version) == (True, [118], 3)


def test_a_stale_copy_of_this_threads_write_loses_to_the_row_as_it_now_is(store: SqliteStore) -> None:
    transactions = store.transactions
    transactions.put(tx(notify_pending_status=118, notify_enqueued=False), 0)  # this thread's copy: version 1
    in_another_thread(lambda: transactions.record_delivery("T-1", 116))
    transactions.mark_enqueued("T-1", 118)
    stored = transactions.get("T-1")
    assert stored is not None
    assert (stored.notify_enqueued, stored.notified_statuses, stored.version) == (True, [116], 3)


def test_a_refusal_on_a_stale_copy_is_judged_again_on_the_row_before_it_is_final(store: SqliteStore) -> None:
    transactions = store.transactions
    transactions.put(tx(notify_pending_status=118, notify_enqueued=True), 0)  # this copy: 118 queued already
    # Another writer moves the status on: 113 is now pending and not queued.
    in_another_thread(
        lambda: transactions.put(tx(status_code=113, version=2, notify_pending_status=113, notify_enqueued=False), 1)
    )
    transactions.mark_enqueued("T-1", 113)  # refused on the copy, allowed on the row
    stored = transactions.get("T-1")
    assert stored is not None and (stored.notify_pending_status, stored.notify_enqueued, stored.version) == (
        113,
        True,
        3,
    )
    with pytest.raises(ConditionFailed):
        transactions.mark_enqueued("T-1", 113)  # refused on the copy, and on the row read again


def test_a_delivery_is_recorded_once_per_status(store: SqliteStore) -> None:
    transactions = store.transactions
    with pytest.raises(ConditionFailed):
        transactions.record_delivery("T-unknown", 118)
    transactions.put(tx(), 0)
    transactions.record_delivery("T-1", 118)
    with pytest.raises(ConditionFailed):
        transactions.record_delivery("T-1", 118)
    transactions.record_delivery("T-1", 125)
    stored = transactions.get("T-1")
    assert stored is not None and (stored.notified_statuses, stored.version) == ([118, 125], 3)


def fill(store: SqliteStore) -> None:
    rows = [
        ("T-01", "M1", "O-1", "2026-11-01T10:00:00.000Z", 118, "PAX-A"),
        ("T-02", "M1", "O-2", "2026-11-02T10:00:00.000Z", 113, "PAX-A"),
        ("T-03", "M1", "O-1", "2026-11-03T10:00:00.000Z", 125, "PAX-B"),
        ("T-04", "M1", "O-3", "2026-11-03T10:00:00.000Z", 118, "PAX-B"),
        ("T-05", "M1", "O-4", "2026-11-05T10:00:00.000Z", 118, "PAX-A"),
        ("T-99", "M2", "O-1", "2026-11-04T10:00:00.000Z", 118, "PAX-A"),
    ]
    for reference, merchant, order, created, code, terminal in rows:
        store.transactions.put(
            tx(reference, created, merchant_id=merchant, order_id=order, status_code=code, terminal_id=terminal), 0
        )


def all_pages(store: SqliteStore, query: TransactionQuery, limit: int) -> list[list[str]]:
    pages, after = [], None
    while True:
        items, after = store.transactions.page(query, limit, after)
        pages.append([t.transaction_reference for t in items])
        if after is None:
            return pages


def test_page_lists_one_merchant_newest_first_and_continues_from_its_position(store: SqliteStore) -> None:
    fill(store)
    assert all_pages(store, TransactionQuery("M1"), 2) == [["T-05", "T-04"], ["T-03", "T-02"], ["T-01"]]
    assert all_pages(store, TransactionQuery("M1"), 5) == [["T-05", "T-04", "T-03", "T-02", "T-01"]]
    assert all_pages(store, TransactionQuery("M2"), 10) == [["T-99"]]
    assert all_pages(store, TransactionQuery("M3"), 10) == [[]]
    _, position = store.transactions.page(TransactionQuery("M1"), 2, None)
    assert position == {"created_at": "2026-11-03T10:00:00.000Z", "transaction_reference": "T-04"}
    assert set(position) == {"created_at", "transaction_reference"}


def test_page_filters_by_order_dates_status_and_terminal(store: SqliteStore) -> None:
    fill(store)
    assert all_pages(store, TransactionQuery("M1", order_id="O-1"), 10) == [["T-03", "T-01"]]
    assert all_pages(store, TransactionQuery("M2", order_id="O-1"), 10) == [["T-99"]]
    dates = TransactionQuery("M1", created_from="2026-11-02T10:00:00.000Z", created_to="2026-11-03T10:00:00.000Z")
    assert all_pages(store, dates, 10) == [["T-04", "T-03", "T-02"]]
    assert all_pages(store, TransactionQuery("M1", created_from="2026-11-04"), 10) == [["T-05"]]
    assert all_pages(store, TransactionQuery("M1", created_to="2026-11-02"), 10) == [["T-01"]]
    # As on DynamoDB, the filters apply after the limit: pages may come back short and still continue.
    assert all_pages(store, TransactionQuery("M1", status_code=118), 1) == [["T-05"], ["T-04"], [], [], ["T-01"]]
    assert all_pages(store, TransactionQuery("M1", status_code=118, terminal_id="PAX-A"), 10) == [["T-05", "T-01"]]


def test_a_position_from_another_merchant_never_pages_into_its_data(store: SqliteStore) -> None:
    fill(store)
    _, position = store.transactions.page(TransactionQuery("M1"), 1, None)
    items, _ = store.transactions.page(TransactionQuery("M2"), 10, position)
    assert {t.merchant_id for t in items} <= {"M2"}


def test_list_for_order_returns_every_transaction_of_the_order(store: SqliteStore) -> None:
    fill(store)
    for index in range(120):
        store.transactions.put(tx(f"T-X{index:03d}", "2026-11-06T00:00:00.000Z", order_id="O-big"), 0)
    assert len(store.transactions.list_for_order("M1", "O-big")) == 120
    assert [t.transaction_reference for t in store.transactions.list_for_order("M1", "O-1")] == ["T-03", "T-01"]


# -- Console: order details and the IPN inbox -----------------------------------------------------------


def details(attempt: int, description: str = "d") -> OrderDetails:
    return OrderDetails(
        "M1", "O-1", attempt, TERMINAL_ID, "Debit", 899, "EUR", description, None, '[{"p":8.99}]', None, None, NOW, NOW
    )


def test_order_details_newest_attempt_wins(store: SqliteStore) -> None:
    repository = store.order_details
    assert repository.get("M1", "O-1") is None
    assert repository.put_if_newer(details(2, "second"))
    assert not repository.put_if_newer(details(1, "first"))
    assert not repository.put_if_newer(details(2, "again"))
    assert repository.get("M1", "O-1") == details(2, "second")
    assert repository.put_if_newer(details(3, "third"))
    assert repository.get("M1", "O-1") == details(3, "third")
    assert repository.get("M2", "O-1") is None


# -- queues and the outbox ------------------------------------------------------------------------------


def test_a_received_message_is_invisible_until_its_visibility_timeout_then_comes_back(
    store: SqliteStore, clock: FakeClock
) -> None:
    queue = store.ipn_queue
    queue.send({"transaction_reference": "T-1", "amount": Decimal("8.99")})
    [first] = queue.receive(10, visibility_s=30)
    assert jsonutil.loads(first.body) == {"transaction_reference": "T-1", "amount": Decimal("8.99")}
    assert first.receive_count == 1
    assert queue.receive(10, visibility_s=30) == []
    clock.advance(29_999)
    assert queue.receive(10, visibility_s=30) == []
    clock.advance(1)
    [again] = queue.receive(10, visibility_s=30)
    assert (again.message_id, again.receive_count) == (first.message_id, 2)
    assert not queue.delete(first.receipt)  # a stale receipt deletes nothing
    assert queue.depth() == 1
    assert queue.delete(again.receipt)
    assert queue.depth() == 0


def test_a_delayed_message_waits_for_its_delay(store: SqliteStore, clock: FakeClock) -> None:
    store.notifications.send({"n": 1}, delay_s=30)
    assert store.notifications.receive() == []
    clock.advance(30_000)
    assert len(store.notifications.receive()) == 1


def test_retry_later_brings_a_failed_message_back_after_the_wait(store: SqliteStore, clock: FakeClock) -> None:
    store.ipn_queue.send({"n": 1})
    [message] = store.ipn_queue.receive(visibility_s=30)
    assert store.ipn_queue.retry_later(message.receipt, 1)
    clock.advance(999)
    assert store.ipn_queue.receive() == []
    clock.advance(1)
    assert [m.message_id for m in store.ipn_queue.receive()] == [message.message_id]


def test_settling_a_batch_deletes_the_handled_and_brings_the_failed_back_after_the_wait(
    store: SqliteStore, clock: FakeClock
) -> None:
    queue = store.ipn_queue
    for index in range(3):
        queue.send({"n": index})
    handled, failed = queue.receive(2, visibility_s=30)
    [stale] = queue.receive(1, visibility_s=1)
    clock.advance(1000)
    [stale_again] = queue.receive(10, visibility_s=30)
    # the third was received again meanwhile: its first receipt is stale and changes nothing
    assert stale_again.message_id == stale.message_id
    assert queue.settle([handled.receipt, stale.receipt], [failed.receipt], retry_after_s=1) == 2
    assert queue.depth() == 2
    clock.advance(999)
    assert queue.receive(10) == []
    clock.advance(1)
    [back] = queue.receive(10)
    assert back.message_id == failed.message_id
    assert queue.settle([back.receipt, stale_again.receipt], [], retry_after_s=1) == 2
    assert queue.depth() == 0


def test_a_woken_queue_poller_hands_over_what_arrived_during_its_batching_window(store: SqliteStore) -> None:
    batches: list[list[Any]] = []

    def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
        batches.append([jsonutil.loads(record["body"])["n"] for record in event["Records"]])
        return {"batchItemFailures": []}

    stop = threading.Event()
    poller = SqliteQueuePoller(store.ipn_queue, handler, stop)
    poller.batching_window_s = 0.5
    poller.start()
    try:
        deadline = time.monotonic() + 5
        while not _idle(poller) and time.monotonic() < deadline:
            time.sleep(0.01)
        for index in range(3):
            store.ipn_queue.send({"n": index})
        while sum(len(batch) for batch in batches) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        store.db.notify()
        poller.join(5)
    assert batches == [[0, 1, 2]]
    assert store.ipn_queue.depth() == 0


def _idle(poller: SqliteQueuePoller) -> bool:
    """The poller has polled once and found nothing (it now waits for activity)."""
    return poller.idles > 0


def test_a_message_received_too_often_moves_to_its_dead_letter_queue(store: SqliteStore, clock: FakeClock) -> None:
    store.ipn_queue.send({"transaction_reference": "T-poison"})
    store.ipn_queue.send({"transaction_reference": "T-fine"})
    for _ in range(5):
        received = store.ipn_queue.receive(10, visibility_s=1)
        assert "T-poison" in [jsonutil.loads(m.body)["transaction_reference"] for m in received]
        for message in received:
            if "T-fine" in message.body:
                store.ipn_queue.delete(message.receipt)
        clock.advance(1000)
    assert store.ipn_queue.receive(10) == []
    assert store.ipn_queue.depth() == 0
    [parked] = store.ipn_dlq.receive()
    assert jsonutil.loads(parked.body) == {"transaction_reference": "T-poison"}


def test_a_batch_is_the_oldest_visible_first_whatever_order_the_messages_were_sent_in(
    store: SqliteStore, clock: FakeClock
) -> None:
    queue = store.notifications
    queue.send({"n": "late"}, delay_s=2)  # sent first, visible last
    for index in range(11):
        clock.advance(100)
        queue.send({"n": index})
    clock.advance(2000)
    batch = queue.receive(12)
    assert [jsonutil.loads(m.body)["n"] for m in batch] == [*range(11), "late"]
    assert len({m.receipt for m in batch}) == 12


def test_a_batch_that_parks_a_message_is_filled_up_with_the_next_ones(store: SqliteStore, clock: FakeClock) -> None:
    queue = store.ipn_queue
    queue.send({"n": "poison"})
    for _ in range(5):
        assert len(queue.receive(10, visibility_s=1)) == 1
        clock.advance(1000)
    for index in range(3):
        queue.send({"n": index})
    batch = queue.receive(3)
    assert [(jsonutil.loads(m.body)["n"], m.receive_count) for m in batch] == [(0, 1), (1, 1), (2, 1)]
    assert [jsonutil.loads(m.body)["n"] for m in store.ipn_dlq.receive()] == ["poison"]


def test_a_message_another_receiver_took_between_the_read_and_the_write_is_not_received_twice(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = store.ipn_queue
    for index in range(3):
        queue.send({"n": index})
    write = store.db.write_returning
    taken: list[Any] = []

    def another_receiver_first(statement: str, parameters: Any = ()) -> Any:
        if not taken:  # between this receive's read and its write, another receiver takes one
            monkeypatch.setattr(store.db, "write_returning", write)
            taken.extend(queue.receive(1))
        return write(statement, parameters)

    monkeypatch.setattr(store.db, "write_returning", another_receiver_first)
    batch = queue.receive(10)
    assert [jsonutil.loads(m.body)["n"] for m in taken] == [0]
    assert [jsonutil.loads(m.body)["n"] for m in batch] == [1, 2]
    assert {m.receive_count for m in [*taken, *batch]} == {1}


def test_a_batch_larger_than_one_statement_takes_is_settled_whole(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chalicelib.adapters.sqlite.queues._RECEIPTS_PER_STATEMENT", 2)
    queue = store.notifications
    for index in range(4):
        queue.send({"n": index})
    batch = queue.receive(10)
    assert queue.settle([m.receipt for m in batch[:3]], [], retry_after_s=1) == 3
    assert queue.settle([batch[0].receipt], [], retry_after_s=1) == 0  # stale: deletes nothing
    assert queue.depth() == 1
    assert queue.settle([batch[3].receipt], [], retry_after_s=1) == 1
    assert queue.depth() == 0


def test_a_receipt_not_of_this_stores_making_is_still_settled(store: SqliteStore) -> None:
    queue = store.notifications
    queue.send({"n": 0})
    [message] = queue.receive(1)
    # A receipt handed out before receipts named their message (a store kept from an older version).
    store.db.write_one("UPDATE messages SET receipt = ? WHERE receipt = ?", ("0" * 32, message.receipt))
    assert queue.settle([message.receipt], [], retry_after_s=1) == 0
    assert queue.settle(["0" * 32], [], retry_after_s=1) == 1
    assert queue.depth() == 0


def test_queues_are_separate_and_oldest_first(store: SqliteStore) -> None:
    for index in range(3):
        store.notifications.send({"n": index})
    store.ipn_queue.send({"other": True})
    assert [jsonutil.loads(m.body)["n"] for m in store.notifications.receive(2)] == [0, 1]
    assert [jsonutil.loads(m.body)["n"] for m in store.notifications.receive(10)] == [2]


def test_outbox_resumes_after_the_position_its_reader_saved(tmp_path: Path, store: SqliteStore) -> None:
    for index in range(3):
        started(store, f"r-{index}", order_id=f"O-{index}")
    records = store.payments_stream.read(store.payments_stream.position())
    assert [r.image["order_id"] for r in records] == ["O-0", "O-1", "O-2"]
    store.payments_stream.advance(records[1].sequence)
    reopened = SqliteStore.open(tmp_path / "data")
    try:
        left = reopened.payments_stream.read(reopened.payments_stream.position())
        assert [r.image["order_id"] for r in left] == ["O-2"]
    finally:
        reopened.close()


def test_everything_written_is_there_after_reopening_the_directory(
    tmp_path: Path, store: SqliteStore, clock: FakeClock
) -> None:
    started(store)
    store.terminals.claim(TERMINAL_ID, "r-1", NOW, NOW + 120_000, "M1#O-1")
    store.transactions.put(tx(), 0)
    store.notifications.send({"transaction_reference": "T-1", "status_code": 118})
    reopened = SqliteStore.open(tmp_path / "data", clock=clock)
    try:
        terminal = reopened.terminals.get(TERMINAL_ID)
        assert terminal is not None and (terminal.busy_request_id, terminal.busy_until_ms) == ("r-1", NOW + 120_000)
        assert reopened.payments.get_dispatch("r-1") == store.payments.get_dispatch("r-1")
        assert reopened.transactions.get("T-1") == tx()
        assert [jsonutil.loads(m.body) for m in reopened.notifications.receive()] == [
            {"transaction_reference": "T-1", "status_code": 118}
        ]
    finally:
        reopened.close()

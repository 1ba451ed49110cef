"""``GET /v1/connector/orders``: the Console's payments in flight and recent ones, with their
timeline, filtered by state or terminal, paged by a cursor bound to its listing."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib import protocol
from chalicelib.errors import ApiError
from chalicelib.payments import orders
from chalicelib.payments.domain import Dispatch, DispatchState, OrderHead
from tests.fakes import FakePayments

NOW = 1_795_000_000_000


def list_orders(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """The listing as its JSON body."""
    return orders.list_orders(*args, **kwargs).wire()


def start(payments: FakePayments, order_id: str, at_ms: int, merchant_id: str = "M1", terminal: str = "PAX-1") -> str:
    request_id = f"r-{merchant_id}-{order_id}"
    head = OrderHead(merchant_id, order_id, 1, request_id, terminal, "h" * 64, "{}", at_ms, at_ms)
    dispatch = Dispatch(
        request_id,
        merchant_id,
        order_id,
        1,
        terminal,
        "Debit",
        1250,
        "EUR",
        DispatchState.PENDING,
        at_ms,
        ack_deadline_ms=at_ms + 10_000,
        deadline_ms=at_ms + 120_000,
    )
    payments.start_attempt(head, dispatch, None)
    return request_id


@pytest.fixture
def payments() -> FakePayments:
    return FakePayments()


def test_an_order_shows_its_timeline_from_received_to_final(payments: FakePayments) -> None:
    request_id = start(payments, "A", NOW)
    payments.transition(request_id, frozenset({DispatchState.PENDING}), DispatchState.ACKNOWLEDGED, NOW + 150)
    payments.transition(
        request_id,
        frozenset({DispatchState.ACKNOWLEDGED}),
        DispatchState.SUCCEEDED,
        NOW + 1700,
        result={"payment_status": "Success", "transaction_reference": "TX-1", "masked_pan": "497010******0001"},
    )

    (order,) = list_orders(payments, "M1", {}, NOW + 2000)["orders"]

    assert order["state"] == "succeeded"
    assert order["transaction_reference"] == "TX-1"
    assert (order["amount"], order["currency"], order["terminal_id"]) == (1250, "EUR", "PAX-1")
    assert order["received_at"] == protocol.timestamp_from_ms(NOW)
    assert order["acknowledged_at"] == protocol.timestamp_from_ms(NOW + 150)
    assert order["finished_at"] == protocol.timestamp_from_ms(NOW + 1700)
    assert "masked_pan" not in order


def test_in_flight_lists_pending_and_acknowledged_but_not_what_passed_its_deadline(payments: FakePayments) -> None:
    start(payments, "OLD", NOW - 200_000)  # never answered: reads as timed out
    acked = start(payments, "ACKED", NOW - 5_000)
    payments.transition(acked, frozenset({DispatchState.PENDING}), DispatchState.ACKNOWLEDGED, NOW - 4_000)
    start(payments, "NEW", NOW)
    done = start(payments, "DONE", NOW - 1_000)
    payments.transition(
        done, frozenset({DispatchState.PENDING}), DispatchState.FAILED, NOW - 500, reason="terminal_busy"
    )

    page = list_orders(payments, "M1", {"state": "in_flight"}, NOW)

    assert [order["order_id"] for order in page["orders"]] == ["NEW", "ACKED"]
    timed_out = list_orders(payments, "M1", {"state": "timed_out"}, NOW)["orders"]
    assert [(order["order_id"], order["reason"]) for order in timed_out] == [("OLD", "ack_timeout")]


def test_pages_follow_the_cursor_to_the_end(payments: FakePayments) -> None:
    for index in range(5):
        start(payments, f"O-{index}", NOW + index)

    first = list_orders(payments, "M1", {"limit": "2"}, NOW + 10)
    second = list_orders(payments, "M1", {"limit": "2", "cursor": first["next_cursor"]}, NOW + 10)
    third = list_orders(payments, "M1", {"limit": "2", "cursor": second["next_cursor"]}, NOW + 10)

    ids = [order["order_id"] for page in (first, second, third) for order in page["orders"]]
    assert ids == ["O-4", "O-3", "O-2", "O-1", "O-0"]
    assert third["next_cursor"] is None


def test_the_terminal_filter_lists_only_that_terminal(payments: FakePayments) -> None:
    start(payments, "A", NOW, terminal="PAX-1")
    start(payments, "B", NOW + 1, terminal="PAX-2")

    page = list_orders(payments, "M1", {"terminal_id": "PAX-2"}, NOW + 5)

    assert [order["order_id"] for order in page["orders"]] == ["B"]


def test_another_merchants_orders_are_never_listed(payments: FakePayments) -> None:
    start(payments, "MINE", NOW)
    start(payments, "THEIRS", NOW + 1, merchant_id="M2")

    assert [order["order_id"] for order in list_orders(payments, "M1", {}, NOW)["orders"]] == ["MINE"]


def test_a_cursor_of_another_merchant_or_filter_is_refused(payments: FakePayments) -> None:
    for index in range(3):
        start(payments, f"O-{index}", NOW + index)
    cursor = list_orders(payments, "M1", {"limit": "1"}, NOW)["next_cursor"]
    assert cursor is not None

    for merchant, params in (("M2", {"cursor": cursor}), ("M1", {"cursor": cursor, "state": "succeeded"})):
        with pytest.raises(ApiError) as refused:
            list_orders(payments, merchant, params, NOW)
        assert (refused.value.status, refused.value.code) == (400, "validation.cursor_invalid")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "validation.limit_invalid"),
        ({"limit": "101"}, "validation.limit_invalid"),
        ({"limit": "²"}, "validation.limit_invalid"),
        ({"state": "paid"}, "validation.state_unknown"),
        ({"cursor": "not-a-cursor"}, "validation.cursor_invalid"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_parameter(
    payments: FakePayments, params: dict[str, str], code: str
) -> None:
    with pytest.raises(ApiError) as refused:
        list_orders(payments, "M1", params, NOW)
    assert (refused.value.status, refused.value.code) == (400, code)
    assert refused.value.path == next(iter(params))


def test_a_rare_state_stops_after_a_bounded_read_with_a_cursor_to_go_on(payments: FakePayments) -> None:
    for index in range(30):
        start(payments, f"O-{index:02}", NOW + index)
    payments.reads = 0

    page = list_orders(payments, "M1", {"state": "cancelled", "limit": "2"}, NOW + 100)

    assert page["orders"] == []
    assert page["next_cursor"] is not None
    assert payments.reads == 10  # five store pages of two heads, one dispatch read each


def test_in_flight_stops_reading_at_the_first_attempt_older_than_the_longest_deadline(
    payments: FakePayments,
) -> None:
    for index in range(30):
        start(payments, f"OLD-{index:02}", NOW - 600_000 + index)
    start(payments, "NEW", NOW - 1_000)
    payments.reads = 0

    page = list_orders(payments, "M1", {"state": "in_flight", "limit": "5"}, NOW, longest_deadline_ms=120_000)

    assert [order["order_id"] for order in page["orders"]] == ["NEW"]
    assert page["next_cursor"] is None
    assert payments.reads == 1

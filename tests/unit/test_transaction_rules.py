"""The pure merge rules: status mapping, details by attempt, the amount_mismatch flag, order independence."""

from __future__ import annotations

import pytest

from chalicelib.console.domain import (
    IpnFacts,
    OrderDetails,
    apply_details,
    apply_ipn,
    console_view,
    status_code_from_filter,
    status_for,
)

NOW = "2026-11-28T03:12:01.000Z"


def ipn(amount: int = 899, currency: str = "EUR", status: str = "approved", operation: str = "Debit") -> IpnFacts:
    return IpnFacts(
        "T1", "M1", "O1", "PAX-1", operation, status, amount, currency, "A1", True, "VISA", "497010******0001", "chip",
        "2026-11-28T03:12:00.123Z",
    )  # fmt: skip


def details(attempt: int = 1, amount: int | None = 899, description: str = "d") -> OrderDetails:
    return OrderDetails(
        "M1", "O1", attempt, "PAX-1", "Debit", amount, "EUR", description, "https://m.example/n",
        '[{"name":"x","unit_price":8.99}]', '{"customer_id":"c1"}', '{"k":"v"}', 1, 2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("status", "operation", "code"),
    [
        ("approved", "Debit", 118),
        ("approved", "Credit", 125),
        ("declined", "Debit", 113),
        ("cancelled", "Credit", 115),
        ("error", "Debit", 113),
    ],
)
def test_status_codes(status: str, operation: str, code: int) -> None:
    assert status_for(status, operation) == code


def test_status_filters_accept_codes_and_labels_only() -> None:
    assert [status_code_from_filter(v) for v in ("118", "captured", "REFUNDED", "999", "paid")] == [
        118,
        118,
        125,
        None,
        None,
    ]


def test_details_then_ipn_equals_ipn_then_details() -> None:
    ipn_first = apply_details(apply_ipn(None, ipn(), NOW), details())
    details_first = apply_ipn(apply_details(apply_ipn(None, ipn(), NOW), details()), ipn(), NOW)
    assert ipn_first.business_view() == details_first.business_view()
    assert ipn_first.flags == []


def test_an_older_attempts_details_do_not_replace_newer_ones() -> None:
    tx = apply_details(apply_ipn(None, ipn(), NOW), details(attempt=2, description="new"))
    assert apply_details(tx, details(attempt=1, description="old")).description == "new"
    assert apply_details(tx, details(attempt=3, description="newer")).description == "newer"


@pytest.mark.parametrize(
    ("amount", "currency", "flagged"), [(899, "EUR", False), (900, "EUR", True), (899, "USD", True)]
)
def test_amount_mismatch_flag(amount: int, currency: str, flagged: bool) -> None:
    tx = apply_details(apply_ipn(None, ipn(amount=amount, currency=currency), NOW), details())
    assert (tx.flags == ["amount_mismatch"]) is flagged
    assert tx.amount_minor == amount and tx.currency == currency, "the IPN's figures stand"


def test_the_flag_clears_when_newer_details_agree() -> None:
    tx = apply_details(apply_ipn(None, ipn(), NOW), details(attempt=1, amount=1000))
    assert tx.flags == ["amount_mismatch"]
    assert apply_details(tx, details(attempt=2, amount=899)).flags == []


def test_console_view_keeps_basket_prices_exact() -> None:
    view = console_view(apply_details(apply_ipn(None, ipn(), NOW), details()))
    assert str(view["basket"][0]["unit_price"]) == "8.99"
    assert view["customer"] == {"customer_id": "c1"} and view["custom_data"] == {"k": "v"}


def basket_details(amount: int, total: str) -> OrderDetails:
    line = f'{{"name":"x","quantity":1,"unit_price":8.99,"discount":0,"total_amount":{total}}}'
    return OrderDetails(
        "M1", "O1", 1, "PAX-1", "Debit", amount, "EUR", "d", None, f"[{line}]", None, None, 1, 2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("amount", "total", "flags"),
    [
        (899, "8.99", []),
        (100, "8.99", ["amount_mismatch", "basket_mismatch"]),
        (999, "9.99", ["amount_mismatch", "basket_mismatch"]),
    ],
    ids=["adds-up", "hipay-original-amount", "line-not-its-product"],
)
def test_a_basket_that_does_not_add_up_flags_the_transaction_basket_mismatch(
    amount: int, total: str, flags: list[str]
) -> None:
    tx = apply_details(apply_ipn(None, ipn(amount=899), NOW), basket_details(amount, total))
    assert tx.flags == flags

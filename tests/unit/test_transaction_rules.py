"""The pure merge rules: status mapping, details by attempt, the amount_mismatch flag, order independence."""

from __future__ import annotations

from typing import get_args

import pytest

from chalicelib.console.domain import (
    STATUS_LABELS,
    OrderDetails,
    apply_details,
    apply_ipn,
    status_code_from_filter,
    status_for,
)
from chalicelib.console.schemas import IpnBody, StatusCode, StatusLabel, TransactionView

NOW = "2026-11-28T03:12:01.000Z"


def ipn(amount: int = 899, status: str = "approved", operation: str = "Debit") -> IpnBody:
    return IpnBody.model_validate(
        {
            "transaction_reference": "T1",
            "merchant_id": "M1",
            "order_id": "O1",
            "terminal_id": "PAX-1",
            "operation": operation,
            "status": status,
            "amount": amount,
            "currency": "EUR",
            "authorization_code": "A1",
            "authorized_online": True,
            "card": {"brand": "VISA", "masked_pan": "497010******0001", "entry_mode": "chip"},
            "processed_at": "2026-11-28T03:12:00.123Z",
        }
    )


def details(attempt: int = 1, amount: int | None = 899, description: str = "d", currency: str = "EUR") -> OrderDetails:
    return OrderDetails(
        "M1", "O1", attempt, "PAX-1", "Debit", amount, currency, description, "https://m.example/n",
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
    ("amount", "order_currency", "flagged"), [(899, "EUR", False), (900, "EUR", True), (899, "USD", True)]
)
def test_amount_mismatch_flag(amount: int, order_currency: str, flagged: bool) -> None:
    tx = apply_details(apply_ipn(None, ipn(amount=amount), NOW), details(currency=order_currency))
    assert (tx.flags == ["amount_mismatch"]) is flagged
    assert tx.amount_minor == amount and tx.currency == "EUR", "the IPN's figures stand"


def test_the_flag_clears_when_newer_details_agree() -> None:
    tx = apply_details(apply_ipn(None, ipn(), NOW), details(attempt=1, amount=1000))
    assert tx.flags == ["amount_mismatch"]
    assert apply_details(tx, details(attempt=2, amount=899)).flags == []


def test_console_view_keeps_basket_prices_exact() -> None:
    view = TransactionView.from_transaction(apply_details(apply_ipn(None, ipn(), NOW), details())).wire()
    assert str(view["basket"][0]["unit_price"]) == "8.99"
    assert view["customer"] == {"customer_id": "c1"} and view["custom_data"] == {"k": "v"}


def test_the_card_of_the_ipn_is_kept_and_a_missing_card_is_no_card() -> None:
    tx = apply_ipn(None, ipn(), NOW)
    assert (tx.card_brand, tx.masked_pan, tx.entry_mode) == ("VISA", "497010******0001", "chip")
    without = apply_ipn(None, ipn().model_copy(update={"card": None}), NOW)
    assert (without.card_brand, without.masked_pan, without.entry_mode) == (None, None, None)


def test_the_views_status_enumerations_are_the_status_tables() -> None:
    assert set(get_args(StatusCode)) == set(STATUS_LABELS)
    assert set(get_args(StatusLabel)) == set(STATUS_LABELS.values())

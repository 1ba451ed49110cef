"""The basket arithmetic behind the basket_mismatch flag: each line's total, and the lines against the amount."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from chalicelib.money import basket_mismatch
from chalicelib.payments.schemas import Order


def line(unit_price: str, total: str, quantity: int = 1, discount: str | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "product_reference": "REF-1",
        "name": "thing",
        "type": "good",
        "quantity": quantity,
        "unit_price": Decimal(unit_price),
        "tax_rate": Decimal("20"),
        "total_amount": Decimal(total),
    }
    if discount is not None:
        fields["discount"] = Decimal(discount)
    return fields


FIRST_LINE = "order.basket.0.total_amount"
TWO_LINES = [line("8.99", "8.99"), line("0.505", "1.01", quantity=2)]

# Each case: the basket, the amount in minor units, and where its arithmetic is off (None: it adds up).
CASES: dict[str, tuple[list[dict[str, Any]], int, str | None]] = {
    "half-cent-rounds-up": ([line("0.1250", "0.13")], 13, None),
    "half-cent-rounded-to-even-is-off": ([line("0.1250", "0.12")], 12, FIRST_LINE),
    "discount-is-added": ([line("3.50", "10.00", quantity=3, discount="-0.50")], 1000, None),
    "discount-left-out-is-off": ([line("3.50", "10.50", quantity=3, discount="-0.50")], 1050, FIRST_LINE),
    "every-line-counts": (TWO_LINES, 1000, None),
    "last-line-alone-is-not-the-amount": (TWO_LINES, 101, "order.basket"),
    "lines-short-of-the-amount": ([line("8.99", "8.99")], 900, "order.basket"),
}


@pytest.mark.parametrize(("lines", "amount", "where"), CASES.values(), ids=CASES.keys())
def test_a_basket_mismatch_names_where_the_arithmetic_is_off(
    lines: list[dict[str, Any]], amount: int, where: str | None
) -> None:
    assert basket_mismatch(lines, amount) == where


@pytest.mark.parametrize(("lines", "amount", "where"), CASES.values(), ids=CASES.keys())
def test_the_lenient_flag_and_the_strict_refusal_find_the_same_mismatch(
    lines: list[dict[str, Any]], amount: int, where: str | None
) -> None:
    # A lenient merchant's basket is flagged where a strict merchant's is refused: one rule, two policies.
    order = Order.model_validate({"order_id": "O1", "price": {"amount": amount}, "basket": lines})
    error = order.basket_error()
    assert (error.path if error else None) == where == basket_mismatch(lines, amount)


def test_a_line_without_a_discount_is_still_checked() -> None:
    # No discount means a discount of 0, not a line that escapes the check.
    assert basket_mismatch([line("2.50", "7.50", quantity=3)], 750) is None
    assert basket_mismatch([line("2.50", "7.00", quantity=3)], 700) == "order.basket.0.total_amount"

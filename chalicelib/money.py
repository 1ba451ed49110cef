"""Money: integer minor units everywhere, and the one way they are written in major units.

>>> format_major(899), format_major(5), format_major(-120)
('8.99', '0.05', '-1.20')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

# The largest amount a payment may carry (docs/payment-api.md), in minor units.
MAX_AMOUNT = 99_999_999
CENT = Decimal("0.01")
BASKET_MISMATCH = "basket_mismatch"


def format_major(amount_minor: int) -> str:
    """Integer cents -> major units with 2 decimals, by integer arithmetic only."""
    sign = "-" if amount_minor < 0 else ""
    whole, cents = divmod(abs(amount_minor), 100)
    return f"{sign}{whole}.{cents:02d}"


def basket_mismatch(lines: Sequence[Mapping[str, Any]] | None, amount_minor: Any) -> str | None:
    """Where a validated basket's arithmetic is off (docs/payment-api.md), as a dotted path; None when it adds
    up (or holds no arithmetic to check: lines without prices).

    A line's ``total_amount`` must be ``unit_price × quantity + discount`` rounded half-up to the
    cent, and the lines' totals must add up to ``amount`` ÷ 100. HiPay's own examples break these, so
    whether a mismatch is refused is the merchant's ``basket_policy``; this only finds it.

    >>> line = {"unit_price": Decimal("8.99"), "quantity": 1, "total_amount": Decimal("8.99")}
    >>> basket_mismatch([line], 899), basket_mismatch([line], 100)
    (None, 'order.basket')
    """
    if not lines:
        return None
    total = Decimal(0)
    try:
        for index, line in enumerate(lines):
            unit, quantity = Decimal(line["unit_price"]), int(line["quantity"])
            expected = (unit * quantity + Decimal(line.get("discount") or 0)).quantize(CENT, rounding=ROUND_HALF_UP)
            if expected != Decimal(line["total_amount"]):
                return f"order.basket.{index}.total_amount"
            total += expected
        return None if total * 100 == amount_minor else "order.basket"
    except (KeyError, TypeError, ValueError, InvalidOperation):
        return None

"""Money: integer minor units everywhere, and the one way they are written in major units.

>>> format_major(899), format_major(5), format_major(-120)
('8.99', '0.05', '-1.20')
"""

from __future__ import annotations

from decimal import Decimal

# The largest amount a payment may carry (CONTRACT §1), in minor units.
MAX_AMOUNT = 99_999_999
CENT = Decimal("0.01")


def format_major(amount_minor: int) -> str:
    """Integer cents -> major units with 2 decimals, by integer arithmetic only."""
    sign = "-" if amount_minor < 0 else ""
    whole, cents = divmod(abs(amount_minor), 100)
    return f"{sign}{whole}.{cents:02d}"

"""Composite keys, in one place: every store and every feature spells them the same way.

>>> order_key("M1", "A-1")
'M1#A-1'
"""

from __future__ import annotations


def order_key(merchant_id: str, order_id: str) -> str:
    """One merchant's order: the idempotency key, the terminal claim's owner, the Console's order index."""
    return f"{merchant_id}#{order_id}"

"""Card data: only a masked PAN may ever be stored, logged or shown.

>>> is_masked_pan("497010******0001"), is_masked_pan("4970101234560001")
(True, False)
"""

from __future__ import annotations

from typing import Any

_MASK = frozenset("*Xx#")
# ASCII digits only: ``str.isdigit`` also takes other scripts' digits and superscripts.
_SHOWN = frozenset("0123456789") | _MASK


def is_masked_pan(value: Any) -> bool:
    """Digits may show only in the first 6 and the last 4 places; everything between is masked."""
    if not isinstance(value, str) or not 12 <= len(value) <= 19:
        return False
    head, middle, tail = value[:6], value[6:-4], value[-4:]
    return all(ch in _SHOWN for ch in head + tail) and all(ch in _MASK for ch in middle)

"""What every listing shares: its page size parameter and its opaque cursors.

A cursor is where the previous page stopped, bound to the listing it came from (``scope``: the
caller's merchant and the listing's ordering), so a cursor of another listing or another merchant,
or a forged one, is a ``400``:

    >>> cursor = encode_cursor("M1:created", {"created_at": "2026-11-28T03:12:00.000Z"})
    >>> decode_cursor(cursor, "M1:created")
    {'created_at': '2026-11-28T03:12:00.000Z'}
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from chalicelib.errors import ApiError, validation_error

MAX_LIMIT = 100
# ASCII digits only: str.isdigit() also accepts "²" and other digits int() then refuses.
_LIMIT = re.compile(r"^[0-9]{1,3}$")


def page_limit(raw: str | None, default: int) -> int:
    """The ``limit`` parameter: absent is ``default``; anything but 1…100 in ASCII digits is a 400."""
    if raw is None:
        return default
    if not _LIMIT.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise validation_error("limit_invalid", f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    return int(raw)


def cursor_invalid() -> ApiError:
    return validation_error("cursor_invalid", "cursor is not a next_cursor of this listing", "cursor")


def encode_cursor(scope: str, position: Any) -> str:
    plain = json.dumps({"s": scope, "k": position}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(plain.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(raw: str | None, scope: str) -> Any:
    """The position a cursor of this listing carries (its shape is the caller's to check), None
    without a cursor; a cursor of another listing, or none at all, is a 400."""
    if raw is None:
        return None
    try:
        plain = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not raw or not isinstance(plain, dict) or plain.get("s") != scope or "k" not in plain:
            raise cursor_invalid()
    except (ValueError, TypeError, binascii.Error):
        raise cursor_invalid() from None
    return plain["k"]

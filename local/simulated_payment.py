"""What a simulated card payment produces (result bodies, receipts) and what a request must hold.

Kept apart from the MQTT plumbing of ``local.simulator`` so the payment side reads on its own:

    >>> approved_result("PAX-1", request)["masked_pan"]        # doctest: +SKIP
    '497010******0001'
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from chalicelib.exceptions import EnvelopeError
from chalicelib.money import format_major
from chalicelib.protocol import parse_timestamp_ms

# At or above this amount (minor units) the simulated terminal always asks the issuer online.
ONLINE_FLOOR_MINOR = 5_000
_SIM_CARD = {"card_brand": "VISA", "masked_pan": "497010******0001"}


def _receipt(terminal_id: str, request: dict[str, Any], outcome: str, auth_code: str = "") -> str:
    body = request["body"]
    lines = [
        "NEPTING SIMULATOR",
        f"TERMINAL {terminal_id}",
        f"ORDER {body['order_id']}",
        f"{'REFUND' if body['transaction_type'] == 'Credit' else 'DEBIT'} "
        f"{format_major(body['amount'])} {body['currency']}",
        f"{_SIM_CARD['card_brand']} {_SIM_CARD['masked_pan']}",
        *([f"AUTH {auth_code}"] if auth_code else []),
        outcome,
    ]
    return base64.b64encode("\n".join(lines).encode("utf-8")).decode("ascii")


def approved_result(terminal_id: str, request: dict[str, Any]) -> dict[str, Any]:
    body = request["body"]
    auth_code = f"{secrets.randbelow(1_000_000):06d}"
    return {
        "payment_status": "Success",
        "transaction_reference": f"SIM-{uuid.uuid4().hex[:20].upper()}",
        "authorization_code": auth_code,
        **_SIM_CARD,
        "authorized_online": bool(body["force_authorization"]) or body["amount"] >= ONLINE_FLOOR_MINOR,
        "receipt": _receipt(terminal_id, request, "APPROVED", auth_code),
    }


def declined_result(terminal_id: str, request: dict[str, Any]) -> dict[str, Any]:
    return {
        **failed_result("declined"),
        "error_data": {"reason": "insufficient_funds"},
        **_SIM_CARD,
        "authorized_online": True,
        "receipt": _receipt(terminal_id, request, "DECLINED"),
    }


def failed_result(error_code: str) -> dict[str, Any]:
    return {"payment_status": "Failed", "error_code": error_code, "error_data": {}}


def _require(body: dict[str, Any], name: str, kind: type, allowed: Iterable[Any] | None = None) -> None:
    value = body.get(name)
    # bool is an int in Python; an amount of `true` is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EnvelopeError("bad_body", f"body field {name!r} missing or not {kind.__name__}")
    if allowed is not None and value not in allowed:
        raise EnvelopeError("bad_body", f"body field {name!r} has unexpected value {value!r}")


def _check_payment_request(body: dict[str, Any]) -> None:
    for name in ("order_id", "currency", "description"):
        _require(body, name, str)
    _require(body, "transaction_type", str, ("Debit", "Credit"))
    _require(body, "amount", int)
    _require(body, "force_authorization", bool)
    _require(body, "expires_at", str)
    parse_timestamp_ms(body["expires_at"])
    if body["amount"] <= 0:
        raise EnvelopeError("bad_body", "amount must be positive")


def _check_cancel_request(body: dict[str, Any]) -> None:
    _require(body, "order_id", str)
    _require(body, "target_request_id", str)


_BODY_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "payment_request": _check_payment_request,
    "cancel_request": _check_cancel_request,
}


def check_request(message_type: str, body: dict[str, Any]) -> None:
    """Raise ``EnvelopeError`` unless ``body`` is a well-formed cloud → terminal request of that type."""
    check = _BODY_CHECKS.get(message_type)
    if check is None:
        raise EnvelopeError("unknown_type", f"unexpected message type {message_type!r}")
    check(body)

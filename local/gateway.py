"""The simulated Nepting payment gateway: after each simulated card payment, it sends the IPN
(CONTRACT §3) to the local API, signed with the seed's IPN secret, as the real gateway would.

A payment the terminal declined or failed is reported too (declined / error); a cancelled one as
cancelled. The IPN goes out on its own thread, a little after the terminal's result, like the real
thing, and is retried a few times if the API does not answer 200 — then reported, never dropped
silently.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chalicelib.console.ipn import ipn_signature
from chalicelib.protocol import format_timestamp

if TYPE_CHECKING:
    from local.stack import RunningStack

log = logging.getLogger(__name__)
_ATTEMPTS = 5


def ipn_body(merchant_id: str, request: dict[str, Any], result: dict[str, Any]) -> dict[str, Any] | None:
    """The IPN for one terminal result; None when there is nothing the gateway processed."""
    body = request["body"]
    reference = result.get("transaction_reference")
    if not reference:
        return None
    error_code = result.get("error_code")
    if result.get("payment_status") == "Success":
        status = "approved"
    elif error_code == "cancelled":
        status = "cancelled"
    elif error_code == "declined":
        status = "declined"
    else:
        status = "error"
    return {
        "transaction_reference": reference,
        "merchant_id": merchant_id,
        "order_id": body["order_id"],
        "terminal_id": request["terminal_id"],
        "operation": body["transaction_type"],
        "status": status,
        "amount": body["amount"],
        "currency": body["currency"],
        "authorization_code": result.get("authorization_code"),
        "authorized_online": bool(result.get("authorized_online", False)),
        "card": {
            "brand": result.get("card_brand"),
            "masked_pan": result.get("masked_pan"),
            "entry_mode": "contactless",
        },
        "processed_at": format_timestamp(datetime.now(UTC)),
    }


def post_ipn(api_url: str, secret: str, body: dict[str, Any]) -> int:
    raw = json.dumps(body, separators=(",", ":")).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - the local API's own http URL
        f"{api_url}/v1/ipn/nepting",
        data=raw,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Nepting-Timestamp": str(timestamp),
            "X-Nepting-Signature": ipn_signature(secret, str(timestamp), raw),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - local API URL
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def ipn_hook(stack: RunningStack) -> Any:
    merchants = {t.terminal_id: t.merchant_id for t in stack.seed.terminals}
    secret = stack.seed.ipn_secret

    def deliver(body: dict[str, Any]) -> None:
        for attempt in range(_ATTEMPTS):
            if stack.stop_event.wait(0.05 * 2**attempt):
                return
            status = post_ipn(stack.api_url, secret, body)
            if status == 200:
                return
            log.warning("IPN for %s answered %s", body["transaction_reference"], status)
        log.error("IPN for %s not accepted after %d attempts", body["transaction_reference"], _ATTEMPTS)

    def on_result(terminal_id: str, request: dict[str, Any], result: dict[str, Any]) -> None:
        merchant_id = merchants.get(terminal_id)
        body = ipn_body(merchant_id, request, result) if merchant_id else None
        if body is not None:
            threading.Thread(target=deliver, args=(body,), name="gateway-ipn", daemon=True).start()

    return on_result

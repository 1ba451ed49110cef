"""The simulated Nepting payment gateway: after each terminal result the cloud records, it sends
the IPN to the local API, signed with the seed's IPN secret, as the real gateway would.

Whatever the terminal: a simulated one, an outside app, or one enrolled while the stack runs. A
payment the terminal declined or failed is reported too (declined / error); a cancelled one as
cancelled. The IPN goes out on its own thread, a little after the result, like the real thing, and
is retried a few times if the API does not answer 200 — then reported, never dropped silently.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chalicelib.console.ipn import ipn_signature
from chalicelib.payments.ports import Dispatch, PaymentRepository
from chalicelib.protocol import format_timestamp

if TYPE_CHECKING:
    from local.stack import RunningStack

log = logging.getLogger(__name__)
_ATTEMPTS = 5
Handler = Callable[[dict[str, Any], Any], Any]


# The terminal event handler's outcomes for a result the cloud recorded (on time or late).
RECORDED_RESULTS = frozenset({"succeeded", "failed", "late_succeeded", "late_failed"})


def ipn_body(dispatch: Dispatch) -> dict[str, Any] | None:
    """The IPN for a dispatch whose terminal result the cloud recorded; None without one.

    A result without the terminal's transaction reference (a decline, an error) gets the gateway's
    own, derived from the request so that a repeated result sends the same IPN again, not another.
    """
    result = dispatch.result
    if not result:
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
    card = {"brand": result.get("card_brand"), "masked_pan": result.get("masked_pan"), "entry_mode": "contactless"}
    return {
        "transaction_reference": result.get("transaction_reference") or f"GW-{dispatch.request_id[:20].upper()}",
        "merchant_id": dispatch.merchant_id,
        "order_id": dispatch.order_id,
        "terminal_id": dispatch.terminal_id,
        "operation": dispatch.transaction_type,
        "status": status,
        "amount": dispatch.amount,
        "currency": dispatch.currency,
        "authorization_code": result.get("authorization_code"),
        "authorized_online": bool(result.get("authorized_online", False)),
        "card": card if result.get("card_brand") or result.get("masked_pan") else None,
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


def observing_results(stack: RunningStack, events_handler: Handler, payments: PaymentRepository) -> Handler:
    """The terminal event handler, followed by the gateway: after each result the cloud records,
    from any terminal (simulated, an outside app, one enrolled since), the IPN goes out."""
    secret = stack.seed.ipn_secret

    def deliver(body: dict[str, Any]) -> None:
        for attempt in range(_ATTEMPTS):
            if stack.stop_event.wait(0.05 * 2**attempt):
                return
            try:
                status = post_ipn(stack.api_url, secret, body)
            except OSError as exc:
                log.warning("IPN for %s not delivered: %s", body["transaction_reference"], exc)
                continue
            if status == 200:
                return
            log.warning("IPN for %s answered %s", body["transaction_reference"], status)
        log.error("IPN for %s not accepted after %d attempts", body["transaction_reference"], _ATTEMPTS)

    def handler(event: dict[str, Any], context: Any) -> Any:
        answer = events_handler(event, context)
        if (answer or {}).get("outcome") in RECORDED_RESULTS:
            envelope = json.loads(base64.b64decode(event["payload"]))
            dispatch = payments.get_dispatch(str(envelope["request_id"]))
            body = ipn_body(dispatch) if dispatch is not None else None
            if body is not None:
                threading.Thread(target=deliver, args=(body,), name="gateway-ipn", daemon=True).start()
        return answer

    return handler

"""The simulated Nepting payment gateway: after each terminal result the cloud records, it sends
the IPN to the local API, signed with the seed's IPN secret, as the real gateway would.

Whatever the terminal: a simulated one, an outside app, or one enrolled while the stack runs. A
payment the terminal declined or failed is reported too (declined / error); a cancelled one as
cancelled. The IPN goes out a little after the result, like the real thing, from a few workers
holding keep-alive connections to the API (a thread and a TCP connection per IPN cost more CPU than
the IPN route itself), and is retried a few times if the API does not answer 200 or cannot be
reached — then reported, never dropped silently.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import queue
import socket
import threading
import time
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
# How long after the terminal's result the gateway sends its IPN (the first try).
_DELAY_S = 0.05
_WORKERS = 4
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


class IpnPoster:
    """One keep-alive HTTP connection to the local API, Nagle off; reconnects after any failure."""

    def __init__(self, api_url: Callable[[], str], secret: str) -> None:
        # The URL is read at each connect: the workers start before the API server has its port.
        self.api_url, self.secret = api_url, secret
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: dict[str, Any]) -> int:
        """The API's answer; raises OSError or HTTPException when there was none."""
        raw = json.dumps(body, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Nepting-Timestamp": timestamp,
            "X-Nepting-Signature": ipn_signature(self.secret, timestamp, raw),
        }
        conn = self._connection()
        try:
            conn.request("POST", "/v1/ipn/nepting", body=raw, headers=headers)
            response = conn.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.getheader("connection", "").lower() == "close":
            self.close()
        return int(response.status)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port = self.api_url().removeprefix("http://").rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.connect()
            if conn.sock is not None:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def observing_results(stack: RunningStack, events_handler: Handler, payments: PaymentRepository) -> Handler:
    """The terminal event handler, followed by the gateway: after each result the cloud records,
    from any terminal (simulated, an outside app, one enrolled since), the IPN goes out."""
    secret = stack.seed.ipn_secret
    # (when to send, the terminal's result message), in the order the results came: the due times
    # only grow. The gateway's own work (reading the result, building and posting the IPN) is done
    # by its workers, not in the topic rule's lane: it is the payment gateway's, not the cloud's.
    pending: queue.Queue[tuple[float, str]] = queue.Queue()

    def deliver(poster: IpnPoster, due: float, body: dict[str, Any]) -> None:
        for attempt in range(_ATTEMPTS):
            wait_s = due - time.monotonic() if attempt == 0 else _DELAY_S * 2**attempt
            if stack.stop_event.wait(max(0.0, wait_s)):
                return
            try:
                status = poster.post(body)
            except (OSError, http.client.HTTPException) as exc:
                log.warning("IPN for %s not delivered: %r", body["transaction_reference"], exc)
                continue
            if status == 200:
                return
            log.warning("IPN for %s answered %s", body["transaction_reference"], status)
        log.error("IPN for %s not accepted after %d attempts", body["transaction_reference"], _ATTEMPTS)

    def work() -> None:
        poster = IpnPoster(lambda: stack.api_url, secret)
        try:
            while not stack.stop_event.is_set():
                try:
                    due, payload = pending.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    envelope = json.loads(base64.b64decode(payload))
                    dispatch = payments.get_dispatch(str(envelope["request_id"]))
                except Exception:  # a worker must outlive one bad read; the IPN is reported, not dropped silently
                    log.exception("IPN not built: the recorded result could not be read")
                    continue
                body = ipn_body(dispatch) if dispatch is not None else None
                if body is not None:
                    deliver(poster, due, body)
        finally:
            poster.close()

    for index in range(_WORKERS):
        threading.Thread(target=work, name=f"gateway-ipn-{index}", daemon=True).start()

    def handler(event: dict[str, Any], context: Any) -> Any:
        answer = events_handler(event, context)
        if (answer or {}).get("outcome") in RECORDED_RESULTS:
            pending.put((time.monotonic() + _DELAY_S, event["payload"]))
        return answer

    return handler

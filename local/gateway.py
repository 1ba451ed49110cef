"""The simulated Nepting payment gateway: after each simulated card payment, it sends the IPN
(CONTRACT §3) to the local API, signed with the seed's IPN secret, as the real gateway would.

A payment the terminal declined or failed is reported too (declined / error); a cancelled one as
cancelled. The IPN goes out a little after the terminal's result, like the real thing, from a few
workers holding keep-alive connections to the API (a thread and a TCP connection per IPN cost more
CPU than the IPN route itself), and is retried a few times if the API does not answer 200 or cannot
be reached — then reported, never dropped silently.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chalicelib.console.ipn import ipn_signature
from chalicelib.protocol import format_timestamp

if TYPE_CHECKING:
    from local.stack import RunningStack

log = logging.getLogger(__name__)
_ATTEMPTS = 5
# How long after the terminal's result the gateway sends its IPN (the first try).
_DELAY_S = 0.05
_WORKERS = 4


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


class IpnPoster:
    """One keep-alive HTTP connection to the local API, Nagle off; reconnects after any failure."""

    def __init__(self, api_url: str, secret: str) -> None:
        host, port = api_url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.secret = host, int(port), secret
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
            conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            conn.connect()
            if conn.sock is not None:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def ipn_hook(stack: RunningStack, workers: int = _WORKERS) -> Any:
    merchants = {t.terminal_id: t.merchant_id for t in stack.seed.terminals}
    secret = stack.seed.ipn_secret
    # (when to send, body), in the order the results came: the due times only grow.
    pending: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()

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
        poster = IpnPoster(stack.api_url, secret)
        try:
            while not stack.stop_event.is_set():
                try:
                    due, body = pending.get(timeout=0.2)
                except queue.Empty:
                    continue
                deliver(poster, due, body)
        finally:
            poster.close()

    for index in range(workers):
        threading.Thread(target=work, name=f"gateway-ipn-{index}", daemon=True).start()

    def on_result(terminal_id: str, request: dict[str, Any], result: dict[str, Any]) -> None:
        merchant_id = merchants.get(terminal_id)
        body = ipn_body(merchant_id, request, result) if merchant_id else None
        if body is not None:
            pending.put((time.monotonic() + _DELAY_S, body))

    return on_result

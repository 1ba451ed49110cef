"""Merchant notifications (docs/merchant-notifications.md): HiPay-style signed form POSTs, retried, then parked.

A queue message names a transaction and the status to announce; the body is built from the stored
transaction at send time (so details that arrived after the IPN are included). A failed POST puts
the message back on the queue with a growing delay; after ``notify_give_up_after_s`` since the first
try it goes to the dead-letter queue with its reason. Once a 2xx came back the (reference, status)
is recorded on the transaction and never sent again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from chalicelib import jsonutil, protocol
from chalicelib.config import Settings
from chalicelib.console.domain import STATUS_LABELS, Transaction
from chalicelib.console.ports import FormPoster, TransactionRepository
from chalicelib.exceptions import ConditionFailed, RecordRefused
from chalicelib.merchants.ports import MerchantReader
from chalicelib.money import format_major
from chalicelib.notify_urls import NotifyUrlRefused
from chalicelib.observability import count, log_event
from chalicelib.ports import Clock, MessageQueue

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


@dataclass
class NotifierDeps:
    transactions: TransactionRepository
    merchants: MerchantReader
    queue: MessageQueue
    dead_letters: MessageQueue
    poster: FormPoster
    clock: Clock
    settings: Settings


def _state(status_code: int, ipn_status: str | None) -> str:
    if status_code in (118, 125):
        return "completed"
    return "error" if ipn_status == "error" else "declined"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else jsonutil.dumps(value)


def notification_fields(tx: Transaction, status_code: int) -> list[tuple[str, str]]:
    """The form's fields, in a fixed order (the signature covers the exact bytes)."""
    ipn_status = tx.ipn_status if status_code == tx.status_code else None
    fields = [
        ("state", _state(status_code, ipn_status)),
        ("status", str(status_code)),
        ("message", STATUS_LABELS.get(status_code, "")),
        ("transaction_reference", tx.transaction_reference),
        ("order[id]", tx.order_id),
        ("order[amount]", format_major(tx.amount_minor)),
        ("order[currency]", tx.currency),
        ("captured_amount", format_major(tx.amount_minor if status_code == 118 else 0)),
        ("authorization_code", tx.authorization_code or ""),
        ("payment_product", (tx.card_brand or "").lower()),
    ]
    fields += [(f"custom_data[{key}]", _text(value)) for key, value in tx.custom_data.items()]
    fields.append(("date_created", tx.created_at))
    return fields


def encode_form(fields: list[tuple[str, str]]) -> bytes:
    return urlencode(fields).encode("utf-8")


def allopass_signature(body: bytes, passphrase: str) -> str:
    """Lowercase hex SHA-256(raw body + the merchant's notify passphrase), HiPay's scheme."""
    return hashlib.sha256(body + passphrase.encode("utf-8")).hexdigest()


def retry_delay_s(settings: Settings, failures: int) -> int:
    """30 s, 60 s, 120 s … capped at 900 s (SQS's longest DelaySeconds)."""
    return int(min(settings.notify_max_delay_s, settings.notify_first_delay_s * 2 ** max(0, failures - 1)))


def deliver(deps: NotifierDeps, message: dict[str, Any]) -> str:
    """Handle one queue message; returns the outcome. Raises only when a queue send failed."""
    now = deps.clock.now_ms()
    try:
        reference = message["transaction_reference"]
        status_code = message["status_code"]
        first_try_ms = message.get("first_try_ms") or now
        int(message.get("failures") or 0)
        if not (isinstance(reference, str) and type(status_code) is int and type(first_try_ms) is int):
            raise TypeError("wrong field types")
    except (KeyError, TypeError, ValueError):
        raise RecordRefused("bad_message", "not a notification message") from None
    tx = deps.transactions.get(reference)
    if tx is None:
        return _park(deps, message, first_try_ms, "transaction_missing")
    if status_code in tx.notified_statuses:
        count("NotificationsSkipped", reason="already_acknowledged")
        return "already_acknowledged"
    merchant = deps.merchants.get_merchant(tx.merchant_id) or {}
    url = tx.notify_url or merchant.get("notify_url")
    if not url:
        count("NotificationsSkipped", reason="no_notify_url")
        # A merchant without a notify URL (the local seed's) is normal: nothing to warn about.
        log_event("no notify url; notification not sent", transaction_reference=reference)
        return "no_notify_url"
    passphrase = merchant.get("notify_passphrase")
    if not passphrase:
        return _park(deps, message, first_try_ms, "no_notify_passphrase")
    body = encode_form(notification_fields(tx, status_code))
    headers = {"Content-Type": FORM_CONTENT_TYPE, "X-Allopass-Signature": allopass_signature(body, passphrase)}
    try:
        answer = deps.poster.post(url, body, headers)
    except NotifyUrlRefused as refused:
        # A loopback, private or metadata address (or one it now resolves to): never retried there.
        count("NotificationsRefused", reason=refused.reason)
        return _park(deps, message, first_try_ms, f"notify_url_refused_{refused.reason}")
    if 200 <= answer < 300:
        try:
            deps.transactions.record_delivery(reference, status_code)
        except ConditionFailed:
            count("NotificationsSkipped", reason="recorded_concurrently")
        count("NotificationsDelivered")
        log_event("notification delivered", transaction_reference=reference, order_id=tx.order_id, status=status_code)
        return "delivered"
    count("NotificationsFailed")
    failures = int(message.get("failures") or 0) + 1
    if now - first_try_ms >= deps.settings.notify_give_up_after_s * 1000:
        return _park(deps, message, first_try_ms, f"no_2xx_after_{failures}_tries_last_http_{answer}")
    delay = retry_delay_s(deps.settings, failures)
    deps.queue.send({**message, "first_try_ms": first_try_ms, "failures": failures, "last_http": answer}, delay_s=delay)
    log_event(
        "notification retry scheduled",
        transaction_reference=reference,
        http_status=answer,
        failures=failures,
        delay_s=delay,
    )
    return "retry_scheduled"


def _park(deps: NotifierDeps, message: dict[str, Any], first_try_ms: int, reason: str) -> str:
    parked = {
        **message,
        "first_try_ms": first_try_ms,
        "parked_reason": reason,
        "parked_at": protocol.timestamp_from_ms(deps.clock.now_ms()),
    }
    deps.dead_letters.send(parked)
    count("NotificationsParked")
    log_event(
        "notification parked", level="error", transaction_reference=message.get("transaction_reference"), reason=reason
    )
    return "parked"


def replayable(parked: dict[str, Any]) -> dict[str, Any]:
    """A parked message made new again: it gets a fresh 24 h of tries."""
    drop = ("parked_reason", "parked_at", "first_try_ms", "failures", "last_http")
    return {key: value for key, value in parked.items() if key not in drop}

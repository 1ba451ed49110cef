"""Console transactions as plain Python: the IPN and the order details merged into one record.

No I/O here. A transaction is the IPN's facts (docs/ipn.md) plus, whenever they arrive, the
order's details; both halves are applied by pure functions, so the result does not depend on
which half came first:

    >>> ipn = IpnBody(transaction_reference="T1", merchant_id="M1", order_id="O1", terminal_id="PAX-1",
    ...     operation="Debit", status="approved", amount=899, processed_at="2026-11-28T03:12:00.123Z")
    >>> tx = apply_ipn(None, ipn, "2026-11-28T03:12:01.000Z")
    >>> (tx.status_code, tx.status)
    (118, 'Captured')
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from chalicelib import jsonutil
from chalicelib.console.schemas import IpnBody, IpnCard
from chalicelib.keys import order_key
from chalicelib.money import BASKET_MISMATCH, basket_mismatch

AMOUNT_MISMATCH = "amount_mismatch"

# docs/ipn.md: (IPN status, operation) -> HiPay status code and label.
STATUS_LABELS = {118: "Captured", 125: "Refunded", 113: "Refused", 115: "Cancelled"}
_STATUS_BY_LABEL = {label.lower(): code for code, label in STATUS_LABELS.items()}


def status_for(ipn_status: str, operation: str) -> int:
    if ipn_status == "approved":
        return 125 if operation == "Credit" else 118
    if ipn_status == "cancelled":
        return 115
    # declined and error both end as Refused: no money moved.
    return 113


def status_code_from_filter(value: str) -> int | None:
    """``118`` or ``Captured`` (any case) -> 118; anything else -> None."""
    text = value.strip()
    if text.isdigit():
        code = int(text)
        return code if code in STATUS_LABELS else None
    return _STATUS_BY_LABEL.get(text.lower())


@dataclass(frozen=True)
class TransactionQuery:
    """A Console listing: one merchant's transactions, optionally of one order, between two
    ``created_at`` bounds (both inclusive), with equality filters."""

    merchant_id: str
    order_id: str | None = None
    created_from: str | None = None
    created_to: str | None = None
    status_code: int | None = None
    terminal_id: str | None = None


@dataclass(frozen=True)
class OrderDetails:
    """The order as the ECR sent it, from the order head of its latest attempt (step 2')."""

    merchant_id: str
    order_id: str
    attempt: int
    terminal_id: str
    transaction_type: str
    amount: int | None
    currency: str | None
    description: str | None
    notify_url: str | None
    basket_json: str | None
    customer_json: str | None
    custom_data_json: str | None
    created_at_ms: int
    updated_at_ms: int

    @property
    def merchant_order(self) -> str:
        return order_key(self.merchant_id, self.order_id)


def details_from_head(image: dict[str, Any]) -> OrderDetails:
    """The order head's stream image (``request_json`` = the ECR's ``order``/``customer``/
    ``pos_technical_info``) -> the details a transaction carries."""
    request = jsonutil.loads(image["request_json"])
    order = request.get("order") or {}
    price = order.get("price") or {}
    technical = request.get("pos_technical_info") or {}
    return OrderDetails(
        merchant_id=str(image["merchant_id"]),
        order_id=str(image["order_id"]),
        attempt=int(image["attempt"]),
        terminal_id=str(image.get("terminal_id") or ""),
        transaction_type=str(order.get("transaction_type") or "Debit"),
        amount=price.get("amount") if isinstance(price.get("amount"), int) else None,
        currency=str(price.get("currency") or "EUR"),
        description=order.get("description"),
        notify_url=technical.get("notify_url"),
        basket_json=_json_or_none(order.get("basket")),
        customer_json=_json_or_none(request.get("customer")),
        custom_data_json=_json_or_none(order.get("custom_data")),
        created_at_ms=int(image.get("created_at_ms") or 0),
        updated_at_ms=int(image.get("updated_at_ms") or 0),
    )


def _json_or_none(value: Any) -> str | None:
    # Kept as JSON text: basket prices stay exact Decimals and odd custom_data keys stay intact.
    return None if value is None else jsonutil.dumps(value)


@dataclass
class Transaction:
    transaction_reference: str
    merchant_id: str
    order_id: str
    terminal_id: str
    operation: str
    ipn_status: str
    status_code: int
    status: str
    amount_minor: int
    currency: str
    created_at: str
    updated_at: str
    authorization_code: str | None = None
    authorized_online: bool | None = None
    card_brand: str | None = None
    masked_pan: str | None = None
    entry_mode: str | None = None
    flags: list[str] = field(default_factory=list)
    details_attempt: int = 0
    order_amount: int | None = None
    order_currency: str | None = None
    description: str | None = None
    notify_url: str | None = None
    basket_json: str | None = None
    customer_json: str | None = None
    custom_data_json: str | None = None
    version: int = 0
    # Merchant notification outbox (docs/merchant-notifications.md): the status still to be announced, whether its
    # message is already queued, and the statuses a merchant server has acknowledged.
    notify_pending_status: int | None = None
    notify_enqueued: bool = False
    notified_statuses: list[int] = field(default_factory=list)

    @property
    def merchant_order(self) -> str:
        return order_key(self.merchant_id, self.order_id)

    @property
    def custom_data(self) -> dict[str, Any]:
        value = jsonutil.loads(self.custom_data_json) if self.custom_data_json else None
        return value if isinstance(value, dict) else {}

    def business_view(self) -> dict[str, Any]:
        """Everything but bookkeeping: what must be equal whichever half arrived first."""
        values = {key: getattr(self, key) for key in self.__dataclass_fields__}
        for key in ("updated_at", "version", "notify_pending_status", "notify_enqueued", "notified_statuses"):
            values.pop(key)
        return values


def apply_ipn(current: Transaction | None, ipn: IpnBody, now: str) -> Transaction:
    """The transaction with the IPN's facts (they always stand); an existing transaction keeps its
    order details."""
    code = status_for(ipn.status, ipn.operation)
    card = ipn.card or IpnCard()
    facts: dict[str, Any] = {
        "merchant_id": ipn.merchant_id,
        "order_id": ipn.order_id,
        "terminal_id": ipn.terminal_id,
        "operation": ipn.operation,
        "ipn_status": ipn.status,
        "status_code": code,
        "status": STATUS_LABELS[code],
        "amount_minor": ipn.amount,
        "currency": ipn.currency,
        "authorization_code": ipn.authorization_code,
        "authorized_online": ipn.authorized_online,
        "card_brand": card.brand,
        "masked_pan": card.masked_pan,
        "entry_mode": card.entry_mode,
    }
    if current is None:
        # created_at is the payment's time, not the merge's: the same whichever half came first.
        fresh = Transaction(
            transaction_reference=ipn.transaction_reference, created_at=ipn.processed_at, updated_at=now, **facts
        )
        return _with_flags(fresh)
    return _with_flags(replace(current, **facts))


def apply_details(current: Transaction, details: OrderDetails) -> Transaction:
    """The transaction with the order's details; details of an older attempt never replace newer ones."""
    if details.attempt <= current.details_attempt:
        return current
    return _with_flags(
        replace(
            current,
            details_attempt=details.attempt,
            order_amount=details.amount,
            order_currency=details.currency,
            description=details.description,
            notify_url=details.notify_url,
            basket_json=details.basket_json,
            customer_json=details.customer_json,
            custom_data_json=details.custom_data_json,
        )
    )


def _with_flags(tx: Transaction) -> Transaction:
    """``tx`` with the flags its figures call for; ``tx`` itself (always a fresh copy, made by the
    caller) when it carries them already, which spares a second copy of every field."""
    flags = [flag for flag in tx.flags if flag not in (AMOUNT_MISMATCH, BASKET_MISMATCH)]
    if tx.details_attempt and (tx.order_amount != tx.amount_minor or tx.order_currency != tx.currency):
        # The IPN's figures stand; the flag tells finance the ECR asked for something else.
        flags.append(AMOUNT_MISMATCH)
    if tx.basket_json and basket_mismatch(jsonutil.loads(tx.basket_json), tx.order_amount):
        # Accepted under the lenient basket policy: finance sees the basket did not add up.
        flags.append(BASKET_MISMATCH)
    flags.sort()
    return tx if flags == tx.flags else replace(tx, flags=flags)

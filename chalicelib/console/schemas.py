"""Shapes of docs/ipn.md (the IPN body) and of the Console transactions API.

>>> body = parse_ipn({"transaction_reference": "T1", "merchant_id": "M1", "order_id": "O1",
...     "terminal_id": "PAX-1", "operation": "Debit", "status": "approved", "amount": 899,
...     "currency": "EUR", "processed_at": "2026-11-28T03:12:00.123Z"})
>>> body.amount
899
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from chalicelib import jsonutil
from chalicelib.cards import is_masked_pan
from chalicelib.errors import first_error, validation_error
from chalicelib.exceptions import EnvelopeError
from chalicelib.money import MAX_AMOUNT
from chalicelib.protocol import parse_timestamp_ms, timestamp_from_ms
from chalicelib.wire import Timestamp, WireModel, echo

if TYPE_CHECKING:
    from chalicelib.console.domain import Transaction

Id = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class IpnCard(_Model):
    brand: Annotated[StrictStr, Field(max_length=32)] | None = None
    masked_pan: StrictStr | None = None
    entry_mode: Annotated[StrictStr, Field(max_length=32)] | None = None

    @field_validator("masked_pan")
    @classmethod
    def _masked(cls, value: str | None) -> str | None:
        # Refused rather than stored: a full card number must never reach a table or a log.
        if value is not None and not is_masked_pan(value):
            raise PydanticCustomError(
                "pan_not_masked", "card.masked_pan must show at most the first 6 and last 4 digits"
            )
        return value


class IpnBody(_Model):
    transaction_reference: Id
    merchant_id: Id
    order_id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    terminal_id: Id
    operation: Literal["Debit", "Credit"]
    status: Literal["approved", "declined", "cancelled", "error"]
    amount: StrictInt = Field(ge=0, le=MAX_AMOUNT)
    currency: Annotated[StrictStr, Field(pattern=r"^EUR$")] = "EUR"
    authorization_code: Annotated[StrictStr, Field(max_length=32)] | None = None
    authorized_online: StrictBool | None = None
    card: IpnCard | None = None
    processed_at: StrictStr

    @field_validator("processed_at")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        try:
            # Normalized to the one timestamp format so that the Console's date order is string order.
            return timestamp_from_ms(parse_timestamp_ms(value))
        except EnvelopeError:
            raise PydanticCustomError("timestamp_invalid", "processed_at must be an RFC 3339 timestamp") from None


def parse_ipn(body: Any) -> IpnBody:
    """Validate a parsed IPN; the first error is a 400 naming the field's dotted path."""
    if not isinstance(body, dict):
        raise validation_error("not_an_object", "the IPN body must be a JSON object", None)
    try:
        return IpnBody.model_validate(body)
    except ValidationError as exc:
        raise first_error(exc) from None


class IpnAccepted(WireModel):
    status: Literal["stored", "duplicate"] = Field(
        description="stored (new IPN) or duplicate (transaction_reference already received)"
    )
    transaction_reference: str


class CardView(WireModel):
    brand: str | None
    masked_pan: str | None = Field(description="at most the first 6 and last 4 digits shown")
    entry_mode: str | None


# docs/ipn.md's status codes and labels, as ``console.domain.STATUS_LABELS`` maps them.
StatusCode = Literal[118, 125, 113, 115]
StatusLabel = Literal["Captured", "Refunded", "Refused", "Cancelled"]


class TransactionView(WireModel):
    """A Console transaction as the API shows it: the IPN's facts, and the order's details once known."""

    reference: str
    merchant_id: str
    order_id: str
    terminal_id: str
    operation: Literal["Debit", "Credit"]
    status_code: StatusCode = Field(description="118 Captured, 125 Refunded, 113 Refused, 115 Cancelled")
    status: StatusLabel
    amount_minor: StrictInt = Field(description="integer, currency minor units (IPN figure)")
    currency: str
    authorization_code: str | None
    card: CardView
    description: str | None
    # The order's basket and customer exactly as the cash register sent them.
    basket: list[Annotated[dict[str, Any], echo("BasketLine")]] | None
    customer: Annotated[dict[str, Any], echo("Customer")] | None
    custom_data: dict[str, Any] | None
    flags: list[str] = Field(description="amount_mismatch: the order asked for another amount or currency")
    created_at: Timestamp
    updated_at: Timestamp

    @classmethod
    def from_transaction(cls, tx: Transaction) -> TransactionView:
        return cls(
            reference=tx.transaction_reference,
            merchant_id=tx.merchant_id,
            order_id=tx.order_id,
            terminal_id=tx.terminal_id,
            operation=tx.operation,
            status_code=tx.status_code,
            status=tx.status,
            amount_minor=tx.amount_minor,
            currency=tx.currency,
            authorization_code=tx.authorization_code,
            card=CardView(brand=tx.card_brand, masked_pan=tx.masked_pan, entry_mode=tx.entry_mode),
            description=tx.description,
            basket=_parsed(tx.basket_json),
            customer=_parsed(tx.customer_json),
            custom_data=_parsed(tx.custom_data_json),
            flags=list(tx.flags),
            created_at=tx.created_at,
            updated_at=tx.updated_at,
        )


def _parsed(text: str | None) -> Any:
    return jsonutil.loads(text) if text else None


class TransactionPage(WireModel):
    transactions: list[TransactionView]
    next_cursor: str | None = Field(description="opaque; pass as cursor for the next page")

"""Request, response and message shapes (docs/payment-api.md, docs/terminal-protocol.md): the single
source of truth for validation, for what the API answers, and for the OpenAPI document.

A request body is parsed with :func:`chalicelib.jsonutil.loads` (fractions as ``Decimal``) and then
validated here; the first error becomes a ``400`` whose ``details.path`` is the field's dotted path.

    >>> req = parse_order_request({"order": {"order_id": "A1", "price": {"amount": 100}},
    ...     "pos_technical_info": {"device_information": {"serial_number": "1", "manufacturer": "pax"},
    ...     "terminal_transaction_display": {"protocol": "AppNepting"}}})
    >>> req.terminal_id, req.order.price.currency
    ('PAX-1', 'EUR')
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from chalicelib import jsonutil
from chalicelib.errors import ApiError, first_error, validation_error
from chalicelib.exceptions import EventRefused
from chalicelib.money import CENT, MAX_AMOUNT
from chalicelib.notify_urls import HTTPS_URL_PATTERN, refusal_when_given
from chalicelib.payments.domain import DispatchState, Reason
from chalicelib.protocol import canonical_json, terminal_id_for
from chalicelib.wire import SkipJsonSchema, Timestamp, WireModel, echo, omitted_if_none

MAX_BASKET_LINES = 200
MAX_CUSTOM_DATA_BYTES = 8 * 1024
_NO_CONTROL = re.compile(r"^[^\x00-\x1f\x7f-\x9f]+$")
EMAIL_PATTERN = (
    r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_EMAIL = re.compile(EMAIL_PATTERN)
_ISO_CURRENCY = re.compile(r"^[A-Z]{3}$")
SUPPORTED_PROTOCOL = "AppNepting"
KNOWN_UNSERVED_PROTOCOLS = ("ConcertV3.1", "ConcertV3.2")

Text255 = Annotated[StrictStr, Field(max_length=255)]


def _integral(value: Any) -> Any:
    # 2.0 is the same JSON number as 2 (JSON Schema's "integer" admits both); 2.5, true or "2" are not.
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    return value


# An integer as JSON has it: written 2 or 2.0.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]


# A unit price may be finer than a cent (per gram, per litre); a ten-thousandth is the limit.
UNIT_PRICE_STEP = Decimal("0.0001")


class _Model(BaseModel):
    # Unknown fields are ignored (docs/payment-api.md): ECRs send HiPay's full payloads.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Price(_Model):
    amount: JsonInt = Field(ge=1, le=MAX_AMOUNT)
    currency: StrictStr = "EUR"

    @field_validator("currency")
    @classmethod
    def _eur_only(cls, value: str) -> str:
        if not _ISO_CURRENCY.match(value):
            raise PydanticCustomError("currency_invalid", "currency must be an ISO 4217 code")
        if value != "EUR":
            raise PydanticCustomError("currency_unsupported", "only EUR is accepted")
        return value


class BasketLine(_Model):
    product_reference: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    name: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    type: Literal["good", "discount", "fee"]
    quantity: JsonInt = Field(ge=1, le=1_000_000)
    unit_price: Decimal = Field(allow_inf_nan=False, ge=Decimal(-MAX_AMOUNT), le=Decimal(MAX_AMOUNT))
    tax_rate: Decimal = Field(allow_inf_nan=False, ge=0, le=100)
    discount: Decimal = Field(default=Decimal(0), allow_inf_nan=False, ge=Decimal(-MAX_AMOUNT), le=0)
    total_amount: Decimal = Field(allow_inf_nan=False, ge=Decimal(-MAX_AMOUNT), le=Decimal(MAX_AMOUNT))

    @field_validator("unit_price", "tax_rate", "discount", "total_amount", mode="before")
    @classmethod
    def _numbers_not_bools(cls, value: Any) -> Any:
        # A JSON number only (read as Decimal or int): not a bool, a float or a numeric string.
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise PydanticCustomError("decimal_type", "must be a JSON number")
        return value

    @field_validator("total_amount", "discount", "tax_rate")
    @classmethod
    def _whole_cents(cls, value: Decimal) -> Decimal:
        # Amounts are in cents, tax rates in hundredths of a percent; no finer figure means anything.
        if value != value.quantize(CENT):
            raise PydanticCustomError("cents_precision", "must have at most 2 decimal places")
        return value

    @field_validator("unit_price")
    @classmethod
    def _fine_unit_price(cls, value: Decimal) -> Decimal:
        if value != value.quantize(UNIT_PRICE_STEP):
            raise PydanticCustomError("unit_price_precision", "must have at most 4 decimal places")
        return value

    def expected_total(self) -> Decimal:
        return (self.unit_price * self.quantity + self.discount).quantize(CENT, rounding=ROUND_HALF_UP)


class Order(_Model):
    order_id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    transaction_type: Literal["Debit", "Credit", "Cancel"] = "Debit"
    price: Price
    basket: Annotated[list[BasketLine], Field(max_length=MAX_BASKET_LINES)] | None = None
    description: Text255 = "POS payment"
    custom_data: dict[str, Any] | None = None

    @field_validator("order_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not _NO_CONTROL.match(value):
            raise PydanticCustomError("control_characters", "order_id must not contain control characters")
        return value

    @field_validator("custom_data")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(jsonutil.dumps(value).encode("utf-8")) > MAX_CUSTOM_DATA_BYTES:
            raise PydanticCustomError("custom_data_too_large", "custom_data must be at most 8 KiB serialized")
        return value

    def basket_error(self) -> ApiError | None:
        """The 400 a ``strict`` merchant gets for a basket whose arithmetic is off; None if it adds up."""
        if not self.basket:
            return None
        for index, line in enumerate(self.basket):
            expected = line.expected_total()
            if expected != line.total_amount:
                return validation_error(
                    "basket_line_total",
                    f"order.basket.{index}.total_amount: total_amount must equal unit_price × quantity + discount"
                    f" ({expected})",
                    f"order.basket.{index}.total_amount",
                )
        total = sum((line.total_amount for line in self.basket), Decimal(0))
        if total * 100 != self.price.amount:
            return validation_error(
                "basket_total",
                f"order.basket: the basket lines' total_amount must add up to price.amount ÷ 100 ({total})",
                "order.basket",
            )
        return None


class Customer(_Model):
    customer_id: Annotated[StrictStr, Field(max_length=64)] | None = None
    email: Annotated[StrictStr, Field(max_length=254)] | None = None
    phone: Annotated[StrictStr, Field(max_length=32)] | None = None
    first_name: Annotated[StrictStr, Field(max_length=100)] | None = None
    last_name: Annotated[StrictStr, Field(max_length=100)] | None = None

    @field_validator("email")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise PydanticCustomError("email_invalid", "email is not a valid address")
        return value


class DeviceInformation(_Model):
    serial_number: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9]{1,64}$")]
    manufacturer: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9]{1,32}$")]


class TerminalTransactionDisplay(_Model):
    # A plain string checked below, so that HiPay's other protocols get their own error code.
    protocol: StrictStr = Field(json_schema_extra={"enum": [SUPPORTED_PROTOCOL]})
    force_authorization: StrictBool = False

    @field_validator("protocol")
    @classmethod
    def _served(cls, value: str) -> str:
        if value in KNOWN_UNSERVED_PROTOCOLS:
            raise PydanticCustomError(
                "protocol_unsupported", "protocol {protocol} is not served; use AppNepting", {"protocol": value}
            )
        if value != SUPPORTED_PROTOCOL:
            raise PydanticCustomError("protocol_unknown", "protocol must be AppNepting")
        return value


class PosTechnicalInfo(_Model):
    notify_url: Annotated[StrictStr, Field(max_length=2048)] | None = None
    device_information: DeviceInformation
    terminal_transaction_display: TerminalTransactionDisplay

    @field_validator("notify_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.match(HTTPS_URL_PATTERN, value):
            raise PydanticCustomError("url_https", "notify_url must be an https URL with a host name")
        return value


class OrderRequest(_Model):
    order: Order
    customer: Customer | None = None
    pos_technical_info: PosTechnicalInfo

    @property
    def terminal_id(self) -> str:
        device = self.pos_technical_info.device_information
        return terminal_id_for(device.manufacturer, device.serial_number)

    @property
    def basket_mismatch(self) -> bool:
        return self.order.basket_error() is not None

    def echo(self) -> dict[str, Any]:
        """What a PaymentResponse echoes: the fields the ECR sent that were validated, nothing else
        (an unknown field, however large or odd, is ignored and not written back)."""
        return self.model_dump(mode="python", exclude_unset=True, include={"order", "customer", "pos_technical_info"})

    def payload_hash(self) -> str:
        """Identity of the payload for idempotency: defaults applied, unknown fields left out."""
        # No JSON round trip first: it would turn Decimal("9") into 9 but Decimal("9.00") into "9".
        return hashlib.sha256(canonical_json(_decimals_as_text(self.model_dump(mode="python")))).hexdigest()


def _decimals_as_text(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value.normalize():f}"
    if isinstance(value, dict):
        return {key: _decimals_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decimals_as_text(item) for item in value]
    return value


# Errors raised by a whole-object check name the field they are about.
_PATH_SUFFIX: dict[str, str] = {}


def parse_order_request(
    body: Any, basket_policy: Callable[[], str] = lambda: "lenient", allow_loopback_http: bool = False
) -> OrderRequest:
    """Validate a parsed body; raise the contract's 400 with the first bad field's dotted path.

    A basket whose arithmetic is off is accepted (and flagged ``basket_mismatch`` downstream) unless
    ``basket_policy()`` is ``strict``; it is only asked when a basket is off."""
    if not isinstance(body, dict):
        raise validation_error("not_an_object", "the request body must be a JSON object", "")
    try:
        request = OrderRequest.model_validate(body)
    except ValidationError as exc:
        raise first_error(exc, _PATH_SUFFIX) from None
    notify_url = request.pos_technical_info.notify_url
    refusal = refusal_when_given(notify_url, allow_loopback_http) if notify_url else None
    if refusal:
        path = "pos_technical_info.notify_url"
        raise validation_error("notify_url_refused", f"{path}: notifications are not sent there ({refusal})", path)
    error = request.order.basket_error()
    if error is not None and basket_policy() == "strict":
        raise error
    return request


# --- Terminal message bodies (docs/terminal-protocol.md): what the cloud sends, and what it accepts back -------


class PaymentRequestBody(_Model):
    order_id: StrictStr
    transaction_type: Literal["Debit", "Credit"]
    amount: StrictInt
    currency: StrictStr
    force_authorization: StrictBool
    description: StrictStr
    expires_at: Timestamp


class CancelRequestBody(_Model):
    order_id: StrictStr
    target_request_id: StrictStr


class AckBody(_Model):
    # {} shows the payment screen; {"accepted": false, "reason": "busy"} cannot. The reason is
    # informational and not read, so an odd one does not turn a busy terminal into a timeout.
    accepted: StrictBool = True


class ResultBody(_Model):
    payment_status: Literal["Success", "Failed"]
    error_code: StrictStr | None = None
    error_data: dict[str, Any] | None = None
    receipt: StrictStr | None = None
    transaction_reference: StrictStr | None = None
    authorization_code: StrictStr | None = None
    card_brand: StrictStr | None = None
    masked_pan: StrictStr | None = None
    authorized_online: StrictBool | None = None


class StatusBody(_Model):
    state: Literal["online", "offline"]


TerminalBody = TypeVar("TerminalBody", AckBody, ResultBody, StatusBody)


def terminal_body(model: type[TerminalBody], body: dict[str, Any]) -> TerminalBody:
    """A terminal message's body, validated; one of the wrong shape is refused as ``bad_body``."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise EventRefused("bad_body", f"{model.__name__} {where}: {first['msg']}") from None


# --- What the payment API answers (docs/payment-api.md) ----------------------------------------------------


class TransactionInfo(WireModel):
    """The terminal's facts about the card transaction; a key is there only when the terminal gave it."""

    reference: StrictStr | SkipJsonSchema[None] = omitted_if_none()
    authorization_code: StrictStr | SkipJsonSchema[None] = omitted_if_none()
    card_brand: StrictStr | SkipJsonSchema[None] = omitted_if_none()
    masked_pan: StrictStr | SkipJsonSchema[None] = omitted_if_none("at most the first 6 and last 4 digits shown")
    authorized_online: StrictBool | SkipJsonSchema[None] = omitted_if_none()


class PaymentResponse(WireModel):
    """HiPay's PaymentResponse: the outcome, and the request's order, customer and device echoed back."""

    payment_status: Literal["Success", "Failed"] = Field(alias="paymentStatus")
    receipt: StrictStr | None = Field(default=None, description="base64 text, when the terminal gives one")
    error_code: StrictStr | None = Field(default=None, alias="errorCode")
    error_data: dict[str, Any] | None = Field(default=None, alias="errorData")
    order: Annotated[dict[str, Any], echo(Order, "the request's order, as sent")]
    customer: Annotated[dict[str, Any], echo(Customer, "the request's customer, as sent")] | None = None
    technical_pos_info: Annotated[dict[str, Any], echo(PosTechnicalInfo, "the request's pos_technical_info, as sent")]
    transaction: TransactionInfo | SkipJsonSchema[None] = omitted_if_none("when the terminal reported a transaction")
    attempt: StrictInt | SkipJsonSchema[None] = omitted_if_none("which attempt of the order this is, from 1")


class OrderAccepted(WireModel):
    """The ``202`` of ``Prefer: respond-async``: where to read the order's outcome."""

    order_id: str
    state: Literal["pending"]
    location: str = Field(description="the order resource, also in the Location header")


class OrderStatus(WireModel):
    """The order's latest attempt (``GET /v1/connector/order/{order_id}``)."""

    order_id: str
    attempt: StrictInt
    request_id: str
    terminal_id: str
    state: DispatchState
    reason: Reason | None = Field(description="why the attempt ended without the terminal's own result")
    late_result: StrictBool = Field(description="the result landed after the attempt had timed out or dropped")
    flags: list[str] = Field(description="basket_mismatch: the basket's arithmetic does not match the amount")
    created_at: Timestamp
    acknowledged_at: Timestamp | None
    finished_at: Timestamp | None
    ack_deadline: Timestamp
    deadline: Timestamp
    payment: PaymentResponse | None = Field(description="once the attempt succeeded, failed or was cancelled")


class OrderSummary(WireModel):
    """One order of the listing (``GET /v1/connector/orders``): its latest attempt and timeline."""

    order_id: str
    attempt: StrictInt
    terminal_id: str
    transaction_type: str
    amount: StrictInt = Field(description="minor units")
    currency: str
    state: DispatchState
    reason: Reason | None = Field(description="why the attempt ended without the terminal's own result")
    late_result: StrictBool
    error_code: str | None = Field(description="the terminal's, when it answered Failed")
    transaction_reference: str | None = Field(description="the terminal's, when it gave one")
    received_at: Timestamp = Field(description="when the latest attempt was received")
    dispatched_at: Timestamp = Field(description="when it was recorded and sent to the terminal")
    acknowledged_at: Timestamp | None
    finished_at: Timestamp | None
    deadline: Timestamp


class OrderPage(WireModel):
    orders: list[OrderSummary]
    next_cursor: str | None = Field(description="opaque; pass as cursor for the next page")


class TerminalView(WireModel):
    terminal_id: str
    online: StrictBool
    last_seen_at: Timestamp | None
    busy: StrictBool = Field(description="handling a payment now")
    cloud_api_enabled: StrictBool = Field(description="has a passphrase: payments can be sent to it")


class TerminalList(WireModel):
    terminals: list[TerminalView]


class Health(WireModel):
    status: Literal["ok"]

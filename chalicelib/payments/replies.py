"""What the payment API answers: the PaymentResponse (docs/payment-api.md) built from a correlation record,
and the contract's 502/504 errors for the ways a dispatch can end without the terminal's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from chalicelib import jsonutil
from chalicelib.errors import ApiError
from chalicelib.payments.domain import Dispatch, DispatchState, OrderHead, Reason
from chalicelib.payments.schemas import OrderAccepted, PaymentResponse, TransactionInfo


@dataclass
class Reply:
    """An HTTP answer of the payment API that is not an error."""

    status: int
    response: PaymentResponse | OrderAccepted
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        return self.response.wire()


_ERRORS_BY_REASON: dict[str, tuple[int, str, str]] = {
    Reason.TERMINAL_UNREACHABLE: (502, "terminal.unreachable", "The terminal could not be reached"),
    Reason.TERMINAL_DISCONNECTED: (502, "terminal.disconnected", "The terminal dropped during the payment"),
    Reason.ACK_TIMEOUT: (504, "terminal.ack_timeout", "The terminal did not acknowledge the payment request"),
    Reason.RESULT_TIMEOUT: (
        504,
        "terminal.result_timeout",
        "No result before the payment deadline; the order stays tracked at GET /v1/connector/order/{order_id}",
    ),
}


def reply_for(head: OrderHead, dispatch: Dispatch) -> Reply:
    """Turn a final dispatch into the HTTP answer, raising the contract's 502/504 errors.

    A dispatch still ``cancelling`` when its waiter's deadline passed is a 504: the terminal's
    result, when it lands, is the order's truth (never "cancelled" on the cancel request's word).
    """
    if dispatch.state == DispatchState.CANCELLING:
        raise ApiError(
            *_ERRORS_BY_REASON[Reason.ACK_TIMEOUT if dispatch.acked_at_ms is None else Reason.RESULT_TIMEOUT]
        )
    error = _ERRORS_BY_REASON.get(dispatch.reason or "")  # StrEnum keys match their string values
    if error is not None and dispatch.state in (DispatchState.FAILED, DispatchState.TIMED_OUT):
        raise ApiError(*error)
    return Reply(200, payment_response(jsonutil.loads(head.request_json), dispatch))


def payment_response(raw: dict[str, Any], dispatch: Dispatch) -> PaymentResponse:
    result = dispatch.result or {}
    found = {key: result[source] for key, source in _TRANSACTION_FIELDS if source in result}
    transaction = TransactionInfo(**found) if found else None
    if dispatch.state == DispatchState.SUCCEEDED:
        return payment_body(
            raw, "Success", receipt=result.get("receipt"), transaction=transaction, attempt=dispatch.attempt
        )
    return payment_body(
        raw,
        "Failed",
        error_code=result.get("error_code") or dispatch.reason or "payment_failed",
        error_data=result.get("error_data"),
        receipt=result.get("receipt"),
        transaction=transaction,
        attempt=dispatch.attempt,
    )


# PaymentResponse.transaction's keys, and the result fields they come from.
_TRANSACTION_FIELDS = (
    ("reference", "transaction_reference"),
    ("authorization_code", "authorization_code"),
    ("card_brand", "card_brand"),
    ("masked_pan", "masked_pan"),
    ("authorized_online", "authorized_online"),
)


def busy_response(raw: dict[str, Any]) -> PaymentResponse:
    return payment_body(
        raw, "Failed", error_code="terminal_busy", error_data={"message": "The terminal is already handling a payment"}
    )


def accepted_reply(order_id: str) -> Reply:
    # Percent-encoded: an order_id may hold "/", "?", "#" or non-ASCII characters.
    location = f"/v1/connector/order/{quote(order_id, safe='')}"
    return Reply(202, OrderAccepted(order_id=order_id, state="pending", location=location), {"Location": location})


def raw_echo(raw: dict[str, Any]) -> dict[str, Any]:
    """The parts of the request a PaymentResponse echoes (and the order notification carries)."""
    return {key: raw[key] for key in ("order", "customer", "pos_technical_info") if key in raw}


def payment_body(
    raw: dict[str, Any],
    status: Literal["Success", "Failed"],
    error_code: str | None = None,
    error_data: dict[str, Any] | None = None,
    receipt: str | None = None,
    transaction: TransactionInfo | None = None,
    attempt: int | None = None,
) -> PaymentResponse:
    return PaymentResponse(
        payment_status=status,
        receipt=receipt,
        error_code=error_code,
        error_data=error_data,
        order=raw["order"],
        customer=raw.get("customer"),
        technical_pos_info=raw["pos_technical_info"],
        transaction=transaction,
        attempt=attempt,
    )

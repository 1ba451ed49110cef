"""What the payment API answers (docs/payment-api.md), built from the correlation record alone: the
PaymentResponse's fields for each outcome, the 202 of an asynchronous order, and the 502/504 errors."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib import jsonutil
from chalicelib.errors import ApiError
from chalicelib.payments.domain import Dispatch, DispatchState, OrderHead, Reason
from chalicelib.payments.replies import accepted_reply, busy_response, payment_response, raw_echo, reply_for

RAW: dict[str, Any] = {
    "order": {"order_id": "A-1", "price": {"amount": 899, "currency": "EUR"}},
    "customer": {"email": "ada@example.com"},
    "pos_technical_info": {"terminal_id": "PAX-1"},
    "ignored": True,
}
TRANSACTION_RESULT = {
    "transaction_reference": "TX-1",
    "authorization_code": "A1B2",
    "card_brand": "VISA",
    "masked_pan": "497010******0001",
    "authorized_online": True,
}


def dispatch(state: DispatchState, result: dict[str, Any] | None = None, reason: str | None = None) -> Dispatch:
    return Dispatch(
        request_id="r-1",
        merchant_id="M1",
        order_id="A-1",
        attempt=2,
        terminal_id="PAX-1",
        transaction_type="Debit",
        amount=899,
        currency="EUR",
        state=state,
        created_at_ms=0,
        ack_deadline_ms=10_000,
        deadline_ms=60_000,
        reason=reason,
        result=result,
    )


def head() -> OrderHead:
    return OrderHead("M1", "A-1", 2, "r-1", "PAX-1", "h", jsonutil.dumps(RAW), 0, 0)


def test_a_success_carries_the_receipt_the_transaction_and_the_echoed_request() -> None:
    result = {"payment_status": "Success", "receipt": "UkVDRUlQVA==", **TRANSACTION_RESULT}
    body = payment_response(RAW, dispatch(DispatchState.SUCCEEDED, result)).wire()
    assert body == {
        "paymentStatus": "Success",
        "receipt": "UkVDRUlQVA==",
        "errorCode": None,
        "errorData": None,
        "order": RAW["order"],
        "customer": RAW["customer"],
        "technical_pos_info": RAW["pos_technical_info"],
        "transaction": {
            "reference": "TX-1",
            "authorization_code": "A1B2",
            "card_brand": "VISA",
            "masked_pan": "497010******0001",
            "authorized_online": True,
        },
        "attempt": 2,
    }


def test_a_decline_carries_the_terminals_error_its_receipt_and_its_transaction() -> None:
    result = {
        "payment_status": "Failed",
        "error_code": "card_declined",
        "error_data": {"code": "05"},
        "receipt": "REVDTElORQ==",
        "transaction_reference": "TX-2",
    }
    body = payment_response(RAW, dispatch(DispatchState.FAILED, result)).wire()
    assert (body["paymentStatus"], body["errorCode"], body["errorData"]) == ("Failed", "card_declined", {"code": "05"})
    assert body["receipt"] == "REVDTElORQ=="
    assert body["transaction"]["reference"] == "TX-2"
    assert (body["customer"], body["attempt"]) == (RAW["customer"], 2)


def test_a_failure_without_the_terminals_code_names_the_reason_or_payment_failed() -> None:
    cancelled = payment_response(RAW, dispatch(DispatchState.CANCELLED, reason=Reason.CANCELLED)).wire()
    assert cancelled["errorCode"] == "cancelled"
    unexplained = payment_response(RAW, dispatch(DispatchState.FAILED, {"payment_status": "Failed"})).wire()
    assert unexplained["errorCode"] == "payment_failed"


def test_a_result_without_transaction_fields_has_no_transaction() -> None:
    body = payment_response(RAW, dispatch(DispatchState.FAILED, {"payment_status": "Failed"})).wire()
    assert "transaction" not in body


def test_a_request_without_customer_answers_without_one() -> None:
    raw = {key: value for key, value in RAW.items() if key != "customer"}
    assert payment_response(raw, dispatch(DispatchState.SUCCEEDED, {})).wire()["customer"] is None


def test_busy_answers_failed_with_terminal_busy_and_a_message() -> None:
    body = busy_response(RAW).wire()
    assert (body["paymentStatus"], body["errorCode"]) == ("Failed", "terminal_busy")
    assert body["errorData"] == {"message": "The terminal is already handling a payment"}


def test_an_asynchronous_order_answers_202_with_its_location() -> None:
    reply = accepted_reply("A-1")
    assert reply.status == 202
    assert reply.headers == {"Location": "/v1/connector/order/A-1"}
    assert reply.body == {"order_id": "A-1", "state": "pending", "location": "/v1/connector/order/A-1"}


def test_the_echo_keeps_order_customer_and_device_only() -> None:
    assert raw_echo(RAW) == {key: RAW[key] for key in ("order", "customer", "pos_technical_info")}


@pytest.mark.parametrize(
    ("state", "reason", "status", "code"),
    [
        (DispatchState.FAILED, Reason.TERMINAL_UNREACHABLE, 502, "terminal.unreachable"),
        (DispatchState.FAILED, Reason.TERMINAL_DISCONNECTED, 502, "terminal.disconnected"),
        (DispatchState.TIMED_OUT, Reason.ACK_TIMEOUT, 504, "terminal.ack_timeout"),
        (DispatchState.TIMED_OUT, Reason.RESULT_TIMEOUT, 504, "terminal.result_timeout"),
    ],
)
def test_a_dispatch_ended_without_a_result_is_the_contracts_error(
    state: DispatchState, reason: Reason, status: int, code: str
) -> None:
    with pytest.raises(ApiError) as caught:
        reply_for(head(), dispatch(state, reason=reason))
    assert (caught.value.status, caught.value.code) == (status, code)


def test_a_final_result_is_a_200_payment_response() -> None:
    reply = reply_for(head(), dispatch(DispatchState.SUCCEEDED, {"payment_status": "Success"}))
    assert reply.status == 200
    assert reply.body["paymentStatus"] == "Success"
    assert reply.body["order"] == RAW["order"]


@pytest.mark.parametrize(("acked_at_ms", "code"), [(None, "terminal.ack_timeout"), (1_000, "terminal.result_timeout")])
def test_a_dispatch_still_cancelling_at_its_deadline_is_the_timeout_of_its_phase(
    acked_at_ms: int | None, code: str
) -> None:
    cancelling = dispatch(DispatchState.CANCELLING)
    cancelling.acked_at_ms = acked_at_ms
    with pytest.raises(ApiError) as caught:
        reply_for(head(), cancelling)
    assert (caught.value.status, caught.value.code) == (504, code)

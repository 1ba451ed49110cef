"""Cancel is a handshake with the terminal (docs/payment-api.md "Cancel"): the ECR is told ``Success`` only
when the terminal reports the payment aborted, never on the cancel request's own word."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.errors import ApiError
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments import domain
from chalicelib.payments.domain import DispatchState, Transition
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import order_status, request_payment
from tests.conftest import MERCHANT, TERMINAL_ID, World, example
from tests.logs import captured_logs

ORDER = "ORDER_1537532589263"
ABORTED = {"payment_status": "Failed", "error_code": "cancelled", "error_data": {}}
PAID = {
    "payment_status": "Success",
    "transaction_reference": "TX-9",
    "authorization_code": "123456",
    "card_brand": "VISA",
    "masked_pan": "497010******0001",
}


def pay(world: World, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    body = body or example()
    return request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body, **kwargs)


def cancel(world: World) -> Any:
    return pay(world, example(transaction_type="Cancel"))


def cancel_during_payment(world: World, replies: list[Any]) -> Any:
    """A step of the payment's wait: the ECR's Cancel, its reply (or error) kept in ``replies``."""

    def step(_request_id: str) -> None:
        # The Cancel's own waits must not run the payment's later steps.
        later, world.waker.steps = world.waker.steps, []
        try:
            replies.append(cancel(world))
        except ApiError as exc:
            replies.append(exc)
        finally:
            world.waker.steps = later

    return step


def test_terminal_aborting_is_a_cancel_success_and_the_payment_gets_failed_cancelled(world: World) -> None:
    world.on_cancel(ABORTED)
    replies: list[Any] = []
    world.script(world.ack(), cancel_during_payment(world, replies))
    reply = pay(world)
    assert (reply.body["paymentStatus"], reply.body["errorCode"]) == ("Failed", "cancelled")
    assert replies[0].status == 200 and replies[0].body["paymentStatus"] == "Success"
    assert replies[0].body["attempt"] == 1
    assert world.last_request("cancel_request")["body"] == {
        "order_id": ORDER,
        "target_request_id": world.last_request()["request_id"],
    }
    assert order_status(world.payment_deps, MERCHANT, ORDER).wire()["state"] == "cancelled"
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None


def test_cancel_after_the_customer_paid_is_not_cancellable_with_the_real_outcome(world: World) -> None:
    # The terminal had charged the card: it answers the cancel with the payment's real result.
    world.on_cancel(PAID)
    replies: list[Any] = []
    world.script(world.ack(), cancel_during_payment(world, replies))
    reply = pay(world)
    assert reply.body["paymentStatus"] == "Success" and reply.body["transaction"]["reference"] == "TX-9"
    assert replies[0].body["paymentStatus"] == "Failed"
    assert replies[0].body["errorCode"] == "not_cancellable"
    assert replies[0].body["errorData"] == {"state": "succeeded"}
    assert order_status(world.payment_deps, MERCHANT, ORDER).wire()["state"] == "succeeded"


def test_silent_terminal_is_a_504_cancel_timeout_and_its_eventual_result_is_the_truth(world: World) -> None:
    world.on_cancel(None)
    replies: list[Any] = []
    states: list[str] = []
    world.script(
        world.ack(),
        cancel_during_payment(world, replies),
        lambda _r: states.append(order_status(world.payment_deps, MERCHANT, ORDER).wire()["state"]),
        world.result(),
    )
    reply = pay(world)
    error = replies[0]
    assert isinstance(error, ApiError) and (error.status, error.code) == (504, "terminal.cancel_timeout")
    assert states == ["cancelling"]
    # the customer had paid: the waiting payment request answers the terminal's result
    assert reply.body["paymentStatus"] == "Success"
    assert order_status(world.payment_deps, MERCHANT, ORDER).wire()["state"] == "succeeded"


def test_cancel_waits_the_configured_window_for_the_terminal(world: World) -> None:
    world.on_cancel(None)
    world.script(world.ack())
    pay(world, respond_async=True)
    world.ack()(world.last_request()["request_id"])
    started = world.clock.now_ms()
    with pytest.raises(ApiError) as caught:
        cancel(world)
    assert caught.value.code == "terminal.cancel_timeout"
    assert world.clock.now_ms() - started == world.settings.cancel_timeout_ms


def test_cancel_window_counts_from_the_front_door(world: World) -> None:
    world.on_cancel(None)
    pay(world, respond_async=True)
    started = world.clock.now_ms()
    body = example(transaction_type="Cancel")
    with pytest.raises(ApiError):
        request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body, arrived_at_ms=started - 4_000)
    assert world.clock.now_ms() - started == world.settings.cancel_timeout_ms - 4_000


def test_cancelling_payment_past_its_deadline_answers_504_and_stays_cancelling(world: World) -> None:
    world.on_cancel(None)
    replies: list[Any] = []
    world.script(world.ack(), cancel_during_payment(world, replies))
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert (caught.value.status, caught.value.code) == (504, "terminal.result_timeout")
    status = order_status(world.payment_deps, MERCHANT, ORDER).wire()
    assert status["state"] == "cancelling" and status["payment"] is None
    # the terminal's claim is not given away while it may still be charging the card
    assert world.terminals.items[TERMINAL_ID].busy_request_id == status["request_id"]
    # and the terminal's late word lands as the order's truth
    world.result()(status["request_id"])
    assert order_status(world.payment_deps, MERCHANT, ORDER).wire()["state"] == "succeeded"
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None


def test_retry_of_a_cancelling_order_starts_no_new_attempt(world: World) -> None:
    world.on_cancel(None)
    pay(world, respond_async=True)
    world.ack()(world.last_request()["request_id"])
    with pytest.raises(ApiError):
        cancel(world)
    assert pay(world, respond_async=True).status == 202
    assert len([e for _, e in world.channel.published if e["type"] == "payment_request"]) == 1


def test_second_cancel_joins_the_handshake_under_way(world: World) -> None:
    world.on_cancel(None)
    pay(world, respond_async=True)
    request_id = world.last_request()["request_id"]
    world.ack()(request_id)
    with pytest.raises(ApiError):
        cancel(world)
    world.on_cancel(ABORTED)
    assert cancel(world).body["paymentStatus"] == "Success"
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.CANCELLED


def test_cancel_of_a_finished_payment_is_not_cancellable_and_sends_nothing(world: World) -> None:
    world.script(world.ack(), world.result())
    pay(world)
    reply = cancel(world)
    assert reply.body["errorCode"] == "not_cancellable" and reply.body["errorData"] == {"state": "succeeded"}
    assert not [e for _, e in world.channel.published if e["type"] == "cancel_request"]


def test_cancel_without_any_payment_is_not_cancellable(world: World) -> None:
    reply = cancel(world)
    assert reply.body["errorCode"] == "not_cancellable" and reply.body["errorData"] == {"state": None}


def test_cancel_that_cannot_be_sent_is_a_502_and_the_order_waits_for_the_terminal(world: World) -> None:
    pay(world, respond_async=True)
    request_id = world.last_request()["request_id"]
    world.ack()(request_id)
    world.channel.fail = True
    with pytest.raises(ApiError) as caught:
        cancel(world)
    assert (caught.value.status, caught.value.code) == (502, "terminal.unreachable")
    assert order_status(world.payment_deps, MERCHANT, ORDER).wire()["state"] == "cancelling"


def test_terminal_abort_after_the_cancel_timed_out_lands_as_cancelled(world: World) -> None:
    world.on_cancel(None)
    pay(world, respond_async=True)
    request_id = world.last_request()["request_id"]
    world.ack()(request_id)
    counted = METRIC_COUNTS["CancelTimeouts"]
    with pytest.raises(ApiError):
        cancel(world)
    assert METRIC_COUNTS["CancelTimeouts"] == counted + 1
    assert world.terminal_says("result", request_id, ABORTED) == "cancelled"
    status = order_status(world.payment_deps, MERCHANT, ORDER).wire()
    assert status["state"] == "cancelled" and status["payment"]["errorCode"] == "cancelled"


# -- what operators see of a cancel -------------------------------------------------------------------


def test_a_confirmed_cancel_is_counted_requested_and_cancelled_and_logged_with_its_ids(world: World) -> None:
    world.on_cancel(ABORTED)
    replies: list[Any] = []
    world.script(world.ack(), cancel_during_payment(world, replies))
    requested, cancelled = METRIC_COUNTS["CancelsRequested"], METRIC_COUNTS["PaymentsCancelled"]
    with captured_logs() as logged:
        pay(world)
    request_id = world.last_request()["request_id"]
    assert (METRIC_COUNTS["CancelsRequested"], METRIC_COUNTS["PaymentsCancelled"]) == (requested + 1, cancelled + 1)
    ids = {"order_id": ORDER, "terminal_id": TERMINAL_ID, "request_id": request_id}
    assert logged.one("cancel requested") == {"level": "info", **ids}
    assert logged.one("payment cancelled") == {"level": "info", **ids}


def test_an_unanswered_cancel_is_counted_and_logged_as_a_warning(world: World) -> None:
    world.on_cancel(None)
    replies: list[Any] = []
    world.script(world.ack(), cancel_during_payment(world, replies), world.result())
    timeouts, cancelled = METRIC_COUNTS["CancelTimeouts"], METRIC_COUNTS["PaymentsCancelled"]
    with captured_logs() as logged:
        pay(world)
    assert (METRIC_COUNTS["CancelTimeouts"], METRIC_COUNTS["PaymentsCancelled"]) == (timeouts + 1, cancelled)
    assert logged.one("cancel unanswered") == {
        "level": "warning",
        "order_id": ORDER,
        "request_id": world.last_request()["request_id"],
    }
    error = replies[0]
    assert isinstance(error, ApiError)
    assert (
        error.message
        == "The terminal did not answer the cancellation; the order stays cancelling until its result lands"
    )


def test_a_cancel_records_when_it_was_requested(world: World) -> None:
    pay(world, respond_async=True)
    request_id = world.last_request()["request_id"]
    world.ack()(request_id)
    world.on_cancel(None)
    world.clock.advance(1_500)
    asked_at = world.clock.now_ms()
    with pytest.raises(ApiError):
        cancel(world)
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.cancel_requested_at_ms == asked_at


def test_a_cancel_that_loses_to_the_terminals_result_is_not_cancellable_with_that_result(world: World) -> None:
    pay(world, respond_async=True)
    request_id = world.last_request()["request_id"]
    world.ack()(request_id)
    original = world.payments.apply

    def paid_meanwhile(transition: Transition) -> Any:
        if transition.rule is domain.CANCEL:
            world.payments.apply = original  # type: ignore[method-assign]
            world.result()(request_id)
        return original(transition)

    world.payments.apply = paid_meanwhile  # type: ignore[method-assign]
    reply = cancel(world)
    assert (reply.body["errorCode"], reply.body["errorData"]) == ("not_cancellable", {"state": "succeeded"})
    assert [e["type"] for _, e in world.channel.published] == ["payment_request"]


def test_a_cancel_that_cannot_be_sent_says_so_and_logs_the_broker_error(world: World) -> None:
    pay(world, respond_async=True)
    request_id = world.last_request()["request_id"]
    world.ack()(request_id)
    world.channel.fail = True
    with captured_logs() as logged, pytest.raises(ApiError) as caught:
        cancel(world)
    assert caught.value.message == "The cancellation could not be sent to the terminal"
    assert logged.one("cancel publish failed") == {"level": "warning", "request_id": request_id, "error": "broker down"}


def test_a_cancel_waits_on_its_own_wake_key(world: World) -> None:
    pay(world, respond_async=True)
    request_id = world.last_request()["request_id"]
    world.ack()(request_id)
    world.on_cancel(None)
    keys: list[str] = []
    wait = world.waker.wait

    def recording(key: str, timeout_s: float) -> None:
        keys.append(key)
        wait(key, timeout_s)

    world.waker.wait = recording  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        cancel(world)
    assert keys and set(keys) == {f"{request_id}#cancel"}

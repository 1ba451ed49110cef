"""The payment service against in-memory fakes: idempotency, claims, waits and timeouts."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.errors import ApiError
from chalicelib.payments.domain import DispatchState, Terminal
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import order_status, request_payment
from tests.conftest import MERCHANT, TERMINAL_ID, World, example


def pay(world: World, body: dict[str, Any] | None = None, merchant: str = MERCHANT, **kwargs: Any) -> Any:
    body = body or example()
    return request_payment(world.payment_deps, merchant, parse_order_request(body), body, **kwargs)


def test_success_answers_with_the_terminals_result_and_echoes_the_request(world: World) -> None:
    world.script(world.ack(), world.result())
    reply = pay(world)
    assert reply.status == 200
    assert reply.body["paymentStatus"] == "Success"
    assert reply.body["errorCode"] is None
    assert reply.body["order"]["order_id"] == "ORDER_1537532589263"
    assert reply.body["technical_pos_info"]["device_information"]["manufacturer"] == "PAX"
    assert reply.body["transaction"] == {
        "reference": "TX-1",
        "authorization_code": "A1B2C3",
        "card_brand": "VISA",
        "masked_pan": "497010******0001",
        "authorized_online": True,
    }
    assert reply.body["attempt"] == 1
    terminal = world.terminals.get(TERMINAL_ID)
    assert terminal is not None and terminal.busy_request_id is None, "claim released on the result"


def test_payment_request_envelope_is_signed_and_carries_the_contract_body(world: World) -> None:
    world.script(world.ack(), world.result())
    pay(world, example("order-full.json"))
    from chalicelib import protocol

    request = world.last_request()
    assert protocol.verify_signature(request, "correct horse battery staple")
    assert request["terminal_id"] == TERMINAL_ID
    body = request["body"]
    assert body["amount"] == 899 and isinstance(body["amount"], int)
    assert body["currency"] == "EUR" and body["transaction_type"] == "Debit"
    assert body["force_authorization"] is True
    assert body["description"] == "A super short description here..."
    assert body["expires_at"].endswith("Z")


def test_decline_is_a_200_failed_with_the_terminals_error_code(world: World) -> None:
    world.script(world.ack(), world.result("Failed", error_code="declined", error_data={"reason": "funds"}))
    reply = pay(world)
    assert reply.status == 200
    assert reply.body["paymentStatus"] == "Failed"
    assert reply.body["errorCode"] == "declined"
    assert reply.body["errorData"] == {"reason": "funds"}


def test_no_ack_within_the_window_is_a_504_and_the_terminal_is_told_to_cancel(world: World) -> None:
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert caught.value.status == 504 and caught.value.code == "terminal.ack_timeout"
    cancel = world.last_request("cancel_request")
    assert cancel["body"]["target_request_id"] == world.last_request()["request_id"]
    dispatch = world.payments.get_dispatch(world.last_request()["request_id"])
    assert dispatch is not None and dispatch.state == DispatchState.TIMED_OUT and dispatch.reason == "ack_timeout"
    assert world.terminals.get(TERMINAL_ID).busy_request_id is None  # type: ignore[union-attr]
    # the waiter never sleeps past the ack deadline
    assert world.clock.now_ms() - dispatch.created_at_ms < 10_000 + 50


def test_acknowledged_but_no_result_is_a_504_result_timeout_and_a_late_result_is_kept(world: World) -> None:
    world.script(world.ack())
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert caught.value.code == "terminal.result_timeout"
    request_id = world.last_request()["request_id"]
    assert world.result()(request_id) == "late_succeeded"
    status = order_status(world.payment_deps, MERCHANT, "ORDER_1537532589263").wire()
    assert status["state"] == "succeeded" and status["late_result"] is True
    assert status["payment"]["paymentStatus"] == "Success"


def test_terminal_busy_claim_answers_200_failed_without_an_attempt(world: World) -> None:
    world.terminals.claim(TERMINAL_ID, "someone-else", world.clock.now_ms(), world.clock.now_ms() + 60_000)
    reply = pay(world)
    assert reply.status == 200
    assert reply.body["paymentStatus"] == "Failed" and reply.body["errorCode"] == "terminal_busy"
    assert world.channel.published == []
    assert world.payments.get_head(MERCHANT, "ORDER_1537532589263") is None


def test_expired_claim_is_taken_over(world: World) -> None:
    world.terminals.claim(TERMINAL_ID, "crashed", world.clock.now_ms() - 200_000, world.clock.now_ms() - 1)
    world.script(world.ack(), world.result())
    assert pay(world).body["paymentStatus"] == "Success"


def test_terminal_saying_busy_in_its_ack_is_a_200_failed_terminal_busy(world: World) -> None:
    world.script(world.ack({"accepted": False, "reason": "busy"}))
    reply = pay(world)
    assert reply.body["errorCode"] == "terminal_busy"


def test_offline_terminal_is_a_502_at_once(world: World) -> None:
    world.terminals.items[TERMINAL_ID].online = False
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert caught.value.status == 502 and caught.value.code == "terminal.offline"
    assert world.channel.published == []


def test_broker_refusing_the_publish_is_a_502_and_frees_the_terminal(world: World) -> None:
    world.channel.fail = True
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert caught.value.status == 502 and caught.value.code == "terminal.unreachable"
    assert world.terminals.get(TERMINAL_ID).busy_request_id is None  # type: ignore[union-attr]


def test_unknown_and_foreign_terminals_are_404_and_no_passphrase_is_403(world: World) -> None:
    with pytest.raises(ApiError) as foreign:
        pay(world, merchant="M2")
    assert foreign.value.status == 404
    world.terminals.put(Terminal("PAX-1", MERCHANT, None, online=True))
    body = example()
    body["pos_technical_info"]["device_information"]["serial_number"] = "1"
    with pytest.raises(ApiError) as disabled:
        pay(world, body)
    assert disabled.value.status == 403 and disabled.value.code == "terminal.service_disabled"


def test_replay_after_success_returns_the_stored_response_and_sends_nothing(world: World) -> None:
    world.script(world.ack(), world.result())
    first = pay(world)
    published = len(world.channel.published)
    again = pay(world)
    assert again.headers == {"Idempotent-Replayed": "true"}
    assert again.body == first.body
    assert len(world.channel.published) == published


def test_other_payload_after_success_is_a_409(world: World) -> None:
    world.script(world.ack(), world.result())
    pay(world)
    with pytest.raises(ApiError) as caught:
        pay(world, example(price={"amount": 101, "currency": "EUR"}))
    assert caught.value.status == 409 and caught.value.code == "order.conflict"


def test_retry_after_failure_starts_attempt_two(world: World) -> None:
    world.script(world.ack(), world.result("Failed", error_code="declined"))
    assert pay(world).body["attempt"] == 1
    world.script(world.ack(), world.result())
    reply = pay(world)
    assert reply.body["paymentStatus"] == "Success" and reply.body["attempt"] == 2
    assert len([e for _, e in world.channel.published if e["type"] == "payment_request"]) == 2


def test_duplicate_while_in_flight_joins_and_sends_nothing_twice(world: World) -> None:
    results: list[Any] = []

    def duplicate_arrives(request_id: str) -> None:
        world.terminal_says("ack", request_id, {})
        world.script(world.result())
        results.append(pay(world))  # same order, same payload, while in flight

    world.script(duplicate_arrives)
    first = pay(world)
    assert first.body["paymentStatus"] == "Success"
    assert results and results[0].body == first.body
    assert len([e for _, e in world.channel.published if e["type"] == "payment_request"]) == 1


def test_different_payload_while_in_flight_is_a_409(world: World) -> None:
    conflicts: list[ApiError] = []

    def conflicting(request_id: str) -> None:
        try:
            pay(world, example(price={"amount": 555, "currency": "EUR"}))
        except ApiError as exc:
            conflicts.append(exc)
        world.terminal_says("ack", request_id, {})
        world.result()(request_id)

    world.script(conflicting)
    pay(world)
    assert conflicts and conflicts[0].status == 409


def test_cancel_aborts_the_payment_in_flight(world: World) -> None:
    cancel_replies: list[Any] = []

    def cancel(request_id: str) -> None:
        world.terminal_says("ack", request_id, {})
        cancel_replies.append(pay(world, example(transaction_type="Cancel")))

    world.script(cancel)
    reply = pay(world)
    assert reply.body["paymentStatus"] == "Failed" and reply.body["errorCode"] == "cancelled"
    assert cancel_replies[0].body["paymentStatus"] == "Success"
    assert world.last_request("cancel_request")["body"]["order_id"] == "ORDER_1537532589263"


def test_cancel_without_a_payment_in_flight_is_failed_not_cancellable(world: World) -> None:
    reply = pay(world, example(transaction_type="Cancel"))
    assert reply.body["paymentStatus"] == "Failed" and reply.body["errorCode"] == "not_cancellable"


def test_async_mode_answers_202_with_the_order_location(world: World) -> None:
    reply = pay(world, respond_async=True)
    assert reply.status == 202
    assert reply.headers["Location"] == "/v1/connector/order/ORDER_1537532589263"
    assert order_status(world.payment_deps, MERCHANT, "ORDER_1537532589263").wire()["state"] == "pending"


def test_order_status_reports_a_timeout_nobody_wrote(world: World) -> None:
    pay(world, respond_async=True)
    world.clock.advance(10_001)
    status = order_status(world.payment_deps, MERCHANT, "ORDER_1537532589263").wire()
    assert status["state"] == "timed_out" and status["reason"] == "ack_timeout"


def test_order_status_of_another_merchant_is_404(world: World) -> None:
    pay(world, respond_async=True)
    with pytest.raises(ApiError) as caught:
        order_status(world.payment_deps, "M2", "ORDER_1537532589263")
    assert caught.value.status == 404


def test_poll_schedule_restarts_fast_after_each_state_change_and_stays_under_the_cap(world: World) -> None:
    def later(n: int) -> list[Any]:
        return [lambda _rid: None] * n

    world.script(world.ack(), *later(20), world.result())
    pay(world)
    waits_ms = [round(w * 1000, 3) for w in world.waker.waits]
    assert max(waits_ms) <= world.settings.poll_max_ms
    assert waits_ms[0] == world.settings.poll_initial_ms
    assert waits_ms[1] == world.settings.poll_initial_ms, "restarts fast once acknowledged"
    assert waits_ms[-1] == world.settings.poll_max_ms
    # one read per poll plus the final one (and one per terminal event): no wasted reads
    assert world.payments.reads == len(world.waker.waits) + 1 + 2


def test_retry_of_an_async_order_whose_ack_never_came_writes_the_timeout_and_frees_the_terminal(world: World) -> None:
    pay(world, respond_async=True)
    world.clock.advance(10_001)
    world.script(world.ack(), world.result())
    reply = pay(world)
    assert reply.body["paymentStatus"] == "Success" and reply.body["attempt"] == 2
    first = world.payments.get_dispatch(world.channel.published[0][1]["request_id"])
    assert first is not None and first.state == DispatchState.TIMED_OUT and first.reason == "ack_timeout"
    assert world.last_request("cancel_request")["body"]["target_request_id"] == first.request_id


def test_async_order_answered_late_is_not_paid_again_on_retry(world: World) -> None:
    pay(world, respond_async=True)
    request_id = world.last_request()["request_id"]
    world.clock.advance(10_001)
    # the terminal's result lands before the retry could write the timeout
    world.payments.transition(
        request_id,
        frozenset({DispatchState.PENDING}),
        DispatchState.SUCCEEDED,
        world.clock.now_ms(),
        result={"payment_status": "Success"},
    )
    reply = pay(world)
    assert reply.headers == {"Idempotent-Replayed": "true"}
    assert len([e for _, e in world.channel.published if e["type"] == "payment_request"]) == 1


def test_async_payment_gets_its_own_deadline(world: World) -> None:
    world.settings = Settings(payment_deadline_ms=26_000, async_payment_deadline_ms=120_000)
    world.script(world.ack(), world.result())
    pay(world, example(order_id="SYNC-1"))
    sync = world.payments.get_dispatch(world.last_request()["request_id"])
    assert sync is not None and sync.deadline_ms - sync.created_at_ms == 26_000
    pay(world, respond_async=True)
    dispatch = world.payments.get_dispatch(world.last_request()["request_id"])
    assert dispatch is not None and dispatch.order_id != "SYNC-1"
    assert dispatch.deadline_ms - dispatch.created_at_ms == 120_000


def test_duplicate_arriving_between_the_claim_and_the_attempt_record_joins_instead_of_busy(world: World) -> None:
    # The first request holds the claim but has not written its attempt yet when the duplicate reads.
    body = example()
    key = f"{MERCHANT}#{body['order']['order_id']}"
    world.terminals.claim(TERMINAL_ID, "first-request", world.clock.now_ms(), world.clock.now_ms() + 60_000, key)

    def first_request_writes_its_attempt(_: str) -> None:
        world.terminals.release(TERMINAL_ID, "first-request")
        world.script(world.ack(), world.result())

    world.script(first_request_writes_its_attempt)
    reply = pay(world, body)
    assert reply.body["paymentStatus"] == "Success"


def test_another_orders_claim_is_busy_at_once(world: World) -> None:
    world.terminals.claim(TERMINAL_ID, "other", world.clock.now_ms(), world.clock.now_ms() + 60_000, "M1#OTHER")
    reply = pay(world)
    assert reply.body["errorCode"] == "terminal_busy"
    assert world.waker.waits == []

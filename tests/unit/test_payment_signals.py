"""What the payment service tells ECRs and operators, pinned to the letter: the order resource's
fields, the deadlines at their exact boundaries, the error codes of a lost race, and the metrics and
log lines dashboards and alarms are built on (docs/payment-api.md)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from chalicelib import protocol
from chalicelib.config import Settings
from chalicelib.errors import ApiError
from chalicelib.exceptions import ChannelError, ConditionFailed
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments import domain
from chalicelib.payments.domain import DispatchState, Terminal, Transition
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import order_status, request_payment
from tests.conftest import MERCHANT, PASSPHRASE, TERMINAL_ID, World, example
from tests.logs import captured_logs

ORDER_ID = "ORDER_1537532589263"
PAID = {"payment_status": "Success", "transaction_reference": "TX-1"}


def pay(world: World, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    body = body or example()
    return request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body, **kwargs)


def started(world: World) -> str:
    assert pay(world, respond_async=True).status == 202
    return str(world.last_request()["request_id"])


def status(world: World) -> dict[str, Any]:
    return order_status(world.payment_deps, MERCHANT, ORDER_ID).wire()


def at(epoch_ms: int) -> str:
    return protocol.timestamp_from_ms(epoch_ms)


# -- the order resource ---------------------------------------------------------------------------------


def test_the_order_resource_names_every_field_of_the_latest_attempt(world: World) -> None:
    created = world.clock.now_ms()
    request_id = started(world)
    world.clock.advance(1_000)
    world.terminal_says("ack", request_id, {})
    world.clock.advance(2_000)
    world.result()(request_id)
    body = status(world)
    payment = body.pop("payment")
    assert body == {
        "order_id": ORDER_ID,
        "attempt": 1,
        "request_id": request_id,
        "terminal_id": TERMINAL_ID,
        "state": "succeeded",
        "reason": None,
        "late_result": False,
        "flags": [],
        "created_at": at(created),
        "acknowledged_at": at(created + 1_000),
        "finished_at": at(created + 3_000),
        "ack_deadline": at(created + world.settings.ack_timeout_ms),
        "deadline": at(created + world.settings.async_payment_deadline_ms),
    }
    assert payment["paymentStatus"] == "Success"
    assert payment["transaction"]["reference"] == "TX-1"


def test_an_order_in_flight_has_no_payment_nor_end_yet(world: World) -> None:
    started(world)
    body = status(world)
    assert (body["state"], body["payment"], body["acknowledged_at"], body["finished_at"]) == (
        "pending",
        None,
        None,
        None,
    )


def test_a_cancelled_order_shows_its_failed_payment(world: World) -> None:
    request_id = started(world)
    world.terminal_says("ack", request_id, {})
    world.script(lambda _: world.result("Failed", error_code="cancelled")(request_id))
    assert pay(world, example(transaction_type="Cancel")).body["paymentStatus"] == "Success"
    body = status(world)
    assert body["state"] == "cancelled"
    assert body["payment"]["paymentStatus"] == "Failed" and body["payment"]["errorCode"] == "cancelled"


# -- deadlines at their boundaries ----------------------------------------------------------------------


def test_an_unacknowledged_order_times_out_exactly_at_its_ack_deadline(world: World) -> None:
    started(world)
    world.clock.advance(world.settings.ack_timeout_ms - 1)
    assert (status(world)["state"], status(world)["reason"]) == ("pending", None)
    world.clock.advance(1)
    assert (status(world)["state"], status(world)["reason"]) == ("timed_out", "ack_timeout")


def test_an_acknowledged_order_times_out_exactly_at_its_payment_deadline(world: World) -> None:
    request_id = started(world)
    world.terminal_says("ack", request_id, {})
    world.clock.advance(world.settings.async_payment_deadline_ms - 1)
    assert (status(world)["state"], status(world)["reason"]) == ("acknowledged", None)
    world.clock.advance(1)
    assert (status(world)["state"], status(world)["reason"]) == ("timed_out", "result_timeout")


def test_an_acknowledged_order_is_not_held_to_the_ack_deadline(world: World) -> None:
    request_id = started(world)
    world.terminal_says("ack", request_id, {})
    world.clock.advance(world.settings.ack_timeout_ms + 1)
    assert status(world)["state"] == "acknowledged"


# -- the error codes of conflicts and lost races ---------------------------------------------------------


def test_another_payload_for_an_order_in_flight_is_order_conflict(world: World) -> None:
    started(world)
    with pytest.raises(ApiError) as caught:
        pay(world, example(price={"amount": 555, "currency": "EUR"}), respond_async=True)
    assert (caught.value.status, caught.value.code) == (409, "order.conflict")
    assert caught.value.message == "order_id is in use by a payment with a different payload"


def test_another_payload_for_a_paid_order_is_order_conflict(world: World) -> None:
    world.script(world.ack(), world.result())
    pay(world)
    with pytest.raises(ApiError) as caught:
        pay(world, example(price={"amount": 555, "currency": "EUR"}))
    assert (caught.value.status, caught.value.code) == (409, "order.conflict")
    assert caught.value.message == "order_id already succeeded with a different payload"


def test_a_start_that_always_loses_its_condition_is_order_contended_and_leaks_no_claim(world: World) -> None:
    losses: list[str] = []

    def lose(*args: Any, **kwargs: Any) -> None:
        losses.append("lost")
        raise ConditionFailed("head")

    world.payments.start_attempt = lose  # type: ignore[method-assign]
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert (caught.value.status, caught.value.code) == (409, "order.contended")
    assert caught.value.message == "The order is being started by another request; retry"
    assert len(losses) == 3, "a lost race is retried, up to three starts in all"
    assert world.channel.published == []
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None


def test_an_order_whose_first_start_lost_a_race_starts_on_the_next_try(world: World) -> None:
    original = world.payments.start_attempt
    losses: list[str] = []

    def lose_once(*args: Any, **kwargs: Any) -> Any:
        if not losses:
            losses.append("lost")
            raise ConditionFailed("head")
        return original(*args, **kwargs)

    world.payments.start_attempt = lose_once  # type: ignore[method-assign]
    assert pay(world, respond_async=True).status == 202
    assert len([e for _, e in world.channel.published if e["type"] == "payment_request"]) == 1


# -- metrics and log lines ------------------------------------------------------------------------------


def test_a_started_payment_is_counted_and_logged_with_its_ids(world: World) -> None:
    before = METRIC_COUNTS["PaymentsStarted"]
    with captured_logs() as logged:
        request_id = started(world)
    assert METRIC_COUNTS["PaymentsStarted"] == before + 1
    assert logged.one("payment dispatched") == {
        "level": "info",
        "order_id": ORDER_ID,
        "terminal_id": TERMINAL_ID,
        "request_id": request_id,
        "attempt": 1,
    }


def test_a_claimed_terminal_is_counted_and_logged_as_busy(world: World) -> None:
    world.terminals.claim(TERMINAL_ID, "someone-else", world.clock.now_ms(), world.clock.now_ms() + 60_000)
    before = METRIC_COUNTS["PaymentsBusy.reason=claimed"]
    with captured_logs() as logged:
        pay(world)
    assert METRIC_COUNTS["PaymentsBusy.reason=claimed"] == before + 1
    assert logged.one("terminal busy") == {"level": "info", "order_id": ORDER_ID, "terminal_id": TERMINAL_ID}


def test_an_offline_terminal_is_counted_as_unreachable_offline(world: World) -> None:
    world.terminals.items[TERMINAL_ID].online = False
    before = METRIC_COUNTS["TerminalUnreachable.reason=offline"]
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert (caught.value.status, caught.value.code) == (502, "terminal.offline")
    assert caught.value.message == "The terminal is not connected"
    assert METRIC_COUNTS["TerminalUnreachable.reason=offline"] == before + 1


def test_a_refused_publish_is_counted_logged_and_fails_the_attempt_when_it_happened(world: World) -> None:
    world.channel.fail = True
    before = METRIC_COUNTS["TerminalUnreachable.reason=publish_failed"]
    with captured_logs() as logged:
        assert pay(world, respond_async=True).status == 202
    assert METRIC_COUNTS["TerminalUnreachable.reason=publish_failed"] == before + 1
    line = logged.one("publish failed")
    head = world.payments.get_head(MERCHANT, ORDER_ID)
    assert head is not None
    assert line == {
        "level": "warning",
        "request_id": head.request_id,
        "terminal_id": TERMINAL_ID,
        "error": "broker down",
    }
    dispatch = world.payments.get_dispatch(head.request_id)
    assert dispatch is not None
    assert (dispatch.state, dispatch.reason) == (DispatchState.FAILED, "terminal_unreachable")
    assert dispatch.finished_at_ms == world.clock.now_ms()
    assert world.terminals.items[TERMINAL_ID].busy_request_id is None


@pytest.mark.parametrize(
    ("acknowledged", "metric", "reason"),
    [(False, "AckTimeouts", "ack_timeout"), (True, "ResultTimeouts", "result_timeout")],
)
def test_a_timeout_is_counted_by_kind_and_logged_as_a_warning(
    world: World, acknowledged: bool, metric: str, reason: str
) -> None:
    other = "ResultTimeouts" if metric == "AckTimeouts" else "AckTimeouts"
    before = (METRIC_COUNTS[metric], METRIC_COUNTS[other])
    if acknowledged:
        world.script(world.ack())
    with captured_logs() as logged, pytest.raises(ApiError):
        pay(world)
    assert (METRIC_COUNTS[metric], METRIC_COUNTS[other]) == (before[0] + 1, before[1])
    assert logged.one("payment timed out") == {
        "level": "warning",
        "order_id": ORDER_ID,
        "terminal_id": TERMINAL_ID,
        "request_id": world.last_request()["request_id"],
        "reason": reason,
    }


# -- cancel: what is cancellable, and the cancel request the terminal receives --------------------------


def test_the_cancel_request_is_signed_for_the_terminal_and_names_the_order_and_its_request(world: World) -> None:
    with pytest.raises(ApiError):
        pay(world)  # no ack: the terminal is told to cancel
    payment, cancel = world.last_request(), world.last_request("cancel_request")
    assert protocol.verify_signature(cancel, PASSPHRASE)
    assert cancel["terminal_id"] == TERMINAL_ID
    assert [terminal for terminal, envelope in world.channel.published if envelope is cancel] == [TERMINAL_ID]
    assert cancel["body"] == {"order_id": ORDER_ID, "target_request_id": payment["request_id"]}
    assert re.fullmatch(r"[0-9a-f]{32}", cancel["request_id"]) and cancel["request_id"] != payment["request_id"]


def test_a_cancel_naming_another_terminal_of_the_merchant_cancels_nothing(world: World) -> None:
    other = "PAX-77"
    world.terminals.put(Terminal(other, MERCHANT, "another passphrase", online=True))
    request_id = started(world)
    body = example(transaction_type="Cancel")
    body["pos_technical_info"]["device_information"]["serial_number"] = "77"
    reply = pay(world, body)
    assert (reply.body["paymentStatus"], reply.body["errorCode"]) == ("Failed", "not_cancellable")
    assert [e["type"] for _, e in world.channel.published] == ["payment_request"]
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.PENDING
    assert world.terminals.items[TERMINAL_ID].busy_request_id == request_id


def test_a_cancel_after_the_payment_completed_is_not_cancellable_and_says_the_real_outcome(world: World) -> None:
    world.script(world.ack(), world.result())
    pay(world)
    reply = pay(world, example(transaction_type="Cancel"))
    assert reply.status == 200
    assert (reply.body["paymentStatus"], reply.body["errorCode"]) == ("Failed", "not_cancellable")
    assert reply.body["errorData"]["state"] == "succeeded"
    assert [e["type"] for _, e in world.channel.published] == ["payment_request"]


def test_a_cancel_of_an_order_never_paid_is_not_cancellable(world: World) -> None:
    reply = pay(world, example(transaction_type="Cancel"))
    assert reply.status == 200
    assert (reply.body["paymentStatus"], reply.body["errorCode"]) == ("Failed", "not_cancellable")
    assert reply.body["order"]["order_id"] == ORDER_ID
    assert world.channel.published == []


# -- the attempt's records and the terminal's claim -----------------------------------------------------


def test_an_attempt_records_the_order_as_sent_and_claims_the_terminal_until_its_deadline(world: World) -> None:
    created = world.clock.now_ms()
    request_id = started(world)
    head = world.payments.get_head(MERCHANT, ORDER_ID)
    dispatch = world.payments.get_dispatch(request_id)
    assert head is not None and dispatch is not None
    assert (head.terminal_id, head.created_at_ms, head.updated_at_ms) == (TERMINAL_ID, created, created)
    assert (dispatch.merchant_id, dispatch.transaction_type, dispatch.amount, dispatch.currency) == (
        MERCHANT,
        "Debit",
        100,
        "EUR",
    )
    assert world.channel.published == [(TERMINAL_ID, world.last_request())]
    terminal = world.terminals.items[TERMINAL_ID]
    assert (terminal.busy_request_id, terminal.busy_until_ms, terminal.busy_order) == (
        request_id,
        dispatch.deadline_ms,
        f"{MERCHANT}#{ORDER_ID}",
    )


def test_a_retry_keeps_the_orders_creation_time_and_ends_the_first_attempt_when_it_found_it_overdue(
    world: World,
) -> None:
    created = world.clock.now_ms()
    first = started(world)
    world.clock.advance(world.settings.ack_timeout_ms + 500)
    retried_at = world.clock.now_ms()
    assert pay(world, respond_async=True).status == 202
    head = world.payments.get_head(MERCHANT, ORDER_ID)
    assert head is not None and (head.attempt, head.created_at_ms, head.updated_at_ms) == (2, created, retried_at)
    timed_out = world.payments.get_dispatch(first)
    assert timed_out is not None and timed_out.finished_at_ms == retried_at


def test_a_duplicate_of_an_async_order_in_flight_answers_202_with_its_location(world: World) -> None:
    started(world)
    reply = pay(world, respond_async=True)
    assert (reply.status, reply.headers) == (202, {"Location": f"/v1/connector/order/{ORDER_ID}"})
    assert len(world.channel.published) == 1


def test_a_retry_whose_timeout_write_loses_to_the_terminals_success_replays_it_and_pays_once(world: World) -> None:
    request_id = started(world)
    world.clock.advance(world.settings.ack_timeout_ms + 1)
    original = world.payments.apply

    def terminal_answers_first(transition: Transition) -> Any:
        if transition.to == DispatchState.TIMED_OUT:
            world.payments.apply = original  # type: ignore[method-assign]
            world.result()(request_id)
        return original(transition)

    world.payments.apply = terminal_answers_first  # type: ignore[method-assign]
    reply = pay(world)
    assert (reply.status, reply.body["paymentStatus"]) == (200, "Success")
    assert reply.headers == {"Idempotent-Replayed": "true"}
    assert len([e for _, e in world.channel.published if e["type"] == "payment_request"]) == 1


def test_a_wait_whose_timeout_write_loses_to_the_terminals_answer_returns_that_answer(world: World) -> None:
    original = world.payments.apply
    answered: list[str] = []

    def terminal_answers_first(transition: Transition) -> Any:
        # The terminal's result, read a moment before the deadline, is written just before the timeout.
        if transition.to == DispatchState.TIMED_OUT and not answered:
            answered.append(transition.request_id)
            on_time = transition.at_ms - 1
            original(Transition(transition.request_id, domain.RESULT, DispatchState.SUCCEEDED, on_time, result=PAID))
        return original(transition)

    world.payments.apply = terminal_answers_first  # type: ignore[method-assign]
    reply = pay(world)
    assert answered and (reply.status, reply.body["paymentStatus"]) == (200, "Success")
    dispatch = world.payments.get_dispatch(answered[0])
    assert dispatch is not None and dispatch.state == DispatchState.SUCCEEDED and dispatch.reason is None


def test_a_synchronous_wait_times_out_exactly_at_the_ack_deadline(world: World) -> None:
    with pytest.raises(ApiError):
        pay(world)
    dispatch = world.payments.get_dispatch(world.last_request()["request_id"])
    assert dispatch is not None and dispatch.finished_at_ms == dispatch.ack_deadline_ms


def test_polls_stay_short_while_the_ack_is_awaited_however_long_it_takes(world: World) -> None:
    world.settings = Settings(ack_timeout_ms=20_000, payment_deadline_ms=120_000)
    with pytest.raises(ApiError):
        pay(world)
    assert max(world.waker.waits) * 1000 <= world.settings.poll_max_ms


def test_an_ack_landing_as_the_ack_timeout_is_written_keeps_the_payment_running(world: World) -> None:
    original = world.payments.apply
    acked: list[str] = []

    def ack_lands_first(transition: Transition) -> Any:
        # The ack, read a moment before the ack deadline, is written just before the timeout.
        if transition.to == DispatchState.TIMED_OUT and not acked:
            acked.append(transition.request_id)
            original(Transition(transition.request_id, domain.ACK, DispatchState.ACKNOWLEDGED, transition.at_ms - 1))
            world.script(world.result())
        return original(transition)

    world.payments.apply = ack_lands_first  # type: ignore[method-assign]
    reply = pay(world)
    assert acked and (reply.status, reply.body["paymentStatus"]) == (200, "Success")


def test_a_service_disabled_terminal_is_a_403_that_says_so(world: World) -> None:
    world.terminals.items[TERMINAL_ID].passphrase = None
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert (caught.value.status, caught.value.code) == (403, "terminal.service_disabled")
    assert caught.value.message == "The Cloud API service is not enabled on this terminal"


def test_an_order_whose_attempt_record_is_missing_is_not_found(world: World) -> None:
    request_id = started(world)
    del world.payments.dispatches[request_id]
    with pytest.raises(ApiError) as caught:
        status(world)
    assert caught.value.status == 404


# -- storage errors while waiting: counted, logged, waited out ------------------------------------------


class StorageDown(Exception):
    pass


def test_a_read_that_fails_while_waiting_is_counted_logged_and_retried(world: World) -> None:
    original = world.payments.get_dispatch
    failures: list[str] = []

    def flaky(request_id: str) -> Any:
        if not failures and world.channel.published:
            failures.append(request_id)
            raise StorageDown("read timed out")
        return original(request_id)

    world.payments.get_dispatch = flaky  # type: ignore[method-assign]
    world.script(world.ack(), world.result())
    errors = METRIC_COUNTS["PollErrors"]
    with captured_logs() as logged:
        reply = pay(world)
    assert reply.body["paymentStatus"] == "Success"
    assert METRIC_COUNTS["PollErrors"] == errors + 1
    assert logged.one("poll read failed; retrying") == {
        "level": "warning",
        "request_id": failures[0],
        "error": "StorageDown('read timed out')",
    }


def test_reads_that_keep_failing_past_the_deadline_give_up_with_the_error(world: World) -> None:
    original = world.payments.get_dispatch

    def down(request_id: str) -> Any:
        if world.channel.published:
            raise StorageDown("table unavailable")
        return original(request_id)

    world.payments.get_dispatch = down  # type: ignore[method-assign]
    started_at = world.clock.now_ms()
    with pytest.raises(StorageDown):
        pay(world)
    assert world.clock.now_ms() - started_at >= world.settings.ack_timeout_ms


def test_a_timeout_write_that_fails_is_counted_logged_and_written_on_the_next_poll(world: World) -> None:
    original = world.payments.apply
    failed: list[str] = []

    def flaky(transition: Transition) -> Any:
        if transition.to == DispatchState.TIMED_OUT and not failed:
            failed.append(transition.request_id)
            raise StorageDown("write throttled")
        return original(transition)

    world.payments.apply = flaky  # type: ignore[method-assign]
    errors = METRIC_COUNTS["PollErrors"]
    with captured_logs() as logged, pytest.raises(ApiError) as caught:
        pay(world)
    assert caught.value.code == "terminal.ack_timeout"
    assert METRIC_COUNTS["PollErrors"] == errors + 1
    assert logged.one("timeout write failed; retrying") == {
        "level": "warning",
        "request_id": failed[0],
        "error": "StorageDown('write throttled')",
    }


def test_a_claim_that_cannot_be_freed_is_counted_and_logged_as_an_error_and_the_answer_still_given(
    world: World,
) -> None:
    def release_fails(terminal_id: str, request_id: str) -> bool:
        raise StorageDown("release failed")

    world.terminals.release = release_fails  # type: ignore[method-assign]
    errors = METRIC_COUNTS["ClaimReleaseErrors"]
    with captured_logs() as logged, pytest.raises(ApiError) as caught:
        pay(world)
    assert caught.value.code == "terminal.ack_timeout"
    assert METRIC_COUNTS["ClaimReleaseErrors"] == errors + 1
    assert logged.one("could not free the terminal; its claim expires") == {
        "level": "error",
        "request_id": world.last_request()["request_id"],
        "error": "StorageDown('release failed')",
    }


def test_a_long_wait_logs_its_progress_every_ten_seconds(world: World) -> None:
    results: list[str] = []

    def result_after_115_s(request_id: str) -> None:
        if world.clock.now_ms() - started >= 115_000 and not results:
            results.append(world.result()(request_id))

    started = world.clock.now_ms()
    world.script(world.ack(), *[result_after_115_s] * 20_000)
    with captured_logs() as logged:
        assert pay(world).body["paymentStatus"] == "Success"
    lines = logged.lines("payment waiting")
    assert [line["waited_s"] for line in lines] == list(range(10, 111, 10))
    request_id = world.last_request()["request_id"]
    dispatch = world.payments.get_dispatch(request_id)
    assert dispatch is not None
    line = {key: value for key, value in lines[0].items() if key != "deadline_in_s"}
    assert line == {
        "level": "info",
        "order_id": ORDER_ID,
        "terminal_id": TERMINAL_ID,
        "request_id": request_id,
        "state": "acknowledged",
        "waited_s": 10,
    }
    # whole seconds, each rounded down: the two add up to the payment window, or one second short
    window_s = (dispatch.deadline_ms - started) // 1000
    assert lines[0]["waited_s"] + lines[0]["deadline_in_s"] in (window_s - 1, window_s)


def test_a_terminal_disabled_while_its_payment_waits_gets_no_cancel_and_the_ecr_its_504(world: World) -> None:
    def disable(_request_id: str) -> None:
        world.terminals.items[TERMINAL_ID].passphrase = None

    world.script(disable)
    errors = METRIC_COUNTS["PollErrors"]
    with pytest.raises(ApiError) as caught:
        pay(world)
    assert caught.value.code == "terminal.ack_timeout"
    assert METRIC_COUNTS["PollErrors"] == errors, "the timeout is written once, without an error"
    assert [e["type"] for _, e in world.channel.published] == ["payment_request"]


def test_a_synchronous_wait_is_traced_as_the_payment_wait_with_its_ids(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import contextmanager

    from chalicelib.payments import service

    spans: list[tuple[str, dict[str, str]]] = []

    @contextmanager
    def record(name: str, **annotations: str) -> Any:
        spans.append((name, annotations))
        yield

    monkeypatch.setattr(service, "traced", record)
    world.script(world.ack(), world.result())
    pay(world)
    assert spans == [("payment wait", {"order_id": ORDER_ID, "request_id": world.last_request()["request_id"]})]


def test_a_publish_error_racing_the_terminals_answer_still_answers_the_payment(world: World) -> None:
    publish = world.channel.publish

    def answered_then_failed(terminal_id: str, envelope: dict[str, Any]) -> None:
        publish(terminal_id, envelope)
        world.result()(envelope["request_id"])
        raise ChannelError("broker reported a failure")

    world.channel.publish = answered_then_failed  # type: ignore[method-assign]
    reply = pay(world)
    assert (reply.status, reply.body["paymentStatus"], reply.headers) == (200, "Success", {})


def test_an_order_whose_attempt_record_is_missing_is_an_internal_error_naming_it(world: World) -> None:
    from chalicelib.exceptions import DispatchMissingError

    request_id = started(world)
    del world.payments.dispatches[request_id]
    with pytest.raises(DispatchMissingError) as caught:
        pay(world)
    assert str(caught.value) == f"order head {ORDER_ID} points at a missing dispatch"


def test_an_attempt_record_vanishing_during_the_wait_is_an_internal_error_naming_it(world: World) -> None:
    from chalicelib.exceptions import DispatchMissingError

    def vanish(request_id: str) -> None:
        del world.payments.dispatches[request_id]

    world.script(vanish)
    with pytest.raises(DispatchMissingError) as caught:
        pay(world)
    assert str(caught.value) == f"dispatch {world.last_request()['request_id']} vanished"

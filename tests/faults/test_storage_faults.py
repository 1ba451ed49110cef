"""DynamoDB failing (throttling, a 5xx, a timeout) on each write of the payment path and of the event
handlers, on the DynamoDB adapters: the ECR gets an answer that is true, the order resource tells
the truth, and the terminal's claim is released or bounded by its expiry."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.errors import ApiError
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments.service import order_status
from tests.conftest import MERCHANT, TERMINAL_ID, example
from tests.faults.conftest import (
    ERRORS,
    ORDER_ID,
    DynamoFaults,
    DynamoWorld,
    claim_of,
    lifecycle,
    order_state,
    pay,
    redelivered,
)

KINDS = list(ERRORS)


def payments_table(world: DynamoWorld) -> str:
    return world.settings.payments_table


def terminals_table(world: DynamoWorld) -> str:
    return world.settings.terminals_table


# -- the payment path (API handler) -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_claim_write_failing_answers_an_error_and_leaves_nothing(
    dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str
) -> None:
    faults.fail("UpdateItem", terminals_table(dynamo_world), kind)
    with pytest.raises(Exception) as caught:
        pay(dynamo_world)
    assert not isinstance(caught.value, ApiError)  # a 500 for the ECR, which may retry
    assert faults.injected == [f"UpdateItem:{terminals_table(dynamo_world)}"]
    assert order_state(dynamo_world) is None
    assert claim_of(dynamo_world) is None
    assert dynamo_world.channel.published == []


@pytest.mark.parametrize("kind", KINDS)
def test_attempt_write_failing_releases_the_claim_before_answering(
    dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str
) -> None:
    faults.fail("TransactWriteItems", error=kind)
    errors = METRIC_COUNTS["DispatchErrors"]
    with pytest.raises(Exception) as caught:
        pay(dynamo_world)
    assert not isinstance(caught.value, ApiError)
    assert METRIC_COUNTS["DispatchErrors"] == errors + 1
    assert order_state(dynamo_world) is None
    assert claim_of(dynamo_world) is None, "the claim leaked"
    assert dynamo_world.channel.published == []
    # and the terminal takes the retry at once
    dynamo_world.script(dynamo_world.ack(), dynamo_world.result())
    assert pay(dynamo_world).body["paymentStatus"] == "Success"


def test_publish_failing_unexpectedly_marks_the_attempt_failed_and_frees_the_terminal(
    dynamo_world: DynamoWorld,
) -> None:
    def broken(_terminal_id: str, _envelope: dict[str, Any]) -> None:
        raise TimeoutError("the IoT data plane did not answer")

    dynamo_world.channel.on_publish = broken
    with pytest.raises(TimeoutError):
        pay(dynamo_world)
    status = order_status(dynamo_world.payment_deps, MERCHANT, ORDER_ID).wire()
    assert (status["state"], status["reason"]) == ("failed", "dispatch_error")
    assert claim_of(dynamo_world) is None
    dynamo_world.channel.on_publish = None
    dynamo_world.script(dynamo_world.ack(), dynamo_world.result())
    reply = pay(dynamo_world)
    assert reply.body["paymentStatus"] == "Success" and reply.body["attempt"] == 2


def test_a_claim_left_by_a_dead_process_is_bounded_by_its_expiry(
    dynamo_world: DynamoWorld, faults: DynamoFaults
) -> None:
    """Publish fails and storage refuses both clean-ups, as if the process died right there."""

    def broken(_terminal_id: str, _envelope: dict[str, Any]) -> None:
        raise TimeoutError("no answer")

    dynamo_world.channel.on_publish = broken
    faults.fail("UpdateItem", error="timeout", skip=1, times=2)  # the claim passes; release and mark fail
    with pytest.raises(TimeoutError):
        pay(dynamo_world)
    holder, until = dynamo_world.claim_holder()
    assert holder is not None and until == dynamo_world.clock.now_ms() + dynamo_world.settings.payment_deadline_ms
    dynamo_world.channel.on_publish = None
    other = example(order_id="ORDER-NEXT")
    assert pay(dynamo_world, other).body["errorCode"] == "terminal_busy"
    # the order resource still tells the truth: nobody acknowledged it
    dynamo_world.clock.advance(dynamo_world.settings.ack_timeout_ms)
    assert order_state(dynamo_world) == "timed_out"
    dynamo_world.clock.advance(dynamo_world.settings.payment_deadline_ms)
    dynamo_world.script(dynamo_world.ack(), dynamo_world.result())
    assert pay(dynamo_world, other).body["paymentStatus"] == "Success"


@pytest.mark.parametrize("kind", KINDS)
def test_broker_refusing_and_storage_failing_the_unreachable_mark_still_frees_the_terminal(
    dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str
) -> None:
    dynamo_world.channel.fail = True
    faults.fail("UpdateItem", payments_table(dynamo_world), kind)
    with pytest.raises(Exception) as caught:
        pay(dynamo_world)
    assert not isinstance(caught.value, ApiError)
    status = order_status(dynamo_world.payment_deps, MERCHANT, ORDER_ID).wire()
    assert (status["state"], status["reason"]) == ("failed", "dispatch_error")
    assert claim_of(dynamo_world) is None


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_write_failing_sends_nothing_and_a_retried_cancel_works(
    dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str
) -> None:
    pay(dynamo_world, respond_async=True)
    request_id = dynamo_world.last_request()["request_id"]
    dynamo_world.ack()(request_id)
    faults.fail("UpdateItem", payments_table(dynamo_world), kind)
    with pytest.raises(Exception) as caught:
        pay(dynamo_world, example(transaction_type="Cancel"))
    assert not isinstance(caught.value, ApiError)
    assert order_state(dynamo_world) == "acknowledged" and claim_of(dynamo_world) == request_id
    assert not [e for _, e in dynamo_world.channel.published if e["type"] == "cancel_request"]
    dynamo_world.on_cancel({"payment_status": "Failed", "error_code": "cancelled"})
    assert pay(dynamo_world, example(transaction_type="Cancel")).body["paymentStatus"] == "Success"
    assert order_state(dynamo_world) == "cancelled" and claim_of(dynamo_world) is None


@pytest.mark.parametrize("kind", KINDS)
def test_poll_reads_failing_for_a_while_do_not_fail_the_payment(
    dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str
) -> None:
    errors = METRIC_COUNTS["PollErrors"]

    def storage_degrades(_request_id: str) -> None:
        faults.fail("GetItem", payments_table(dynamo_world), kind, times=3)

    def meanwhile(_request_id: str) -> None:
        return None

    # the waiter's next three reads fail, one per poll, then the terminal answers
    dynamo_world.script(dynamo_world.ack(), storage_degrades, meanwhile, meanwhile, dynamo_world.result())
    reply = pay(dynamo_world)
    assert reply.body["paymentStatus"] == "Success"
    assert len(faults.injected) == 3 and METRIC_COUNTS["PollErrors"] == errors + 3
    assert order_state(dynamo_world) == "succeeded" and claim_of(dynamo_world) is None


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_write_failing_is_retried_by_the_waiter(
    dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str
) -> None:
    # no ack: at the ack deadline the waiter writes the timeout, whose first attempt fails
    faults.fail("UpdateItem", payments_table(dynamo_world), kind)
    reply = pay(dynamo_world)
    assert isinstance(reply, ApiError) and reply.code == "terminal.ack_timeout"
    assert faults.injected == [f"UpdateItem:{payments_table(dynamo_world)}"]
    assert order_state(dynamo_world) == "timed_out"
    assert claim_of(dynamo_world) is None


# -- the event handler's writes: a failed delivery is retried and converges -------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ack_write_failing_converges_on_redelivery(dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str) -> None:
    failed: list[list[str]] = []

    def ack(request_id: str) -> None:
        faults.fail("UpdateItem", payments_table(dynamo_world), kind)
        errors, outcome = redelivered(lambda: dynamo_world.terminal_says("ack", request_id, {}))
        failed.append(errors)
        assert outcome == "acknowledged"

    dynamo_world.script(ack, dynamo_world.result())
    assert pay(dynamo_world).body["paymentStatus"] == "Success"
    assert len(failed[0]) == 1
    assert order_state(dynamo_world) == "succeeded" and claim_of(dynamo_world) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("write", ["release", "result"])
def test_result_writes_failing_converge_on_redelivery_and_count_once(
    dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str, write: str
) -> None:
    table = terminals_table(dynamo_world) if write == "release" else payments_table(dynamo_world)
    outcomes: list[tuple[list[str], str]] = []
    body = {"payment_status": "Success", "transaction_reference": "TX-1"}

    def result(request_id: str) -> None:
        faults.fail("UpdateItem", table, kind)
        outcomes.append(redelivered(lambda: dynamo_world.terminal_says("result", request_id, body)))

    succeeded = METRIC_COUNTS["PaymentsSucceeded"]
    dynamo_world.script(dynamo_world.ack(), result)
    assert pay(dynamo_world).body["paymentStatus"] == "Success"
    ((errors, outcome),) = outcomes
    assert len(errors) == 1 and outcome == "succeeded"
    assert METRIC_COUNTS["PaymentsSucceeded"] == succeeded + 1
    assert order_state(dynamo_world) == "succeeded" and claim_of(dynamo_world) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("skip", [0, 1], ids=["presence-write", "claim-release"])
def test_presence_writes_failing_converge_and_fail_the_payment_as_disconnected(
    dynamo_world: DynamoWorld, faults: DynamoFaults, kind: str, skip: int
) -> None:
    lifecycle(dynamo_world, "connected", "s-1", dynamo_world.clock.now_ms() - 1_000)
    outcomes: list[tuple[list[str], str]] = []

    def drop(request_id: str) -> None:
        dynamo_world.terminal_says("ack", request_id, {})
        # skip=1: the presence is recorded and the payment failed, then freeing the terminal fails
        faults.fail("UpdateItem", terminals_table(dynamo_world), kind, skip=skip)
        outcomes.append(redelivered(lambda: lifecycle(dynamo_world, "disconnected", "s-1")))

    dynamo_world.script(drop)
    reply = pay(dynamo_world)
    assert isinstance(reply, ApiError) and (reply.status, reply.code) == (502, "terminal.disconnected")
    assert outcomes == [(["ClientError" if kind != "timeout" else "ReadTimeoutError"], "disconnected")]
    assert order_state(dynamo_world) == "failed" and claim_of(dynamo_world) is None
    terminal = dynamo_world.terminals.get(TERMINAL_ID)
    assert terminal is not None and terminal.online is False

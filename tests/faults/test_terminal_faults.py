"""The terminal misbehaving or its link failing: drops before and after the ack, late results,
duplicated, reordered and replayed messages, and the serving process dying mid-wait. Each scenario
runs on the in-memory fakes and on the DynamoDB adapters (moto)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from chalicelib import protocol
from chalicelib.config import Settings
from chalicelib.errors import ApiError
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments.service import order_status
from chalicelib.payments.terminal_events import handle_status
from tests.conftest import MERCHANT, PASSPHRASE, TERMINAL_ID, World, example
from tests.faults.conftest import ORDER_ID, DynamoWorld, claim_of, lifecycle, order_state, pay

SUCCESS = {"payment_status": "Success", "transaction_reference": "TX-1", "masked_pan": "497010******0001"}
DECLINED = {"payment_status": "Failed", "error_code": "declined"}


@pytest.fixture(params=["fakes", "dynamodb"])
def world(request: pytest.FixtureRequest) -> World:
    if request.param == "fakes":
        return World()
    settings: Settings = request.getfixturevalue("aws")
    return DynamoWorld(replace(settings, ack_timeout_ms=10_000, payment_deadline_ms=120_000))


class WaiterKilled(BaseException):
    """The thread serving the payment dies (a killed process never runs its ``except`` blocks)."""


def kill_waiter(_request_id: str) -> None:
    raise WaiterKilled


def connected(world: World, session: str = "s-1") -> None:
    assert lifecycle(world, "connected", session, world.clock.now_ms() - 5_000) == "connected"


# -- the terminal drops mid-payment -----------------------------------------------------------------------


@pytest.mark.parametrize("acked", [False, True], ids=["before-ack", "after-ack"])
def test_terminal_dropping_mid_payment_is_a_502_and_its_late_result_is_kept_once(world: World, acked: bool) -> None:
    connected(world)
    seen: list[str] = []

    def drop(request_id: str) -> None:
        seen.append(request_id)
        if acked:
            world.terminal_says("ack", request_id, {})
        lifecycle(world, "disconnected", "s-1")

    world.script(drop)
    reply = pay(world)
    assert isinstance(reply, ApiError) and (reply.status, reply.code) == (502, "terminal.disconnected")
    assert order_state(world) == "failed" and claim_of(world) is None
    # the terminal reconnects and reports what happened on its screen: the customer had paid
    lifecycle(world, "connected", "s-2")
    (request_id,) = seen
    assert world.terminal_says("ack", request_id, {}) == "ignored:ack_not_pending"
    assert world.terminal_says("result", request_id, SUCCESS) == "late_succeeded"
    status = order_status(world.payment_deps, MERCHANT, ORDER_ID).wire()
    assert (status["state"], status["late_result"]) == ("succeeded", True)
    assert status["payment"]["paymentStatus"] == "Success"
    # the same result again, or a different one, changes nothing
    finished_at = status["finished_at"]
    world.clock.advance(5_000)
    assert world.terminal_says("result", request_id, SUCCESS) == "ignored:already_final"
    assert world.terminal_says("result", request_id, DECLINED) == "ignored:already_final"
    assert order_status(world.payment_deps, MERCHANT, ORDER_ID).wire()["finished_at"] == finished_at
    # the retry after success is the stored answer, not a second charge
    replay = pay(world)
    assert replay.headers == {"Idempotent-Replayed": "true"}
    assert len([e for _, e in world.channel.published if e["type"] == "payment_request"]) == 1


def test_after_a_disconnect_the_first_late_failure_stands(world: World) -> None:
    """Before: a repeated Failed moved finished_at again, and a Success after it overrode it."""
    connected(world)
    seen: list[str] = []

    def drop(request_id: str) -> None:
        seen.append(request_id)
        world.terminal_says("ack", request_id, {})
        lifecycle(world, "disconnected", "s-1")

    world.script(drop)
    pay(world)
    (request_id,) = seen
    assert world.terminal_says("result", request_id, DECLINED) == "late_failed"
    first = order_status(world.payment_deps, MERCHANT, ORDER_ID).wire()
    refused = METRIC_COUNTS["EventsIgnored.reason=result_for_finished_dispatch"]
    world.clock.advance(1_000)
    assert world.terminal_says("result", request_id, DECLINED) == "ignored:already_final"
    assert world.terminal_says("result", request_id, SUCCESS) == "ignored:already_final"
    assert METRIC_COUNTS["EventsIgnored.reason=result_for_finished_dispatch"] == refused + 2
    assert order_status(world.payment_deps, MERCHANT, ORDER_ID).wire() == first


# -- duplicated, reordered and replayed messages ------------------------------------------------------------


def test_duplicate_ack_and_result_change_nothing(world: World) -> None:
    def twice(request_id: str) -> None:
        assert world.terminal_says("ack", request_id, {}) == "acknowledged"
        assert world.terminal_says("ack", request_id, {}) == "ignored:ack_not_pending"
        assert world.terminal_says("result", request_id, SUCCESS) == "succeeded"
        assert world.terminal_says("result", request_id, SUCCESS) == "ignored:already_final"

    world.script(twice)
    assert pay(world).body["paymentStatus"] == "Success"
    assert order_state(world) == "succeeded" and claim_of(world) is None


def test_a_busy_ack_after_the_ack_does_not_free_the_terminal(world: World) -> None:
    """Before: the busy answer released the claim first, so a repeated or reordered one freed the
    terminal of a payment under way and another order could start on it."""

    def contradicts(request_id: str) -> None:
        assert world.terminal_says("ack", request_id, {}) == "acknowledged"
        assert world.terminal_says("ack", request_id, {"accepted": False, "reason": "busy"}) == (
            "ignored:ack_not_pending"
        )
        assert claim_of(world) == request_id
        assert pay(world, example(order_id="ORDER-OTHER")).body["errorCode"] == "terminal_busy"
        world.terminal_says("result", request_id, SUCCESS)

    world.script(contradicts)
    assert pay(world).body["paymentStatus"] == "Success"
    assert claim_of(world) is None


def test_result_before_its_ack_is_taken_and_the_late_ack_ignored(world: World) -> None:
    def reordered(request_id: str) -> None:
        assert world.terminal_says("result", request_id, SUCCESS) == "succeeded"
        assert world.terminal_says("ack", request_id, {}) == "ignored:ack_not_pending"

    world.script(reordered)
    assert pay(world).body["paymentStatus"] == "Success"
    assert order_state(world) == "succeeded" and claim_of(world) is None


def test_a_result_replayed_onto_the_next_attempt_changes_nothing(world: World) -> None:
    seen: list[str] = []

    def declined(request_id: str) -> None:
        seen.append(request_id)
        world.terminal_says("result", request_id, DECLINED)

    world.script(declined)
    assert pay(world).body["errorCode"] == "declined"
    first = seen[0]

    def replay_then_pay(request_id: str) -> None:
        # the old attempt's result, captured and sent again: it names the old request, which is final
        assert world.terminal_says("result", first, SUCCESS) == "ignored:already_final"
        world.terminal_says("result", request_id, SUCCESS)

    world.script(replay_then_pay)
    reply = pay(world)
    assert reply.body["paymentStatus"] == "Success" and reply.body["attempt"] == 2


def test_a_captured_offline_status_replayed_mid_payment_changes_nothing(world: World) -> None:
    old = protocol.make_envelope(
        "status",
        "st-1",
        TERMINAL_ID,
        {"state": "offline"},
        PASSPHRASE,
        sent_at=protocol.timestamp_from_ms(world.clock.now_ms() - 60_000),
    )
    connected(world)
    outcomes: list[str] = []

    def replay(request_id: str) -> None:
        world.terminal_says("ack", request_id, {})
        topic = protocol.topic_for(TERMINAL_ID, "status")
        outcomes.append(handle_status(world.event_deps, topic, protocol.encode(old), world.clock.now_ms()))
        world.terminal_says("result", request_id, SUCCESS)

    world.script(replay)
    assert pay(world).body["paymentStatus"] == "Success"
    assert outcomes == ["ignored:older_status"]
    terminal = world.terminals.get(TERMINAL_ID)
    assert terminal is not None and terminal.online is True


# -- the process serving the payment dies mid-wait -------------------------------------------------------


def test_waiter_killed_mid_wait_the_order_tells_the_truth_and_the_result_frees_the_terminal(world: World) -> None:
    world.script(world.ack(), kill_waiter)
    with pytest.raises(WaiterKilled):
        pay(world)
    assert order_state(world) == "acknowledged"
    request_id = order_status(world.payment_deps, MERCHANT, ORDER_ID).wire()["request_id"]
    assert claim_of(world) == request_id
    assert world.terminal_says("result", request_id, SUCCESS) == "succeeded"
    assert order_state(world) == "succeeded" and claim_of(world) is None
    # the ECR's retry after its lost response gets the stored result, and the terminal takes the next one
    assert pay(world).headers == {"Idempotent-Replayed": "true"}
    world.script(world.ack(), world.result())
    assert pay(world, example(order_id="ORDER-NEXT")).body["paymentStatus"] == "Success"


def test_waiter_killed_and_terminal_silent_the_claim_expires_at_the_deadline(world: World) -> None:
    world.script(world.ack(), kill_waiter)
    with pytest.raises(WaiterKilled):
        pay(world)
    next_order = example(order_id="ORDER-NEXT")
    assert pay(world, next_order).body["errorCode"] == "terminal_busy"
    world.clock.advance(world.settings.payment_deadline_ms)
    assert order_state(world) == "timed_out"
    assert claim_of(world) is None, "the claim outlived the payment's deadline"
    world.script(world.ack(), world.result())
    assert pay(world, next_order).body["paymentStatus"] == "Success"


def test_killed_between_claim_and_publish_the_claim_is_released_and_the_attempt_failed(world: World) -> None:
    def killed(_terminal_id: str, _envelope: dict[str, Any]) -> None:
        raise WaiterKilled

    world.channel.on_publish = killed
    with pytest.raises(WaiterKilled):
        pay(world)
    status = order_status(world.payment_deps, MERCHANT, ORDER_ID).wire()
    assert (status["state"], status["reason"]) == ("failed", "dispatch_error")
    assert claim_of(world) is None

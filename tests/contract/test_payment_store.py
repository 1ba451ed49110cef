"""PaymentRepository: order heads and dispatches, started and moved only by conditional writes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from chalicelib.exceptions import ConditionFailed
from chalicelib.payments.domain import IN_FLIGHT, Dispatch, DispatchState
from chalicelib.payments.ports import PaymentRepository
from tests.conftest import TERMINAL_ID
from tests.contract.builders import NOW, PENDING, head_and_dispatch, race


def started(payments: PaymentRepository, request_id: str = "r-1", **kwargs: Any) -> Dispatch:
    head, dispatch = head_and_dispatch(request_id, **kwargs)
    payments.start_attempt(head, dispatch, None)
    return dispatch


def test_first_attempt_writes_head_and_dispatch(payments: PaymentRepository) -> None:
    head, dispatch = head_and_dispatch()
    payments.start_attempt(head, dispatch, None)
    assert payments.get_head("M1", "O-1") == head
    assert payments.get_dispatch("r-1") == dispatch


def test_heads_are_per_merchant(payments: PaymentRepository) -> None:
    started(payments)
    assert payments.get_head("M2", "O-1") is None
    assert payments.get_dispatch("r-unknown") is None


def test_a_second_first_attempt_fails_and_writes_nothing(payments: PaymentRepository) -> None:
    started(payments, "r-1")
    head, dispatch = head_and_dispatch("r-2")
    with pytest.raises(ConditionFailed):
        payments.start_attempt(head, dispatch, None)
    assert payments.get_head("M1", "O-1").request_id == "r-1"  # type: ignore[union-attr]
    assert payments.get_dispatch("r-2") is None, "the transaction wrote neither item"


def test_a_retry_replacing_the_attempt_it_read_starts_the_next_attempt(payments: PaymentRepository) -> None:
    started(payments, "r-1")
    head, dispatch = head_and_dispatch("r-2", attempt=2)
    payments.start_attempt(head, dispatch, 1)
    assert payments.get_head("M1", "O-1") == head
    assert payments.get_dispatch("r-2") == dispatch


def test_of_two_retries_of_the_same_attempt_one_fails(payments: PaymentRepository) -> None:
    started(payments, "r-1")
    first = head_and_dispatch("r-2", attempt=2)
    second = head_and_dispatch("r-3", attempt=2)
    payments.start_attempt(*first, 1)
    with pytest.raises(ConditionFailed):
        payments.start_attempt(*second, 1)
    head = payments.get_head("M1", "O-1")
    assert head is not None and (head.attempt, head.request_id) == (2, "r-2")
    assert payments.get_dispatch("r-3") is None
    assert payments.get_dispatch("r-1") is not None, "earlier attempts stay readable"


def test_of_concurrent_retries_exactly_one_starts(payments: PaymentRepository) -> None:
    started(payments, "r-1")
    attempts = [head_and_dispatch(f"r-retry-{n}", attempt=2) for n in range(4)]
    outcomes = race(*[lambda a=a: payments.start_attempt(*a, 1) for a in attempts])
    assert sum(outcome is None for outcome in outcomes) == 1, outcomes
    assert sum(isinstance(outcome, ConditionFailed) for outcome in outcomes) == 3
    winner = attempts[outcomes.index(None)][1].request_id
    assert payments.get_head("M1", "O-1").request_id == winner  # type: ignore[union-attr]
    assert [payments.get_dispatch(a[1].request_id) is not None for a in attempts].count(True) == 1


def test_retry_against_a_stale_attempt_number_fails(payments: PaymentRepository) -> None:
    started(payments, "r-1")
    with pytest.raises(ConditionFailed):
        payments.start_attempt(*head_and_dispatch("r-2", attempt=3), 2)
    assert payments.get_head("M1", "O-1").attempt == 1  # type: ignore[union-attr]
    assert payments.get_dispatch("r-2") is None


def test_a_retry_of_an_order_never_started_fails(payments: PaymentRepository) -> None:
    with pytest.raises(ConditionFailed):
        payments.start_attempt(*head_and_dispatch("r-2", attempt=2), 1)
    assert payments.get_head("M1", "O-1") is None and payments.get_dispatch("r-2") is None


def test_a_dispatch_id_already_used_fails_and_writes_no_head(payments: PaymentRepository) -> None:
    taken = started(payments, "r-1", order_id="O-1")
    with pytest.raises(ConditionFailed):
        payments.start_attempt(*head_and_dispatch("r-1", order_id="O-2"), None)
    assert payments.get_head("M1", "O-2") is None, "head and dispatch are written together or not at all"
    assert payments.get_dispatch("r-1") == taken


def test_transition_moves_forward_counts_versions_and_returns_the_new_state(payments: PaymentRepository) -> None:
    started(payments)
    acked = payments.transition("r-1", PENDING, DispatchState.ACKNOWLEDGED, NOW + 50, terminal_id=TERMINAL_ID)
    assert (acked.state, acked.acked_at_ms, acked.finished_at_ms, acked.version) == (
        DispatchState.ACKNOWLEDGED,
        NOW + 50,
        None,
        1,
    )
    result = {"payment_status": "Success", "error_data": {"code": "00", "n": 3}, "authorized_online": True}
    done = payments.transition("r-1", IN_FLIGHT, DispatchState.SUCCEEDED, NOW + 900, result=result)
    assert (done.state, done.finished_at_ms, done.version, done.result) == (
        DispatchState.SUCCEEDED,
        NOW + 900,
        2,
        result,
    )
    assert payments.get_dispatch("r-1") == done


def test_transition_records_the_reason(payments: PaymentRepository) -> None:
    started(payments)
    failed = payments.transition("r-1", IN_FLIGHT, DispatchState.FAILED, NOW + 1, reason="terminal_busy")
    assert (failed.state, failed.reason, failed.finished_at_ms, failed.late) == (
        DispatchState.FAILED,
        "terminal_busy",
        NOW + 1,
        False,
    )
    assert payments.get_dispatch("r-1") == failed


def test_transition_from_a_wrong_state_fails_and_changes_nothing(payments: PaymentRepository) -> None:
    started(payments)
    payments.transition("r-1", IN_FLIGHT, DispatchState.FAILED, NOW + 1, reason="terminal_busy")
    before = payments.get_dispatch("r-1")
    with pytest.raises(ConditionFailed):
        payments.transition("r-1", IN_FLIGHT, DispatchState.SUCCEEDED, NOW + 2, result={"payment_status": "Success"})
    with pytest.raises(ConditionFailed):
        payments.transition("r-1", PENDING, DispatchState.ACKNOWLEDGED, NOW + 3)
    assert payments.get_dispatch("r-1") == before


def test_transition_for_another_terminal_fails_and_changes_nothing(payments: PaymentRepository) -> None:
    started(payments)
    before = payments.get_dispatch("r-1")
    with pytest.raises(ConditionFailed):
        payments.transition("r-1", PENDING, DispatchState.ACKNOWLEDGED, NOW, terminal_id="PAX-77")
    assert payments.get_dispatch("r-1") == before


def test_transition_of_an_unknown_dispatch_fails_without_creating_it(payments: PaymentRepository) -> None:
    with pytest.raises(ConditionFailed):
        payments.transition("r-ghost", IN_FLIGHT, DispatchState.FAILED, NOW)
    assert payments.get_dispatch("r-ghost") is None


def test_late_result_is_flagged_and_keeps_the_timeout_reason(payments: PaymentRepository) -> None:
    started(payments)
    timed_out = payments.transition("r-1", IN_FLIGHT, DispatchState.TIMED_OUT, NOW + 1, reason="result_timeout")
    assert timed_out.late is False
    late = payments.transition(
        "r-1",
        frozenset({DispatchState.TIMED_OUT}),
        DispatchState.SUCCEEDED,
        NOW + 2,
        terminal_id=TERMINAL_ID,
        result={"payment_status": "Success"},
        late=True,
    )
    assert (late.state, late.late, late.reason, late.version) == (DispatchState.SUCCEEDED, True, "result_timeout", 2)
    assert payments.get_dispatch("r-1").late is True  # type: ignore[union-attr]


def test_a_failure_may_be_left_for_a_late_result_only_when_its_reason_allows(payments: PaymentRepository) -> None:
    started(payments, "r-1")
    started(payments, "r-2", order_id="O-2")
    payments.transition("r-1", IN_FLIGHT, DispatchState.FAILED, NOW + 1, reason="terminal_disconnected")
    payments.transition("r-2", IN_FLIGHT, DispatchState.FAILED, NOW + 1, reason="terminal_busy")
    allowed = frozenset({"terminal_disconnected", "terminal_unreachable"})
    late = payments.transition(
        "r-1",
        frozenset({DispatchState.TIMED_OUT}),
        DispatchState.SUCCEEDED,
        NOW + 2,
        terminal_id=TERMINAL_ID,
        late=True,
        failed_for=allowed,
    )
    assert (late.state, late.late) == (DispatchState.SUCCEEDED, True)
    with pytest.raises(ConditionFailed):
        payments.transition(
            "r-2",
            frozenset({DispatchState.TIMED_OUT}),
            DispatchState.SUCCEEDED,
            NOW + 2,
            terminal_id=TERMINAL_ID,
            late=True,
            failed_for=allowed,
        )
    assert payments.get_dispatch("r-2").state == DispatchState.FAILED  # type: ignore[union-attr]


def test_of_concurrent_results_exactly_one_lands(payments: PaymentRepository) -> None:
    started(payments)
    outcomes = race(
        *[
            lambda to=to: payments.transition("r-1", IN_FLIGHT, to, NOW, result={"payment_status": to.value})
            for to in (DispatchState.SUCCEEDED, DispatchState.FAILED, DispatchState.CANCELLED, DispatchState.TIMED_OUT)
        ]
    )
    landed = [o for o in outcomes if isinstance(o, Dispatch)]
    assert len(landed) == 1 and sum(isinstance(o, ConditionFailed) for o in outcomes) == 3
    assert payments.get_dispatch("r-1") == landed[0]


def test_dispatch_attributes_unknown_to_the_model_come_back_as_extra(payments: PaymentRepository) -> None:
    head, dispatch = head_and_dispatch()
    dispatch = replace(dispatch, extra={"notified_at_ms": NOW, "source": "ecr"})
    payments.start_attempt(head, dispatch, None)
    assert payments.get_dispatch("r-1") == dispatch

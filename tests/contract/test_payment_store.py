"""PaymentRepository: order heads and dispatches, started and moved only by conditional writes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from chalicelib.exceptions import ConditionFailed
from chalicelib.payments import domain
from chalicelib.payments.domain import Dispatch, DispatchState, Transition
from chalicelib.payments.ports import PaymentRepository
from tests.conftest import TERMINAL_ID
from tests.contract.builders import NOW, head_and_dispatch, race


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


SUCCESS = {"payment_status": "Success"}


def test_transition_moves_forward_counts_versions_and_returns_the_new_state(payments: PaymentRepository) -> None:
    started(payments)
    acked = payments.apply(Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, NOW + 50, terminal_id=TERMINAL_ID))
    assert (acked.state, acked.acked_at_ms, acked.finished_at_ms, acked.version) == (
        DispatchState.ACKNOWLEDGED,
        NOW + 50,
        None,
        1,
    )
    result = {"payment_status": "Success", "error_data": {"code": "00", "n": 3}, "authorized_online": True}
    done = payments.apply(Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, NOW + 900, result=result))
    assert (done.state, done.finished_at_ms, done.result_at_ms, done.version, done.result) == (
        DispatchState.SUCCEEDED,
        NOW + 900,
        NOW + 900,
        2,
        result,
    )
    assert payments.get_dispatch("r-1") == done


def test_transition_records_the_reason(payments: PaymentRepository) -> None:
    started(payments)
    failed = payments.apply(Transition("r-1", domain.BUSY_ACK, DispatchState.FAILED, NOW + 1, reason="terminal_busy"))
    assert (failed.state, failed.reason, failed.finished_at_ms, failed.late) == (
        DispatchState.FAILED,
        "terminal_busy",
        NOW + 1,
        False,
    )
    assert payments.get_dispatch("r-1") == failed


def test_transition_from_a_wrong_state_fails_and_changes_nothing(payments: PaymentRepository) -> None:
    started(payments)
    payments.apply(Transition("r-1", domain.BUSY_ACK, DispatchState.FAILED, NOW + 1, reason="terminal_busy"))
    before = payments.get_dispatch("r-1")
    with pytest.raises(ConditionFailed):
        payments.apply(Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, NOW + 2, result=SUCCESS))
    with pytest.raises(ConditionFailed):
        payments.apply(Transition("r-1", domain.LATE_RESULT, DispatchState.SUCCEEDED, NOW + 2, result=SUCCESS))
    with pytest.raises(ConditionFailed):
        payments.apply(Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, NOW + 3))
    assert payments.get_dispatch("r-1") == before


def test_transition_for_another_terminal_fails_and_changes_nothing(payments: PaymentRepository) -> None:
    started(payments)
    before = payments.get_dispatch("r-1")
    with pytest.raises(ConditionFailed):
        payments.apply(Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, NOW, terminal_id="PAX-77"))
    assert payments.get_dispatch("r-1") == before


def test_transition_of_an_unknown_dispatch_fails_without_creating_it(payments: PaymentRepository) -> None:
    with pytest.raises(ConditionFailed):
        payments.apply(Transition("r-ghost", domain.UNREACHABLE, DispatchState.FAILED, NOW))
    assert payments.get_dispatch("r-ghost") is None


def test_late_result_is_flagged_and_keeps_the_timeout_reason(payments: PaymentRepository) -> None:
    started(payments)
    timed_out = payments.apply(
        Transition("r-1", domain.RESULT_TIMEOUT, DispatchState.TIMED_OUT, NOW + 1, reason="result_timeout")
    )
    assert timed_out.late is False
    with pytest.raises(ConditionFailed):
        payments.apply(Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, NOW + 2, result=SUCCESS))
    late = payments.apply(
        Transition("r-1", domain.LATE_RESULT, DispatchState.SUCCEEDED, NOW + 2, terminal_id=TERMINAL_ID, result=SUCCESS)
    )
    assert (late.state, late.late, late.reason, late.version) == (DispatchState.SUCCEEDED, True, "result_timeout", 2)
    assert payments.get_dispatch("r-1").late is True  # type: ignore[union-attr]


def test_a_failure_may_be_left_for_a_late_result_only_when_its_reason_allows(payments: PaymentRepository) -> None:
    started(payments, "r-1")
    started(payments, "r-2", order_id="O-2")
    payments.apply(
        Transition("r-1", domain.DISCONNECTED, DispatchState.FAILED, NOW + 1, reason="terminal_disconnected")
    )
    payments.apply(Transition("r-2", domain.BUSY_ACK, DispatchState.FAILED, NOW + 1, reason="terminal_busy"))
    late = payments.apply(
        Transition("r-1", domain.LATE_RESULT, DispatchState.SUCCEEDED, NOW + 2, terminal_id=TERMINAL_ID, result=SUCCESS)
    )
    assert (late.state, late.late) == (DispatchState.SUCCEEDED, True)
    with pytest.raises(ConditionFailed):
        payments.apply(
            Transition(
                "r-2", domain.LATE_RESULT, DispatchState.SUCCEEDED, NOW + 2, terminal_id=TERMINAL_ID, result=SUCCESS
            )
        )
    assert payments.get_dispatch("r-2").state == DispatchState.FAILED  # type: ignore[union-attr]


def test_the_first_late_result_is_final(payments: PaymentRepository) -> None:
    """A repeated result, or a different one after it, changes nothing, even on a failed dispatch."""
    started(payments)
    payments.apply(
        Transition("r-1", domain.DISCONNECTED, DispatchState.FAILED, NOW + 1, reason="terminal_disconnected")
    )
    failed = {"payment_status": "Failed", "error_code": "declined"}
    payments.apply(Transition("r-1", domain.LATE_RESULT, DispatchState.FAILED, NOW + 2, result=failed))
    before = payments.get_dispatch("r-1")
    for to, result in ((DispatchState.FAILED, failed), (DispatchState.SUCCEEDED, SUCCESS)):
        for rule in (domain.RESULT, domain.LATE_RESULT):
            with pytest.raises(ConditionFailed):
                payments.apply(Transition("r-1", rule, to, NOW + 3, result=result))
    assert payments.get_dispatch("r-1") == before


def test_a_cancelling_dispatch_takes_the_terminals_result(payments: PaymentRepository) -> None:
    started(payments)
    cancelling = payments.apply(Transition("r-1", domain.CANCEL, DispatchState.CANCELLING, NOW + 1))
    assert (cancelling.state, cancelling.cancel_requested_at_ms) == (DispatchState.CANCELLING, NOW + 1)
    with pytest.raises(ConditionFailed):
        payments.apply(Transition("r-1", domain.RESULT_TIMEOUT, DispatchState.TIMED_OUT, NOW + 2))
    aborted = {"payment_status": "Failed", "error_code": "cancelled"}
    done = payments.apply(Transition("r-1", domain.RESULT, DispatchState.CANCELLED, NOW + 3, result=aborted))
    assert (done.state, done.result) == (DispatchState.CANCELLED, aborted)


def test_of_concurrent_results_exactly_one_lands(payments: PaymentRepository) -> None:
    started(payments)
    moves = [
        Transition("r-1", domain.RESULT, to, NOW, result={"payment_status": to.value})
        for to in (DispatchState.SUCCEEDED, DispatchState.FAILED, DispatchState.CANCELLED)
    ] + [Transition("r-1", domain.RESULT_TIMEOUT, DispatchState.TIMED_OUT, NOW, reason="result_timeout")]
    outcomes = race(*[lambda move=move: payments.apply(move) for move in moves])
    landed = [o for o in outcomes if isinstance(o, Dispatch)]
    assert len(landed) == 1 and sum(isinstance(o, ConditionFailed) for o in outcomes) == 3
    assert payments.get_dispatch("r-1") == landed[0]


def test_dispatch_attributes_unknown_to_the_model_come_back_as_extra(payments: PaymentRepository) -> None:
    head, dispatch = head_and_dispatch()
    dispatch = replace(dispatch, extra={"notified_at_ms": NOW, "source": "ecr"})
    payments.start_attempt(head, dispatch, None)
    assert payments.get_dispatch("r-1") == dispatch

"""The payment states as plain Python: when a terminal counts as busy, and what a reader reports for
a dispatch whose deadline passed with nobody left to write the timeout."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.payments import domain
from chalicelib.payments.domain import Dispatch, DispatchState, Terminal, Transition


def dispatch(state: DispatchState) -> Dispatch:
    return Dispatch("r-1", "M1", "A-1", 1, "PAX-1", "Debit", 899, "EUR", state, 0, 10_000, 60_000)


def test_a_terminal_is_busy_while_a_request_holds_it_and_until_the_claim_expires() -> None:
    held = Terminal("PAX-1", "M1", busy_request_id="r-1", busy_until_ms=5_000)
    assert held.is_busy(4_999)
    assert not held.is_busy(5_000)
    assert not Terminal("PAX-1", "M1", busy_request_id=None, busy_until_ms=5_000).is_busy(0)
    assert not Terminal("PAX-1", "M1", busy_request_id="r-1", busy_until_ms=0).is_busy(0)


@pytest.mark.parametrize(
    ("state", "now_ms", "effective"),
    [
        (DispatchState.PENDING, 9_999, DispatchState.PENDING),
        (DispatchState.PENDING, 10_000, DispatchState.TIMED_OUT),
        (DispatchState.ACKNOWLEDGED, 59_999, DispatchState.ACKNOWLEDGED),
        (DispatchState.ACKNOWLEDGED, 60_000, DispatchState.TIMED_OUT),
        (DispatchState.SUCCEEDED, 90_000, DispatchState.SUCCEEDED),
        (DispatchState.CANCELLED, 90_000, DispatchState.CANCELLED),
    ],
)
def test_a_reader_sees_a_passed_deadline_as_timed_out_and_a_final_state_as_it_is(
    state: DispatchState, now_ms: int, effective: DispatchState
) -> None:
    assert dispatch(state).effective_state(now_ms) == effective


@pytest.mark.parametrize(
    ("result", "result_at_ms"),
    [({"payment_status": "Success"}, None), (None, 1_000), ({"payment_status": "Failed"}, 1_000)],
    ids=["result-without-time", "time-without-result", "both"],
)
def test_a_dispatch_that_holds_any_trace_of_a_result_takes_no_other(result: Any, result_at_ms: int | None) -> None:
    recorded = dispatch(DispatchState.ACKNOWLEDGED)
    recorded.result, recorded.result_at_ms = result, result_at_ms
    assert not domain.RESULT.allows(recorded)
    assert domain.RESULT.allows(dispatch(DispatchState.ACKNOWLEDGED))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Transition("r-1", domain.ACK, DispatchState.FAILED, 0), "ack cannot lead to failed"),
        (lambda: Transition("r-1", domain.RESULT, DispatchState.SUCCEEDED, 0), "result needs result"),
        (
            lambda: Transition("r-1", domain.ACK, DispatchState.ACKNOWLEDGED, 0, result={"payment_status": "Success"}),
            "ack takes no result",
        ),
    ],
    ids=["wrong-target", "result-missing", "result-extra"],
)
def test_a_transition_its_rule_cannot_make_is_refused_when_built(build: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        build()
    assert str(caught.value) == message

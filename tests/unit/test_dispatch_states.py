"""The payment states as plain Python: when a terminal counts as busy, and what a reader reports for
a dispatch whose deadline passed with nobody left to write the timeout."""

from __future__ import annotations

import pytest

from chalicelib.payments.domain import Dispatch, DispatchState, Terminal


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

"""The wait's poll schedule by phase: fast until the ack and just after it, slower while the customer types."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.config import Settings
from chalicelib.exceptions import ConfigurationError
from chalicelib.payments.poll_schedule import PollPhase, next_interval_ms, phase_cap_ms, poll_phase
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import request_payment
from tests.conftest import MERCHANT, World, example

SETTINGS = Settings(
    poll_initial_ms=5, poll_growth_pct=150, poll_max_ms=40, poll_typing_after_ms=6_000, poll_typing_max_ms=500
)


def test_phase_follows_the_acknowledgement_and_the_time_since_it() -> None:
    assert poll_phase(SETTINGS, None) == PollPhase.ACK
    assert poll_phase(SETTINGS, 0) == PollPhase.RESULT
    assert poll_phase(SETTINGS, 5_999) == PollPhase.RESULT
    assert poll_phase(SETTINGS, 6_000) == PollPhase.TYPING


def test_interval_grows_to_the_cap_of_its_phase_only() -> None:
    interval, seen = 5, []
    for _ in range(20):
        interval = next_interval_ms(SETTINGS, interval, acknowledged_for_ms=1_000)
        seen.append(interval)
    assert max(seen) == 40
    for _ in range(20):
        interval = next_interval_ms(SETTINGS, interval, acknowledged_for_ms=10_000)
        seen.append(interval)
    assert seen[20:23] == [60, 90, 135], "leaves the fast cap gradually, not in one jump"
    assert seen[-1] == 500


def test_typing_cap_is_never_below_the_fast_cap() -> None:
    local = Settings(poll_max_ms=1_000, poll_typing_max_ms=500)
    assert phase_cap_ms(local, PollPhase.TYPING) == 1_000


def test_a_negative_typing_window_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        Settings.from_env({"POLL_TYPING_AFTER_MS": "-1"})


def _pay(world: World) -> Any:
    body = example()
    return request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body)


def test_a_customer_typing_past_the_window_is_polled_at_the_typing_cap_and_still_answered() -> None:
    world = World(Settings(ack_timeout_ms=10_000, payment_deadline_ms=120_000))
    started = world.clock.now_ms()
    acknowledged = []

    def terminal(request_id: str) -> None:
        # Runs at every poll (the scripted waker advances the clock by each wait): ack at once,
        # result once the customer has typed for 30 s.
        if not acknowledged:
            acknowledged.append(world.clock.now_ms())
            world.ack()(request_id)
        elif world.clock.now_ms() - started >= 30_000:
            world.result()(request_id)

    world.script(*[terminal] * 2_000)
    reply = _pay(world)
    assert reply.body["paymentStatus"] == "Success"
    waits = world.waker.waits
    at, fast, slow = started, [], []
    for wait in waits:
        (fast if at - acknowledged[0] < SETTINGS.poll_typing_after_ms else slow).append(round(wait * 1000))
        at += max(1, int(wait * 1000))
    assert max(fast) == world.settings.poll_max_ms
    assert max(slow) == world.settings.poll_typing_max_ms
    # ~6 s at <= 40 ms, then ~24 s at <= 500 ms: a few hundred reads, not the ~750 of a flat 40 ms cap.
    assert 150 < world.payments.reads < 260

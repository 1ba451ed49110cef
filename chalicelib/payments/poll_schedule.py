"""How often the synchronous wait reads the correlation record: fast while an answer is likely,
slower while the customer is still at the terminal.

The interval restarts at ``POLL_INITIAL_MS`` whenever the dispatch changes state and grows by
``POLL_GROWTH_PCT`` per read, up to the cap of the phase the wait is in:

- ``ack``: the terminal has not acknowledged yet (it does within a second or so): ``POLL_MAX_MS``;
- ``result``: the first ``POLL_TYPING_AFTER_MS`` after the acknowledgement, when a contactless tap
  or an inserted card without PIN has its result: ``POLL_MAX_MS``;
- ``typing``: past that window the customer is entering a PIN, trying a second card or answering
  the receipt question, for tens of seconds: ``POLL_TYPING_MAX_MS``.

A phase's cap bounds how long the answer can lag the terminal's result (plus one read), so it is
the latency the wait adds in that phase; the reads it saves are most of a long payment's bill.

    >>> from chalicelib.config import Settings
    >>> s = Settings()
    >>> [next_interval_ms(s, ms, acknowledged_for_ms=None) for ms in (5, 7, 10, 40)]
    [7, 10, 15, 40]
    >>> next_interval_ms(s, 40, acknowledged_for_ms=s.poll_typing_after_ms)
    60
    >>> next_interval_ms(s, 450, acknowledged_for_ms=s.poll_typing_after_ms)
    500
"""

from __future__ import annotations

from enum import StrEnum

from chalicelib.config import Settings


class PollPhase(StrEnum):
    ACK = "ack"
    RESULT = "result"
    TYPING = "typing"


def poll_phase(settings: Settings, acknowledged_for_ms: int | None) -> PollPhase:
    """``acknowledged_for_ms``: how long the dispatch has been acknowledged, None while it is not."""
    if acknowledged_for_ms is None:
        return PollPhase.ACK
    if acknowledged_for_ms < settings.poll_typing_after_ms:
        return PollPhase.RESULT
    return PollPhase.TYPING


def phase_cap_ms(settings: Settings, phase: PollPhase) -> int:
    if phase == PollPhase.TYPING:
        # Never faster than the other phases, whatever a deployment sets (the local stack raises
        # POLL_MAX_MS because its in-process wake-up ends the waits).
        return max(settings.poll_typing_max_ms, settings.poll_max_ms)
    return settings.poll_max_ms


def next_interval_ms(settings: Settings, previous_ms: int, acknowledged_for_ms: int | None) -> int:
    """The next sleep of the wait, in integer milliseconds."""
    cap = phase_cap_ms(settings, poll_phase(settings, acknowledged_for_ms))
    return min(cap, previous_ms * settings.poll_growth_pct // 100)

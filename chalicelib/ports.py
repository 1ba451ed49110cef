"""Ports every feature shares: time, the waiting request's wake-up, and message queues.

Each feature declares its own storage ports beside its services (``payments/ports.py``,
``console/ports.py``, ``merchants/ports.py``); adapters implement them and tests hand in fakes.
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class Waker(Protocol):
    """Lets a waiting request sleep between polls, and lets an event cut that sleep short.

    On AWS the event handler runs in another Lambda, so waking is a no-op and the poll schedule alone
    bounds the added latency; in one process (the local stack) the handler wakes the waiter at once.
    """

    def wait(self, request_id: str, timeout_s: float) -> None: ...

    def wake(self, request_id: str) -> None: ...


class SleepingWaker:
    def wait(self, request_id: str, timeout_s: float) -> None:
        time.sleep(timeout_s)

    def wake(self, request_id: str) -> None:
        return None


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class MessageQueue(Protocol):
    """A queue whose messages are JSON objects (SQS on AWS)."""

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None: ...

"""The small interfaces services accept; adapters implement them, tests hand in fakes."""

from __future__ import annotations

import time
from typing import Any, Protocol

from chalicelib.domain import Dispatch, DispatchState, OrderHead, Terminal


class ConditionFailed(Exception):
    """A conditional write lost: the item was not in the state the write required."""


class TerminalRepository(Protocol):
    def get(self, terminal_id: str) -> Terminal | None: ...

    def list_for_merchant(self, merchant_id: str) -> list[Terminal]: ...

    def put(self, terminal: Terminal) -> None: ...

    def claim(self, terminal_id: str, request_id: str, now_ms: int, until_ms: int, order_key: str = "") -> bool:
        """Mark the terminal busy for ``request_id`` (of ``order_key``) unless another unexpired claim holds it."""
        ...

    def release(self, terminal_id: str, request_id: str) -> bool:
        """Free the terminal if ``request_id`` still holds it."""
        ...

    def record_status(self, terminal_id: str, online: bool, sent_at_ms: int, seen_at: str) -> bool:
        """Record presence unless a newer status was already recorded."""
        ...


class PaymentRepository(Protocol):
    def get_head(self, merchant_id: str, order_id: str) -> OrderHead | None: ...

    def get_dispatch(self, request_id: str) -> Dispatch | None: ...

    def start_attempt(self, head: OrderHead, dispatch: Dispatch, previous_attempt: int | None) -> None:
        """Write the new head and its dispatch atomically; ConditionFailed if another attempt won."""
        ...

    def transition(
        self,
        request_id: str,
        allowed_from: frozenset[DispatchState],
        to: DispatchState,
        now_ms: int,
        terminal_id: str | None = None,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
        late: bool = False,
        failed_for: frozenset[str] = frozenset(),
    ) -> Dispatch:
        """Move a dispatch forward; ConditionFailed if it is not in ``allowed_from`` any more.

        ``failed_for`` also allows leaving ``failed`` when the failure had one of these reasons.
        """
        ...


class TerminalChannel(Protocol):
    def publish(self, terminal_id: str, envelope: dict[str, Any]) -> None:
        """Deliver a signed envelope to the terminal's ``requests`` topic at QoS 1; raise on failure."""
        ...


class ChannelError(Exception):
    """The message could not be handed to the terminal's broker."""


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

"""What the payment side needs from storage and messaging; adapters implement it, tests hand in fakes.

``Terminal`` and the correlation record's types are re-exported here: they are the ports' vocabulary,
and other features (enrollment) reach the payment side only through this module.
"""

from __future__ import annotations

from typing import Any, Protocol

from chalicelib.payments.domain import Dispatch, DispatchState, OrderHead, OrderPosition, Terminal

__all__ = [
    "Dispatch",
    "DispatchState",
    "OrderHead",
    "OrderPosition",
    "PaymentRepository",
    "Terminal",
    "TerminalChannel",
    "TerminalRepository",
]


class TerminalRepository(Protocol):
    def get(self, terminal_id: str) -> Terminal | None: ...

    def list_for_merchant(self, merchant_id: str) -> list[Terminal]: ...

    def put(self, terminal: Terminal) -> None: ...

    def create(self, terminal: Terminal) -> None:
        """Enroll; ConditionFailed if the terminal id is taken (by this merchant or another)."""
        ...

    def set_passphrase(self, terminal_id: str, merchant_id: str, passphrase: str | None) -> None:
        """Rotate (or remove) the passphrase of the merchant's terminal; ConditionFailed if not theirs."""
        ...

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

    def list_heads(
        self, merchant_id: str, limit: int, after: OrderPosition | None = None, terminal_id: str | None = None
    ) -> tuple[list[OrderHead], OrderPosition | None]:
        """One page of the merchant's order heads, latest attempt first (``updated_at_ms`` descending;
        heads of the same millisecond in an order of the store's choosing, stable across pages),
        with the position to continue from (None: no more).

        At most ``limit`` heads; with ``terminal_id`` only that terminal's, and the page may then come
        back shorter than ``limit`` (even empty) while a position says there is more, as a filtered
        DynamoDB query does. ``after`` is a position this method returned, for the same filter.
        Only the merchant's own heads, never the correlation records.
        """
        ...

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
        """Deliver a signed envelope to the terminal's ``requests`` topic at QoS 1; raise ChannelError on failure."""
        ...

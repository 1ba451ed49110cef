"""What the Console side needs from storage and the outside world; adapters implement it, tests hand
in fakes (``tests/fakes.py``) with the same conditional semantics."""

from __future__ import annotations

from typing import Any, Protocol

from chalicelib.console.domain import OrderDetails, Transaction, TransactionQuery

# Where a listing stopped: the sort position of its last transaction (``created_at`` and
# ``transaction_reference``), plain strings, never a store's own key format.
Position = dict[str, str]


class TransactionRepository(Protocol):
    def get(self, reference: str) -> Transaction | None: ...

    def put(self, tx: Transaction, expected_version: int) -> None:
        """Write ``tx`` if the stored one is still at ``expected_version`` (0: does not exist yet);
        ConditionFailed otherwise."""
        ...

    def mark_enqueued(self, reference: str, status_code: int) -> None:
        """The pending notification of ``status_code`` is in the queue; ConditionFailed if it moved on."""
        ...

    def record_delivery(self, reference: str, status_code: int) -> None:
        """A merchant server acknowledged ``status_code``; ConditionFailed if it already had."""
        ...

    def list_for_order(self, merchant_id: str, order_id: str) -> list[Transaction]: ...

    def page(
        self, query: TransactionQuery, limit: int, after: Position | None
    ) -> tuple[list[Transaction], Position | None]:
        """Up to ``limit`` transactions matching ``query``, newest first, after ``after``; the position
        to continue from, or None at the end. A page may hold fewer than ``limit`` and still continue."""
        ...


class OrderDetailsRepository(Protocol):
    def get(self, merchant_id: str, order_id: str) -> OrderDetails | None: ...

    def put_if_newer(self, details: OrderDetails) -> bool:
        """Store the details unless those of this attempt or a newer one are already there."""
        ...


class IpnInbox(Protocol):
    """IPNs exactly as verified, kept before the gateway is answered."""

    def store(self, reference: str, merchant_id: str, body_json: str, body_sha256: str, received_at_ms: int) -> bool:
        """False when this transaction_reference was already received."""
        ...

    def get(self, reference: str) -> dict[str, Any] | None: ...

    def mark_merged(self, reference: str, merged_at_ms: int) -> None: ...


class FormPoster(Protocol):
    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """The HTTP status of the answer; 0 when none came."""
        ...

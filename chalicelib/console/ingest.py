"""The Console transaction's life: record the order's details (step 2'), merge the IPN, and put
every new status in the merchant-notification outbox.

Merging is read, apply (pure, see ``chalicelib.console.domain``), conditional write on ``version``;
a lost race re-reads. A notification is announced without a dual-write gap: the write that creates
or changes a status also marks it pending, the queue message follows, then the mark "enqueued";
anything that crashes in between is redelivered and the redelivered merge sends what is still pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chalicelib import jsonutil, protocol
from chalicelib.console.domain import OrderDetails, Transaction, apply_details, apply_ipn, details_from_head
from chalicelib.console.ports import IpnInbox, OrderDetailsRepository, TransactionRepository
from chalicelib.console.schemas import IpnBody
from chalicelib.exceptions import ConditionFailed, IpnMissingError, TransactionMissingError
from chalicelib.observability import count, log_event
from chalicelib.ports import Clock, MessageQueue

# Conditional writes racing on one transaction: a handful of re-reads settle it, else the
# message is retried by its queue or stream.
_MAX_RACES = 5


@dataclass
class IngestDeps:
    transactions: TransactionRepository
    order_details: OrderDetailsRepository
    inbox: IpnInbox
    notifications: MessageQueue
    clock: Clock


def record_order_details(deps: IngestDeps, details: OrderDetails) -> list[str]:
    """Keep the order's details (newest attempt wins) and merge them into the order's transactions.

    Returns the references merged. A redelivered record stores nothing new but still merges the
    newest stored details, so a crash between the two steps heals on redelivery.
    """
    if deps.order_details.put_if_newer(details):
        count("OrderDetailsRecorded")
    newest = deps.order_details.get(details.merchant_id, details.order_id) or details
    merged = []
    for tx in deps.transactions.list_for_order(details.merchant_id, details.order_id):
        merge(deps, tx.transaction_reference, details=newest)
        merged.append(tx.transaction_reference)
    log_event(
        "order details recorded",
        order_id=details.order_id,
        terminal_id=details.terminal_id,
        attempt=details.attempt,
        merged=len(merged),
    )
    return merged


def order_head_changed(deps: IngestDeps, image: dict[str, Any] | None) -> None:
    """Step 2': a new attempt's order head (``pk`` = ``ORDER#…``) carries the order's details;
    the payments table's other items (the correlation records) are not the Console's business."""
    if image is not None and str(image.get("pk", "")).startswith("ORDER#"):
        record_order_details(deps, details_from_head(image))


def ingest_ipn(deps: IngestDeps, reference: str) -> Transaction:
    """Create or update the transaction of a stored IPN, with the order's details when known."""
    stored = deps.inbox.get(reference)
    if stored is None:
        raise IpnMissingError(f"no stored IPN for {reference}")
    ipn = IpnBody.model_validate(jsonutil.loads(stored["body_json"]))
    details = deps.order_details.get(ipn.merchant_id, ipn.order_id)
    tx = merge(deps, reference, ipn=ipn, details=details)
    # Read again after our write: details stored meanwhile may have missed this transaction on the
    # (eventually consistent) by-merchant-order index; whichever side writes last sees the other.
    later = deps.order_details.get(ipn.merchant_id, ipn.order_id)
    if later is not None and later.attempt > tx.details_attempt:
        tx = merge(deps, reference, details=later)
    deps.inbox.mark_merged(reference, deps.clock.now_ms())
    return tx


def merge(
    deps: IngestDeps, reference: str, ipn: IpnBody | None = None, details: OrderDetails | None = None
) -> Transaction:
    """Apply the IPN and/or the details to the stored transaction; a repeat writes nothing."""
    for _ in range(_MAX_RACES):
        current = deps.transactions.get(reference)
        if current is None and ipn is None:
            raise TransactionMissingError(f"transaction {reference} does not exist yet")
        now = protocol.timestamp_from_ms(deps.clock.now_ms())
        updated = apply_ipn(current, ipn, now) if ipn is not None else current
        assert updated is not None
        if details is not None:
            updated = apply_details(updated, details)
        if current is not None and updated.business_view() == current.business_view():
            flush_notification(deps, current)
            return current
        # A business view apart from current's: ``updated`` is a copy this merge made (apply_ipn and
        # apply_details copy what they change), so its bookkeeping is set on it in place.
        updated.updated_at, updated.version = now, (current.version if current else 0) + 1
        if current is None or updated.status_code != current.status_code:
            updated.notify_pending_status, updated.notify_enqueued = updated.status_code, False
        try:
            deps.transactions.put(updated, current.version if current else 0)
        except ConditionFailed:
            count("TransactionWriteRaces")
            continue
        count("TransactionsCreated" if current is None else "TransactionsUpdated")
        log_event(
            "transaction merged",
            transaction_reference=reference,
            order_id=updated.order_id,
            terminal_id=updated.terminal_id,
            status_code=updated.status_code,
            flags=updated.flags,
        )
        flush_notification(deps, updated)
        return updated
    raise ConditionFailed(f"transaction {reference} kept changing; retry later")


def flush_notification(deps: IngestDeps, tx: Transaction) -> bool:
    """Queue the transaction's pending notification unless it is queued or acknowledged already."""
    status = tx.notify_pending_status
    if status is None or tx.notify_enqueued or status in tx.notified_statuses:
        return False
    deps.notifications.send({"transaction_reference": tx.transaction_reference, "status_code": status})
    try:
        deps.transactions.mark_enqueued(tx.transaction_reference, status)
    except ConditionFailed:
        # Another writer queued it, or the status moved on and that write queues its own message;
        # the duplicate is harmless: the notifier skips a status already acknowledged.
        count("NotificationsEnqueueRaces")
    count("NotificationsEnqueued")
    return True

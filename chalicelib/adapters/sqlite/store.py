"""Every SQLite repository, queue and stream of one data directory, built together.

store = SqliteStore.open(Path(".data"))
store.terminals.claim(...)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chalicelib.adapters.sqlite.console import SqliteIpnInbox, SqliteOrderDetailsRepository, SqliteTransactionRepository
from chalicelib.adapters.sqlite.db import Database
from chalicelib.adapters.sqlite.limits import SqliteLimitStore
from chalicelib.adapters.sqlite.merchants import SqliteMerchantRepository
from chalicelib.adapters.sqlite.payments import PAYMENTS_STREAM, SqlitePaymentRepository, SqliteTerminalRepository
from chalicelib.adapters.sqlite.queues import Outbox, SqliteQueue
from chalicelib.ports import Clock

# Queue names and redrive as infra/ declares them on AWS (messaging.py): the IPN queue parks a
# message after 5 receipts, the merchant-notification queue after 10.
IPN_QUEUE = "ipn"
IPN_DLQ = "ipn-dlq"
NOTIFICATIONS_QUEUE = "merchant-notifications"
NOTIFICATIONS_DLQ = "merchant-notifications-dlq"
IPN_MAX_RECEIVES = 5
NOTIFICATIONS_MAX_RECEIVES = 10
DEFAULT_RETENTION_S = 90 * 86_400


@dataclass
class SqliteStore:
    db: Database
    merchants: SqliteMerchantRepository
    terminals: SqliteTerminalRepository
    payments: SqlitePaymentRepository
    transactions: SqliteTransactionRepository
    order_details: SqliteOrderDetailsRepository
    ipn_inbox: SqliteIpnInbox
    ipn_queue: SqliteQueue
    ipn_dlq: SqliteQueue
    notifications: SqliteQueue
    dead_letters: SqliteQueue
    payments_stream: Outbox
    limits: SqliteLimitStore

    @classmethod
    def open(
        cls, data_dir: Path | str, retention_s: int = DEFAULT_RETENTION_S, clock: Clock | None = None
    ) -> SqliteStore:
        db = Database.in_directory(data_dir)
        return cls(
            db=db,
            merchants=SqliteMerchantRepository(db),
            terminals=SqliteTerminalRepository(db),
            payments=SqlitePaymentRepository(db, retention_s),
            transactions=SqliteTransactionRepository(db),
            order_details=SqliteOrderDetailsRepository(db),
            ipn_inbox=SqliteIpnInbox(db),
            ipn_queue=SqliteQueue(db, IPN_QUEUE, IPN_DLQ, IPN_MAX_RECEIVES, clock),
            ipn_dlq=SqliteQueue(db, IPN_DLQ, clock=clock),
            notifications=SqliteQueue(db, NOTIFICATIONS_QUEUE, NOTIFICATIONS_DLQ, NOTIFICATIONS_MAX_RECEIVES, clock),
            dead_letters=SqliteQueue(db, NOTIFICATIONS_DLQ, clock=clock),
            payments_stream=Outbox(db, PAYMENTS_STREAM),
            limits=SqliteLimitStore(db),
        )

    def queue(self, name: str) -> SqliteQueue:
        for queue in (self.ipn_queue, self.ipn_dlq, self.notifications, self.dead_letters):
            if queue.name == name:
                return queue
        raise KeyError(name)

    def close(self) -> None:
        self.db.close()

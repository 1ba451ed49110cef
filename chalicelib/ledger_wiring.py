"""Composition root of the Console side (IPN, transactions, notifications, export), built lazily.

It shares the payment side's settings, merchants repository and clock (``chalicelib.wiring``), so
whatever a test or the local stack installs there is used here too; ``install`` overrides the rest.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from chalicelib.adapters.dynamo import DynamoMerchantRepository
from chalicelib.adapters.ledger import DynamoIpnInbox, DynamoOrderDetailsRepository, DynamoTransactionRepository
from chalicelib.adapters.notify_http import UrllibFormPoster
from chalicelib.adapters.queues import SqsQueue
from chalicelib.adapters.secrets import IpnSecret
from chalicelib.config import Settings
from chalicelib.ports import Clock
from chalicelib.services.ipn import IpnDeps
from chalicelib.services.notifications import FormPoster, NotifierDeps
from chalicelib.services.transactions import LedgerDeps
from chalicelib.wiring import components


@dataclass
class LedgerComponents:
    settings: Settings
    transactions: DynamoTransactionRepository
    order_details: DynamoOrderDetailsRepository
    inbox: DynamoIpnInbox
    merchants: DynamoMerchantRepository
    clock: Clock
    ipn_queue: SqsQueue
    notifications: SqsQueue
    dead_letters: SqsQueue
    poster: FormPoster
    ipn_secret: IpnSecret

    def ledger_deps(self) -> LedgerDeps:
        return LedgerDeps(self.transactions, self.order_details, self.inbox, self.notifications, self.clock)

    def ipn_deps(self) -> IpnDeps:
        return IpnDeps(
            self.inbox, self.merchants, self.ipn_queue, self.ipn_secret, self.clock, self.settings.ipn_freshness_s
        )

    def notifier_deps(self) -> NotifierDeps:
        return NotifierDeps(
            self.transactions,
            self.merchants,
            self.notifications,
            self.dead_letters,
            self.poster,
            self.clock,
            self.settings,
        )


_lock = threading.Lock()
_ledger: LedgerComponents | None = None
# Built from this payment-side Components; when another one is installed (a new local stack, a
# test), the Console side follows instead of keeping stale settings. Installed ones are kept.
_built_from: object | None = None


def build(settings: Settings | None = None) -> LedgerComponents:
    base = components()
    settings = settings or base.settings
    return LedgerComponents(
        settings=settings,
        transactions=DynamoTransactionRepository(settings.transactions_table),
        order_details=DynamoOrderDetailsRepository(settings.order_details_table),
        inbox=DynamoIpnInbox(settings.ipn_table),
        merchants=base.merchants,
        clock=base.clock,
        ipn_queue=SqsQueue(settings.ipn_queue_url),
        notifications=SqsQueue(settings.notifications_queue_url),
        dead_letters=SqsQueue(settings.notifications_dlq_url),
        poster=UrllibFormPoster(settings.notify_timeout_s),
        ipn_secret=IpnSecret(settings),
    )


def ledger() -> LedgerComponents:
    global _ledger, _built_from
    base = components()
    found = _ledger
    if found is None or (_built_from is not None and _built_from is not base):
        with _lock:
            if _ledger is None or (_built_from is not None and _built_from is not base):
                _ledger, _built_from = build(), base
            found = _ledger
    return found


def install(replacement: LedgerComponents | None) -> None:
    """Use these components from now on (local stack, tests); ``None`` rebuilds from settings."""
    global _ledger, _built_from
    with _lock:
        _ledger, _built_from = replacement, None

"""The composition root: every adapter built once per process from settings, lazily.

Handlers ask ``components()`` for what they need; tests and the local stack ``install`` their own
(fakes, another store, an in-process waker) before the first request. Every field is typed by its
port, so any implementation fits; a handler never knows which column it runs in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from chalicelib.config import Settings, get_settings
from chalicelib.console.ingest import IngestDeps
from chalicelib.console.ipn import IpnDeps
from chalicelib.console.notifications import NotifierDeps
from chalicelib.console.ports import FormPoster, IpnInbox, OrderDetailsRepository, TransactionRepository
from chalicelib.limits import AuthGuard, LimitSettings, LimitStore, WaitingPayments
from chalicelib.merchants.auth import Authenticator
from chalicelib.merchants.ports import LoginReader, MerchantRepository
from chalicelib.payments.ports import PaymentRepository, TerminalChannel, TerminalRepository
from chalicelib.payments.service import PaymentDeps
from chalicelib.payments.terminal_events import EventDeps
from chalicelib.ports import Clock, MessageQueue, SleepingWaker, SystemClock, Waker


@dataclass
class Components:
    settings: Settings
    clock: Clock
    waker: Waker
    # merchants
    merchants: MerchantRepository
    authenticator: Authenticator
    # payments
    terminals: TerminalRepository
    payments: PaymentRepository
    channel: TerminalChannel
    # Console
    transactions: TransactionRepository
    order_details: OrderDetailsRepository
    ipn_inbox: IpnInbox
    ipn_queue: MessageQueue
    notifications: MessageQueue
    dead_letters: MessageQueue
    poster: FormPoster
    ipn_secret: Callable[[], str]
    # limits (429)
    limits: LimitStore

    def limit_settings(self) -> LimitSettings:
        s = self.settings
        return LimitSettings(
            auth_failures_per_login=s.auth_failures_per_login,
            auth_failures_per_address=s.auth_failures_per_address,
            auth_window_s=s.auth_window_s,
            waiting_payments_per_merchant=s.max_waiting_payments_per_merchant,
            waiting_requests_per_order=s.max_waiting_requests_per_order,
        )

    def waiting_payments(self) -> WaitingPayments:
        longest = max(self.settings.payment_deadline_ms, self.settings.async_payment_deadline_ms)
        return WaitingPayments(self.limits, self.limit_settings(), longest, self.clock.now_ms)

    def payment_deps(self) -> PaymentDeps:
        return PaymentDeps(self.terminals, self.payments, self.channel, self.settings, self.clock, self.waker)

    def event_deps(self) -> EventDeps:
        return EventDeps(self.terminals, self.payments, self.settings, self.clock, self.waker)

    def ingest_deps(self) -> IngestDeps:
        return IngestDeps(self.transactions, self.order_details, self.ipn_inbox, self.notifications, self.clock)

    def ipn_deps(self) -> IpnDeps:
        return IpnDeps(
            self.ipn_inbox, self.merchants, self.ipn_queue, self.ipn_secret, self.clock, self.settings.ipn_freshness_s
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


class LazyChannel:
    """Opens the broker connection on the first publish: event-handler Lambdas never open one."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._channel: TerminalChannel | None = None
        self._lock = threading.Lock()

    def publish(self, terminal_id: str, envelope: dict[str, object]) -> None:
        if self._channel is None:
            with self._lock:
                if self._channel is None:
                    self._channel = _build_channel(self._settings)
        self._channel.publish(terminal_id, envelope)


def _build_channel(settings: Settings) -> TerminalChannel:
    from chalicelib.adapters.channels import IotDataChannel, MqttChannel

    if settings.terminal_channel == "mqtt":
        return MqttChannel(settings.mqtt_host, settings.mqtt_port, client_id="")
    return IotDataChannel(settings.iot_data_endpoint)


def build(settings: Settings | None = None) -> Components:
    """The AWS adapters (DynamoDB, SQS, SSM, IoT or MQTT), as every Lambda uses them."""
    from chalicelib.adapters.dynamodb.console import (
        DynamoIpnInbox,
        DynamoOrderDetailsRepository,
        DynamoTransactionRepository,
    )
    from chalicelib.adapters.dynamodb.limits import DynamoLimitStore
    from chalicelib.adapters.dynamodb.merchants import DynamoMerchantRepository
    from chalicelib.adapters.dynamodb.payments import DynamoPaymentRepository, DynamoTerminalRepository
    from chalicelib.adapters.http_notifier import UrllibFormPoster
    from chalicelib.adapters.sqs import SqsQueue
    from chalicelib.adapters.ssm import IpnSecret

    settings = settings or get_settings()
    merchants = DynamoMerchantRepository(settings.merchants_table)
    limits = DynamoLimitStore(settings.merchants_table)
    return Components(
        settings=settings,
        clock=SystemClock(),
        waker=SleepingWaker(),
        merchants=merchants,
        authenticator=authenticator(settings, merchants, limits),
        terminals=DynamoTerminalRepository(settings.terminals_table),
        payments=DynamoPaymentRepository(settings.payments_table, settings.payment_retention_days * 86_400),
        channel=LazyChannel(settings),
        transactions=DynamoTransactionRepository(settings.transactions_table),
        order_details=DynamoOrderDetailsRepository(settings.order_details_table),
        ipn_inbox=DynamoIpnInbox(settings.ipn_table),
        ipn_queue=SqsQueue(settings.ipn_queue_url),
        notifications=SqsQueue(settings.notifications_queue_url),
        dead_letters=SqsQueue(settings.notifications_dlq_url),
        poster=UrllibFormPoster(settings.notify_timeout_s, bool(settings.notify_allow_loopback_http)),
        ipn_secret=IpnSecret(settings),
        limits=limits,
    )


def authenticator(settings: Settings, logins: LoginReader, limits: LimitStore) -> Authenticator:
    """Basic authentication behind the failed-authentication limits, whatever the stores."""
    limit_settings = LimitSettings(
        auth_failures_per_login=settings.auth_failures_per_login,
        auth_failures_per_address=settings.auth_failures_per_address,
        auth_window_s=settings.auth_window_s,
    )
    return Authenticator(logins, settings.credential_cache_ttl_s, guard=AuthGuard(limits, limit_settings))


_lock = threading.RLock()
_components: Components | None = None


def components() -> Components:
    global _components
    found = _components
    if found is None:
        with _lock:
            if _components is None:
                _components = build()
            found = _components
    return found


def install(replacement: Components | None) -> None:
    """Use these components from now on (local stack, tests); ``None`` rebuilds from settings."""
    global _components
    with _lock:
        _components = replacement

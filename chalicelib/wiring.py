"""The composition root: real adapters built once per process from settings, lazily.

Tests and the local stack may ``override`` any piece (a fake repository, an in-process waker)
before the first request; handlers never know which column they run in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from chalicelib.adapters.channels import IotDataChannel, MqttChannel
from chalicelib.adapters.dynamo import DynamoMerchantRepository, DynamoPaymentRepository, DynamoTerminalRepository
from chalicelib.config import Settings, get_settings
from chalicelib.ports import Clock, SleepingWaker, SystemClock, TerminalChannel, Waker
from chalicelib.services.auth import Authenticator
from chalicelib.services.payments import PaymentDeps
from chalicelib.services.terminal_events import EventDeps


@dataclass
class Components:
    settings: Settings
    terminals: DynamoTerminalRepository
    payments: DynamoPaymentRepository
    merchants: DynamoMerchantRepository
    clock: Clock
    waker: Waker
    authenticator: Authenticator
    _channel: TerminalChannel | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def channel(self) -> TerminalChannel:
        # Built on first use: event-handler Lambdas never open a broker connection.
        if self._channel is None:
            with _lock:
                if self._channel is None:
                    self._channel = build_channel(self.settings)
        return self._channel

    def payment_deps(self) -> PaymentDeps:
        return PaymentDeps(self.terminals, self.payments, self.channel, self.settings, self.clock, self.waker)

    def event_deps(self) -> EventDeps:
        return EventDeps(self.terminals, self.payments, self.settings, self.clock, self.waker)


_lock = threading.RLock()
_components: Components | None = None


def build_channel(settings: Settings) -> TerminalChannel:
    if settings.terminal_channel == "mqtt":
        return MqttChannel(settings.mqtt_host, settings.mqtt_port, client_id="")
    return IotDataChannel(settings.iot_data_endpoint)


def build(settings: Settings | None = None) -> Components:
    settings = settings or get_settings()
    merchants = DynamoMerchantRepository(settings.merchants_table)
    return Components(
        settings=settings,
        terminals=DynamoTerminalRepository(settings.terminals_table),
        payments=DynamoPaymentRepository(settings.payments_table, settings.payment_retention_days * 86_400),
        merchants=merchants,
        clock=SystemClock(),
        waker=SleepingWaker(),
        authenticator=Authenticator(merchants, settings.credential_cache_ttl_s),
    )


def components() -> Components:
    global _components
    if _components is None:
        with _lock:
            if _components is None:
                _components = build()
    return _components


def install(replacement: Components | None) -> None:
    """Use these components from now on (local stack, tests); ``None`` rebuilds from settings."""
    global _components
    with _lock:
        _components = replacement

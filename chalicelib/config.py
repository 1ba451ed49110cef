"""Settings from the environment, in one place.

Every deployment column (AWS, ``make run``, tests) sets the same variables; the code never asks
which column it runs in. ``.chalice/config.json`` sets them per stage on AWS.

    >>> settings = Settings.from_env({"PAYMENTS_TABLE": "p"})
    >>> settings.payments_table
    'p'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache

from chalicelib.exceptions import ConfigurationError


@dataclass(frozen=True)
class Settings:
    stage: str = "dev"
    merchants_table: str = "nepting-merchants"
    terminals_table: str = "nepting-terminals"
    payments_table: str = "nepting-payments"
    transactions_table: str = "nepting-transactions"
    ipn_table: str = "nepting-ipn"
    order_details_table: str = "nepting-order-details"
    ipn_queue_url: str = ""
    notifications_queue_url: str = ""
    notifications_dlq_url: str = ""
    export_bucket: str = "nepting-exports"
    # Where in the bucket exports go; infra/ sets it with the bucket, its lifecycle rule and the policy.
    export_prefix: str = "exports/"
    # IPN secret: given directly (local stack, tests) or by an SSM SecureString parameter name (AWS).
    ipn_secret: str = ""
    ipn_secret_parameter: str = ""
    # "iot" (AWS IoT data plane) or "mqtt" (any MQTT 3.1.1 broker).
    terminal_channel: str = "iot"
    iot_data_endpoint: str = ""
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # The terminal must acknowledge within this window (docs/payment-api.md "Timing").
    ack_timeout_ms: int = 10_000
    # A Cancel waits this long for the terminal to answer its cancel_request (docs/payment-api.md "Cancel").
    cancel_timeout_ms: int = 10_000
    # Overall payment deadline; the terminal gets it as ``expires_at``. On AWS a synchronous wait must
    # also end inside API Gateway's integration timeout (infra/ sets this below it).
    payment_deadline_ms: int = 120_000
    # The deadline of a payment started with ``Prefer: respond-async``: nobody holds an HTTP request
    # open, so the customer gets the contract's full default.
    async_payment_deadline_ms: int = 120_000
    # Poll schedule of the synchronous wait (chalicelib/payments/poll_schedule.py): start fast, grow
    # geometrically, cap at poll_max_ms while an answer is likely (the ack, then the first
    # poll_typing_after_ms after it), at poll_typing_max_ms while the customer is still typing.
    poll_initial_ms: int = 5
    poll_growth_pct: int = 150
    poll_max_ms: int = 40
    poll_typing_after_ms: int = 6_000
    poll_typing_max_ms: int = 500
    # Events whose ``sent_at`` is further than this from now are refused.
    event_freshness_ms: int = 300_000
    # How long a verified Basic credential stays in the per-process cache.
    credential_cache_ttl_s: int = 60
    # Heads and dispatches are kept this long (DynamoDB TTL), for idempotency and look-ups.
    payment_retention_days: int = 90
    # IPNs whose X-Nepting-Timestamp is further than this from now are refused (docs/ipn.md).
    ipn_freshness_s: int = 300
    # Merchant notifications (docs/merchant-notifications.md): each POST gets this long, failed ones come back after a
    # growing delay capped by SQS's 900 s DelaySeconds, and are parked once this long has passed.
    notify_timeout_s: int = 5
    notify_first_delay_s: int = 30
    notify_max_delay_s: int = 900
    notify_give_up_after_s: int = 86_400
    # Limits (429 request.throttled): failed authentications per login and per source address in
    # each window, payment requests held open at once per merchant, and requests waiting on one order.
    auth_failures_per_login: int = 10
    auth_failures_per_address: int = 50
    auth_window_s: int = 60
    max_waiting_payments_per_merchant: int = 100
    max_waiting_requests_per_order: int = 5
    # 1 only on the local stack: notifications may go over http to loopback addresses.
    notify_allow_loopback_http: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            if f.type in ("int", int):
                try:
                    values[f.name] = int(raw)
                except ValueError as exc:
                    raise ConfigurationError(f"{f.name.upper()} must be an integer, got {raw!r}") from exc
            else:
                values[f.name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.terminal_channel not in ("iot", "mqtt"):
            raise ConfigurationError("TERMINAL_CHANNEL must be 'iot' or 'mqtt'")
        if self.ack_timeout_ms <= 0:
            raise ConfigurationError(f"ACK_TIMEOUT_MS must be positive, got {self.ack_timeout_ms}")
        for name, deadline in (
            ("PAYMENT_DEADLINE_MS", self.payment_deadline_ms),
            ("ASYNC_PAYMENT_DEADLINE_MS", self.async_payment_deadline_ms),
        ):
            if deadline < self.ack_timeout_ms:
                raise ConfigurationError(
                    f"{name} is {deadline}; it must be at least ACK_TIMEOUT_MS ({self.ack_timeout_ms}), "
                    "the time a terminal has to acknowledge"
                )
        if self.cancel_timeout_ms <= 0:
            raise ConfigurationError(f"CANCEL_TIMEOUT_MS must be positive, got {self.cancel_timeout_ms}")
        if not 0 < self.poll_initial_ms <= self.poll_max_ms or self.poll_growth_pct < 100:
            raise ConfigurationError("need 0 < POLL_INITIAL_MS <= POLL_MAX_MS and POLL_GROWTH_PCT >= 100")
        if self.poll_typing_after_ms < 0 or self.poll_typing_max_ms <= 0:
            raise ConfigurationError("need POLL_TYPING_AFTER_MS >= 0 and POLL_TYPING_MAX_MS > 0")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()

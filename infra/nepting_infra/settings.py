"""Deployment parameters, read once from CDK context (``-c key=value`` or ``cdk.json``).

Everything an operator may want to change per deployment lives here, with the default that a
fresh account can deploy as is. Values are derived together:

- the synchronous payment wait ends before API Gateway gives up on the integration;
- the API function's concurrency is what the account quota leaves once the terminal handlers and
  the rest of the account have their share, and the payment route's throttle admits no more
  payments than that concurrency can hold for the longest wait, so a flood gets API Gateway's
  ``429`` before the function is throttled into ``500``s.

    >>> t = DeploymentSettings.from_context({"alarm_email": "none"}.get)
    >>> (t.integration_timeout_ms, t.payment_deadline_ms, t.api_lambda_timeout_s)
    (29000, 27000, 30)
    >>> t = DeploymentSettings.from_context({"alarm_email": "none", "api_integration_timeout_s": "122"}.get)
    >>> (t.integration_timeout_ms, t.payment_deadline_ms, t.api_lambda_timeout_s)
    (122000, 120000, 123)
    >>> (t.api_concurrency, t.order_burst_limit, t.order_rate_limit)
    (740, 74, 4)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_NAME = "nepting-cloud-api"
METRICS_NAMESPACE = "NeptingCloudApi"
INFRA_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = INFRA_DIR.parent

# The terminal must acknowledge within 10 s (docs/payment-api.md "Timing").
ACK_TIMEOUT_MS = 10_000
DEFAULT_PAYMENT_DEADLINE_MS = 120_000
# A regional REST API's integration timeout without a quota increase.
DEFAULT_INTEGRATION_TIMEOUT_S = 29
# Room between the payment deadline and API Gateway's cut-off. The deadline counts from API
# Gateway's requestTimeEpoch, so a cold start is already inside it; what must still fit is the
# last poll, writing the timeout, releasing the terminal and returning the 504 body.
RESPONSE_MARGIN_MS = 2_000
# Lambda keeps at least this much of the account's concurrency unreserved; a deployment that
# reserves more fails (CloudFormation: "decreases account's UnreservedConcurrentExecution").
LAMBDA_MIN_UNRESERVED = 100
# Share of the API function's concurrency the payment route may fill at most; the rest is for the
# short requests (order look-ups, terminals, IPNs, the healthcheck) that share the function.
ORDER_ROUTE_SHARE_PCT = 90
ALARM_EMAIL_OPT_OUT = "none"
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

ContextGetter = Callable[[str], Any]


class DeploymentSettingsError(ValueError):
    """A context value is missing or present but cannot be deployed."""


@dataclass(frozen=True)
class DeploymentSettings:
    stage: str
    source_dir: Path
    integration_timeout_ms: int
    payment_deadline_ms: int
    # Asynchronous payments hold no HTTP request: they keep the deadline asked for.
    async_payment_deadline_ms: int
    ipn_secret_parameter: str
    iot_data_endpoint: str | None
    # None only when the operator opted out explicitly (alarm_email=none).
    alarm_email: str | None
    export_retention_days: int
    log_retention_days: int
    # Capacity: Lambda concurrency (see infra/README.md, "Scale").
    lambda_concurrency_quota: int
    terminal_events_concurrency: int
    terminal_status_concurrency: int
    unreserved_concurrency: int
    # Front door.
    api_rate_limit: int
    api_burst_limit: int
    order_rate_override: int | None
    waf: bool
    waf_rate_limit: int
    domain_name: str | None
    certificate_arn: str | None
    hosted_zone_id: str | None
    # API Gateway's account-wide logging role: off when another stack of the account manages it.
    manage_api_gateway_account: bool
    table_deletion_protection: bool
    # None: the measured size in functions.py. More buys a faster first request per container and
    # cold start, at a price proportional to every payment's wait (infra/README.md, Cost).
    api_memory_mb: int | None

    @property
    def api_lambda_timeout_s(self) -> int:
        # One second past the integration timeout: should anything overrun, API Gateway answers
        # 504 first instead of the Lambda being killed mid-response (which would be a 502).
        return math.ceil(self.integration_timeout_ms / 1000) + 1

    @property
    def deadline_was_capped(self) -> bool:
        return self.payment_deadline_ms < self.async_payment_deadline_ms

    @property
    def max_customer_time_s(self) -> int:
        """The longest a customer can take at the terminal and still be answered synchronously."""
        return self.payment_deadline_ms // 1000

    @property
    def api_concurrency(self) -> int:
        """Reserved concurrency of the API function: the quota minus everyone else's share."""
        return (
            self.lambda_concurrency_quota
            - self.terminal_events_concurrency
            - self.terminal_status_concurrency
            - self.unreserved_concurrency
        )

    @property
    def order_burst_limit(self) -> int:
        return max(1, self.api_concurrency // 10)

    @property
    def order_rate_limit(self) -> int:
        """Payments per second the route admits: with every payment held for the whole integration
        timeout, ``rate × timeout + burst`` still fits in the route's share of the concurrency."""
        if self.order_rate_override is not None:
            return self.order_rate_override
        room = self.api_concurrency * ORDER_ROUTE_SHARE_PCT // 100 - self.order_burst_limit
        return room * 1000 // self.integration_timeout_ms

    @staticmethod
    def integration_timeout_for(deadline_ms: int) -> int:
        """The integration timeout, in seconds, that lets a synchronous wait last ``deadline_ms``."""
        return math.ceil((deadline_ms + RESPONSE_MARGIN_MS) / 1000)

    def resource_name(self, suffix: str) -> str:
        """``nepting-cloud-api-prod-terminals``: every named resource carries app and stage."""
        return f"{APP_NAME}-{self.stage}-{suffix}"

    def summary(self) -> list[str]:
        """What ``make synth`` states about the deployment, before anyone deploys it."""
        lines = [
            f"synchronous payments: a customer has up to {self.max_customer_time_s} s at the terminal "
            f"(PAYMENT_DEADLINE_MS={self.payment_deadline_ms}, API Gateway integration timeout "
            f"{self.integration_timeout_ms // 1000} s); asynchronous ones {self.async_payment_deadline_ms // 1000} s",
            f"capacity: API function {self.api_concurrency} concurrent (payment route {self.order_rate_limit}/s, "
            f"burst {self.order_burst_limit}); terminal events {self.terminal_events_concurrency}, "
            f"terminal status {self.terminal_status_concurrency}; {self.unreserved_concurrency} left unreserved "
            f"of the {self.lambda_concurrency_quota} quota",
            "alarms: " + (f"e-mailed to {self.alarm_email}" if self.alarm_email else "no e-mail (opted out)"),
        ]
        if self.deadline_was_capped:
            lines.append(
                f"to give customers {self.async_payment_deadline_ms // 1000} s, raise the API Gateway quota "
                f"'Maximum integration timeout in milliseconds' and deploy with -c api_integration_timeout_s="
                f"{self.integration_timeout_for(self.async_payment_deadline_ms)} (infra/README.md)"
            )
        return lines

    @classmethod
    def from_context(cls, get: ContextGetter) -> DeploymentSettings:
        stage = str(get("stage") or "prod")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", stage):
            raise DeploymentSettingsError("stage must match [a-z][a-z0-9]{0,11}")
        integration_s = _int(get, "api_integration_timeout_s", DEFAULT_INTEGRATION_TIMEOUT_S)
        if not 1 <= integration_s <= 900:
            raise DeploymentSettingsError("api_integration_timeout_s must be within 1..900 (Lambda's limit)")
        wanted_deadline_ms = _int(get, "payment_deadline_ms", DEFAULT_PAYMENT_DEADLINE_MS)
        # No wait outlasts the deadline: a longer timeout would only hold functions (and throttle the
        # payment route) for nothing.
        integration_ms = min(integration_s, cls.integration_timeout_for(wanted_deadline_ms)) * 1000
        deadline_ms = min(wanted_deadline_ms, integration_ms - RESPONSE_MARGIN_MS)
        if deadline_ms < ACK_TIMEOUT_MS:
            raise DeploymentSettingsError(
                f"payment deadline {deadline_ms} ms would be shorter than the {ACK_TIMEOUT_MS} ms "
                "acknowledgement window: raise api_integration_timeout_s"
            )
        source = Path(str(get("chalice_source_dir") or REPO_ROOT))
        if not source.is_absolute():
            source = (INFRA_DIR / source).resolve()
        domain_name = get("domain_name") or None
        certificate_arn = get("certificate_arn") or None
        if bool(domain_name) != bool(certificate_arn):
            raise DeploymentSettingsError(
                "a custom domain needs both domain_name and certificate_arn (an ACM certificate in the stack's region)"
            )
        settings = cls(
            stage=stage,
            source_dir=source,
            integration_timeout_ms=integration_ms,
            payment_deadline_ms=deadline_ms,
            async_payment_deadline_ms=max(wanted_deadline_ms, deadline_ms),
            ipn_secret_parameter=str(get("ipn_secret_parameter") or f"/{APP_NAME}/{stage}/ipn-secret"),
            iot_data_endpoint=get("iot_data_endpoint") or None,
            alarm_email=_alarm_email(get),
            export_retention_days=_int(get, "export_retention_days", 3650),
            log_retention_days=_int(get, "log_retention_days", 90),
            lambda_concurrency_quota=_int(get, "lambda_concurrency_quota", 1000),
            terminal_events_concurrency=_int(get, "terminal_events_concurrency", 50),
            terminal_status_concurrency=_int(get, "terminal_status_concurrency", 10),
            unreserved_concurrency=_int(get, "unreserved_concurrency", 200),
            api_rate_limit=_int(get, "api_rate_limit", 100),
            api_burst_limit=_int(get, "api_burst_limit", 200),
            order_rate_override=_int(get, "order_rate_limit", 0) or None,
            waf=_bool(get, "waf", False),
            waf_rate_limit=_int(get, "waf_rate_limit", 1000),
            domain_name=str(domain_name) if domain_name else None,
            certificate_arn=str(certificate_arn) if certificate_arn else None,
            hosted_zone_id=get("hosted_zone_id") or None,
            manage_api_gateway_account=_bool(get, "manage_api_gateway_account", True),
            table_deletion_protection=_bool(get, "table_deletion_protection", False),
            api_memory_mb=_int(get, "api_memory_mb", 0) or None,
        )
        settings._check_capacity()
        return settings

    def _check_capacity(self) -> None:
        if self.unreserved_concurrency < LAMBDA_MIN_UNRESERVED:
            raise DeploymentSettingsError(f"unreserved_concurrency must be at least {LAMBDA_MIN_UNRESERVED} (Lambda)")
        if min(self.terminal_events_concurrency, self.terminal_status_concurrency) < 1:
            raise DeploymentSettingsError("the terminal handlers need a reserved concurrency of at least 1")
        if self.api_concurrency < 10:
            raise DeploymentSettingsError(
                f"a Lambda concurrency quota of {self.lambda_concurrency_quota} leaves the API function "
                f"{self.api_concurrency}: request an increase of 'Concurrent executions' (Service Quotas, "
                "AWS Lambda) and set lambda_concurrency_quota to the new value (infra/README.md, Scale)"
            )
        if self.order_rate_limit < 1:
            raise DeploymentSettingsError(
                f"the API function's {self.api_concurrency} concurrent executions cannot hold one payment a "
                f"second for {self.integration_timeout_ms // 1000} s: raise the Lambda concurrency quota "
                "(lambda_concurrency_quota) or lower api_integration_timeout_s (infra/README.md, Scale)"
            )
        if self.api_memory_mb is not None and not 128 <= self.api_memory_mb <= 10_240:
            raise DeploymentSettingsError("api_memory_mb must be within 128..10240 (Lambda)")
        if not 100 <= self.waf_rate_limit <= 2_000_000_000:
            raise DeploymentSettingsError("waf_rate_limit must be within 100..2e9 requests per 5 minutes (WAF)")


def _alarm_email(get: ContextGetter) -> str | None:
    raw = str(get("alarm_email") or "").strip()
    if raw == ALARM_EMAIL_OPT_OUT:
        return None
    if not EMAIL.fullmatch(raw):
        raise DeploymentSettingsError(
            "alarm_email is required: -c alarm_email=oncall@example.com subscribes that address to the "
            "alarm topic; -c alarm_email=none deploys without (then subscribe your paging tool to the "
            "AlarmTopicArn output yourself)"
        )
    return raw


def _int(get: ContextGetter, key: str, default: int) -> int:
    raw = get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise DeploymentSettingsError(f"context {key} must be an integer, got {raw!r}") from exc


def _bool(get: ContextGetter, key: str, default: bool) -> bool:
    raw = get(key)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).lower()
    if text not in ("true", "false"):
        raise DeploymentSettingsError(f"context {key} must be true or false, got {raw!r}")
    return text == "true"

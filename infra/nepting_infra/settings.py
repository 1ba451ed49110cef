"""Deployment parameters, read once from CDK context (``-c key=value`` or ``cdk.json``).

Everything an operator may want to change per deployment lives here, with the default that a
fresh account can deploy as is. Timing values are derived together, so that the synchronous
payment wait always ends before API Gateway gives up on the integration:

    >>> t = DeploymentSettings.from_context({}.get)
    >>> (t.integration_timeout_ms, t.payment_deadline_ms, t.api_lambda_timeout_s)
    (29000, 26000, 30)
    >>> t = DeploymentSettings.from_context({"api_integration_timeout_s": "125"}.get)
    >>> (t.integration_timeout_ms, t.payment_deadline_ms, t.api_lambda_timeout_s)
    (125000, 120000, 126)
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

# The terminal must acknowledge within 10 s (CONTRACT §1 "Timing").
ACK_TIMEOUT_MS = 10_000
# The contract's default overall payment deadline.
DEFAULT_PAYMENT_DEADLINE_MS = 120_000
# API Gateway's default (and, without a quota increase, maximum) integration timeout.
DEFAULT_INTEGRATION_TIMEOUT_S = 29
# Room between the end of the payment wait and API Gateway's cut-off: a cold start (~1.5 s with
# pydantic), authentication, the terminal claim and writing the response all happen inside the
# integration timeout too. Less than this and a slow cold start turns our 504 into API Gateway's.
RESPONSE_MARGIN_MS = 3_000

ContextGetter = Callable[[str], Any]


class DeploymentSettingsError(ValueError):
    """A context value is present but cannot be deployed."""


@dataclass(frozen=True)
class DeploymentSettings:
    stage: str
    source_dir: Path
    integration_timeout_ms: int
    payment_deadline_ms: int
    ipn_secret_parameter: str
    iot_data_endpoint: str | None
    alarm_email: str | None
    export_retention_days: int
    log_retention_days: int

    @property
    def api_lambda_timeout_s(self) -> int:
        # One second past the integration timeout: should anything overrun, API Gateway answers
        # 504 first instead of the Lambda being killed mid-response (which would be a 502).
        return math.ceil(self.integration_timeout_ms / 1000) + 1

    @property
    def deadline_was_capped(self) -> bool:
        return self.payment_deadline_ms < DEFAULT_PAYMENT_DEADLINE_MS

    def resource_name(self, suffix: str) -> str:
        """``nepting-cloud-api-prod-terminals``: every named resource carries app and stage."""
        return f"{APP_NAME}-{self.stage}-{suffix}"

    @classmethod
    def from_context(cls, get: ContextGetter) -> DeploymentSettings:
        stage = str(get("stage") or "prod")
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", stage):
            raise DeploymentSettingsError("stage must match [a-z][a-z0-9]{0,11}")
        integration_s = _int(get, "api_integration_timeout_s", DEFAULT_INTEGRATION_TIMEOUT_S)
        if not 1 <= integration_s <= 900:
            raise DeploymentSettingsError("api_integration_timeout_s must be within 1..900")
        integration_ms = integration_s * 1000
        wanted_deadline_ms = _int(get, "payment_deadline_ms", DEFAULT_PAYMENT_DEADLINE_MS)
        deadline_ms = min(wanted_deadline_ms, integration_ms - RESPONSE_MARGIN_MS)
        if deadline_ms < ACK_TIMEOUT_MS:
            raise DeploymentSettingsError(
                f"payment deadline {deadline_ms} ms would be shorter than the {ACK_TIMEOUT_MS} ms "
                "acknowledgement window: raise api_integration_timeout_s"
            )
        source = Path(str(get("chalice_source_dir") or REPO_ROOT))
        if not source.is_absolute():
            source = (INFRA_DIR / source).resolve()
        return cls(
            stage=stage,
            source_dir=source,
            integration_timeout_ms=integration_ms,
            payment_deadline_ms=deadline_ms,
            ipn_secret_parameter=str(get("ipn_secret_parameter") or f"/{APP_NAME}/{stage}/ipn-secret"),
            iot_data_endpoint=get("iot_data_endpoint") or None,
            alarm_email=get("alarm_email") or None,
            export_retention_days=_int(get, "export_retention_days", 3650),
            log_retention_days=_int(get, "log_retention_days", 90),
        )


def _int(get: ContextGetter, key: str, default: int) -> int:
    raw = get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise DeploymentSettingsError(f"context {key} must be an integer, got {raw!r}") from exc

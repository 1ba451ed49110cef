"""Structured JSON logs and EMF metrics, the same on Lambda and locally.

Logs never carry secrets, card numbers beyond the masked PAN, e-mail addresses or phone numbers:
callers pass identifiers (order_id, terminal_id, request_id), never payloads.

    >>> count("PaymentsStarted")
    >>> METRIC_COUNTS["PaymentsStarted"] >= 1
    True
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit, single_metric

NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "NeptingCloudApi")
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "nepting-cloud-api"))

# Every metric is also counted in-process: tests and the local stack read these.
METRIC_COUNTS: Counter[str] = Counter()
_lock = threading.Lock()
_emit = os.environ.get("METRICS_EMF", "true").lower() != "false"


def count(name: str, value: int = 1, **dimensions: str) -> None:
    with _lock:
        METRIC_COUNTS[name] += value
        for key, dim in dimensions.items():
            METRIC_COUNTS[f"{name}.{key}={dim}"] += value
    if _emit:
        with single_metric(name=name, unit=MetricUnit.Count, value=value, namespace=NAMESPACE) as metric:
            for key, dim in dimensions.items():
                metric.add_dimension(name=key, value=dim)


def log_event(message: str, level: str = "info", **fields: Any) -> None:
    getattr(logger, level)(message, extra=fields)

"""Structured JSON logs and EMF metrics, the same on Lambda and locally.

Logs never carry secrets, card numbers beyond the masked PAN, e-mail addresses or phone numbers:
callers pass identifiers (order_id, terminal_id, request_id), never payloads.

    >>> count("PaymentsStarted")
    >>> METRIC_COUNTS["PaymentsStarted"] >= 1
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit, single_metric

NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "NeptingCloudApi")
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "nepting-cloud-api"))

# Every metric is also counted in-process: tests and the local stack read these.
METRIC_COUNTS: Counter[str] = Counter()
_lock = threading.Lock()


def _emitting() -> bool:
    """EMF lines on stdout (CloudWatch reads them on Lambda), unless ``METRICS_EMF=false``: read at
    each metric, since the local stack turns them off after this module is imported."""
    return os.environ.get("METRICS_EMF", "true").lower() != "false"


def count(name: str, value: int = 1, **dimensions: str) -> None:
    with _lock:
        METRIC_COUNTS[name] += value
        for key, dim in dimensions.items():
            METRIC_COUNTS[f"{name}.{key}={dim}"] += value
    if _emitting():
        with single_metric(name=name, unit=MetricUnit.Count, value=value, namespace=NAMESPACE) as metric:
            for key, dim in dimensions.items():
                metric.add_dimension(name=key, value=dim)


def log_event(message: str, level: str = "info", **fields: Any) -> None:
    getattr(logger, level)(message, extra=fields)


# Lambda's X-Ray daemon listens here when the function's tracing is Active.
_XRAY_DAEMON = "127.0.0.1:2000"


@contextlib.contextmanager
def traced(name: str, **annotations: str) -> Iterator[None]:
    """An X-Ray subsegment around a block, with searchable annotations (``order_id``, ``request_id``).

    Sent as one UDP datagram to the X-Ray daemon beside the function when Lambda traces the current
    invocation (``_X_AMZN_TRACE_ID`` says ``Sampled=1``); a no-op elsewhere (local stack, tests
    without the variable). No SDK: the daemon takes documents of this shape as they are.
    """
    header = _trace_header(os.environ.get("_X_AMZN_TRACE_ID", ""))
    started_ns = time.time_ns()
    try:
        yield
    finally:
        if header is not None:
            _send_subsegment(name, header, started_ns, time.time_ns(), annotations)


def _trace_header(raw: str) -> dict[str, str] | None:
    fields = dict(part.split("=", 1) for part in raw.split(";") if "=" in part)
    if fields.get("Sampled") != "1" or "Root" not in fields or "Parent" not in fields:
        return None
    return fields


def _epoch_seconds(ns: int) -> str:
    # X-Ray wants fractional epoch seconds; written as text so no float is involved.
    seconds, rest = divmod(ns // 1000, 1_000_000)
    return f"{seconds}.{rest:06d}"


def _send_subsegment(name: str, header: dict[str, str], start_ns: int, end_ns: int, notes: dict[str, str]) -> None:
    document = json.dumps(
        {
            "type": "subsegment",
            "name": name,
            "id": secrets.token_hex(8),
            "trace_id": header["Root"],
            "parent_id": header["Parent"],
            # Annotation keys are alphanumeric or underscore; values are indexed for trace search.
            "annotations": {key: str(value)[:250] for key, value in notes.items()},
        },
        separators=(",", ":"),
    )
    document = f'{document[:-1]},"start_time":{_epoch_seconds(start_ns)},"end_time":{_epoch_seconds(end_ns)}}}'
    address = os.environ.get("AWS_XRAY_DAEMON_ADDRESS", _XRAY_DAEMON)
    # "host:port", or "udp:host:port tcp:host:port" when the two differ.
    udp = next((part[4:] for part in address.split() if part.startswith("udp:")), address.split()[0])
    host, _, port = udp.rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(f'{{"format":"json","version":1}}\n{document}'.encode(), (host, int(port)))
    except (OSError, ValueError) as exc:
        # Tracing must never fail a payment.
        logger.warning("trace not sent", extra={"error": str(exc)})

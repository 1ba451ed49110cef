"""What a payment costs: DynamoDB request units from item sizes, reads from the poll schedule, and the
AWS bill per payment at public on-demand prices.

Pure functions only (no I/O), so ``tests/unit/test_bench.py`` checks the arithmetic in milliseconds.

    >>> read_units(5000, consistent=True)
    2.0
    >>> write_units(300, transactional=True)
    2.0
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from chalicelib.config import Settings
from chalicelib.payments.poll_schedule import next_interval_ms

# -- DynamoDB item sizes and request units ---------------------------------------------------------
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html

READ_UNIT_BYTES = 4096
WRITE_UNIT_BYTES = 1024


def number_size(text: str) -> int:
    """About one byte per two significant digits, plus one (at most 21 bytes)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return len(text)
    digits = value.normalize().as_tuple().digits if value != 0 else (0,)
    return min(21, math.ceil(len(digits) / 2) + 1)


def value_size(value: dict[str, Any]) -> int:
    """Size in bytes of one DynamoDB AttributeValue in wire format (``{"S": "…"}``, ``{"M": {…}}``…)."""
    (kind, inner), *_ = value.items()
    if kind == "S":
        return len(str(inner).encode("utf-8"))
    if kind == "N":
        return number_size(str(inner))
    if kind == "B":
        return len(inner) if isinstance(inner, bytes | bytearray) else len(str(inner))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(name.encode("utf-8")) + value_size(item) for name, item in inner.items())
    if kind == "L":
        return 3 + sum(1 + value_size(item) for item in inner)
    if kind == "SS":
        return sum(len(str(item).encode("utf-8")) for item in inner)
    if kind == "NS":
        return sum(number_size(str(item)) for item in inner)
    if kind == "BS":
        return sum(len(item) for item in inner)
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: dict[str, Any] | None) -> int:
    """Size in bytes of an item in wire format: attribute names plus values."""
    if not item:
        return 0
    return sum(len(name.encode("utf-8")) + value_size(value) for name, value in item.items())


def read_units(size_bytes: int, consistent: bool, transactional: bool = False) -> float:
    """RRU of one read returning ``size_bytes`` (a miss still costs the minimum)."""
    units = float(max(1, math.ceil(size_bytes / READ_UNIT_BYTES)))
    if transactional:
        return units * 2
    return units if consistent else units / 2


def write_units(size_bytes: int, transactional: bool = False) -> float:
    """WRU of one write of an item of ``size_bytes`` (for an update: the larger of before and after)."""
    units = float(max(1, math.ceil(size_bytes / WRITE_UNIT_BYTES)))
    return units * 2 if transactional else units


# -- the poll schedule -----------------------------------------------------------------------------


def schedule(**overrides: int) -> Settings:
    """The wait's poll schedule: the service's defaults (what is deployed), with ``overrides``."""
    return replace(Settings(), **overrides)


def read_times(until_ms: int, plan: Settings, ack_after_ms: int = 0, read_ms: int = 0) -> list[int]:
    """When each read of a wait completes, up to ``until_ms``, while no result has landed.

    Mirrors chalicelib/payments/service.py ``wait_for_final`` step by step and takes each next
    interval from chalicelib/payments/poll_schedule.py itself: read; restart at the initial interval when the
    state moved; sleep; next interval by the phase the wait is in.
    """
    now, interval, times = 0, plan.poll_initial_ms, []
    seen_acked: bool | None = None
    state_since = 0
    while True:
        now += read_ms
        times.append(now)
        if now >= until_ms:
            return times
        acked = now >= ack_after_ms
        if acked != seen_acked:
            seen_acked, interval, state_since = acked, plan.poll_initial_ms, now
        acknowledged_for = now - state_since if acked else None
        now += interval
        interval = next_interval_ms(plan, interval, acknowledged_for)


def _polls(result_after_ms: int, plan: Settings, ack_after_ms: int, read_ms: int) -> tuple[int, int]:
    """(reads, ms from the result landing to the end of the read that sees it) of one wait."""
    times = read_times(result_after_ms, plan, ack_after_ms, read_ms)
    return len(times), times[-1] - result_after_ms


def poll_reads(result_after_ms: int, plan: Settings | None = None, ack_after_ms: int = 0, read_ms: int = 0) -> int:
    """How many correlation-record reads a wait makes when the ack lands ``ack_after_ms`` and the
    result ``result_after_ms`` after its first read, each read taking ``read_ms`` (0: an upper bound).

    >>> poll_reads(0)
    1
    >>> poll_reads(30_000) in range(205, 220)
    True
    """
    return _polls(result_after_ms, plan or Settings(), ack_after_ms, read_ms)[0]


def added_latency_ms(
    result_after_ms: int, plan: Settings | None = None, ack_after_ms: int = 0, read_ms: int = 0
) -> int:
    """How long after the result lands the wait has read it: the latency the schedule adds."""
    return _polls(result_after_ms, plan or Settings(), ack_after_ms, read_ms)[1]


def phase_latency(
    plan: Settings | None = None, read_ms: int = 0, ack_after_ms: int = 500
) -> dict[str, dict[str, float]]:
    """Added latency for results landing in each phase of the wait, every millisecond of a window:
    ``result`` 1–5 s after the ack (a tap), ``typing`` 10–60 s after it (a PIN, a second card)."""
    plan = plan or Settings()
    windows = {"result": (1_000, 5_000), "typing": (10_000, 60_000)}
    found = {}
    for phase, (start, end) in windows.items():
        times = read_times(ack_after_ms + end, plan, ack_after_ms, read_ms)
        samples = [times[bisect.bisect_left(times, at)] - at for at in range(ack_after_ms + start, ack_after_ms + end)]
        found[phase] = {
            "window_ms": [start, end],
            "mean_ms": round(sum(samples) / len(samples), 1),
            "max_ms": max(samples),
        }
    return found


# -- prices ----------------------------------------------------------------------------------------

PRICES_AS_OF = "2025-06-01"
PRICE_REGION = "us-east-1"


@dataclass(frozen=True)
class Price:
    name: str
    usd: float
    per: str
    source: str


# Public on-demand list prices, us-east-1, free tiers ignored. Taken from the AWS pricing pages
# as of PRICES_AS_OF (the DynamoDB on-demand figures include the 50 % cut of 2024-11-01); the bench
# machine has no network to re-check them, so verify before quoting.
PRICES: dict[str, Price] = {
    "lambda_gb_s": Price("Lambda duration (x86)", 0.0000166667, "GB-second", "aws.amazon.com/lambda/pricing"),
    "lambda_gb_s_arm64": Price(
        "Lambda duration (arm64, Graviton)", 0.0000133334, "GB-second", "aws.amazon.com/lambda/pricing"
    ),
    "lambda_request": Price("Lambda requests", 0.20, "million requests", "aws.amazon.com/lambda/pricing"),
    "apigw_rest_request": Price(
        "API Gateway REST API requests (first 333 M/month)",
        3.50,
        "million requests",
        "aws.amazon.com/api-gateway/pricing",
    ),
    "dynamodb_wru": Price(
        "DynamoDB on-demand write request units", 0.625, "million WRU", "aws.amazon.com/dynamodb/pricing/on-demand"
    ),
    "dynamodb_rru": Price(
        "DynamoDB on-demand read request units", 0.125, "million RRU", "aws.amazon.com/dynamodb/pricing/on-demand"
    ),
    "iot_message": Price(
        "IoT Core messaging (first 1 B/month, 5 KB increments)",
        1.00,
        "million messages",
        "aws.amazon.com/iot-core/pricing",
    ),
    "iot_connection_minute": Price(
        "IoT Core connectivity", 0.08, "million connection-minutes", "aws.amazon.com/iot-core/pricing"
    ),
    "iot_rule_triggered": Price("IoT Core rules triggered", 0.15, "million rules", "aws.amazon.com/iot-core/pricing"),
    "iot_action_executed": Price(
        "IoT Core actions executed", 0.15, "million actions", "aws.amazon.com/iot-core/pricing"
    ),
    "sqs_request": Price("SQS standard requests", 0.40, "million requests", "aws.amazon.com/sqs/pricing"),
}


def unit_price(key: str) -> float:
    """USD for one unit (one GB-s, one request, one RRU…)."""
    price = PRICES[key]
    return price.usd / 1_000_000 if price.per.startswith("million") else price.usd


def price_list() -> list[dict[str, Any]]:
    return [
        {"key": key, **asdict(price), "as_of": PRICES_AS_OF, "region": PRICE_REGION} for key, price in PRICES.items()
    ]


# -- one payment's bill ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentUsage:
    """What one payment uses on AWS (counted in the bench, or derived from counts)."""

    api_duration_ms: float
    api_memory_mb: int
    event_invocations: float
    event_duration_ms: float
    event_memory_mb: int
    rru: float
    wru: float
    iot_messages: float
    rules_triggered: float
    rule_actions: float
    connection_minutes: float = 0.0
    api_requests: float = 1.0
    sqs_requests: float = 0.0
    # Of every function on the payment path: "x86_64" or "arm64".
    architecture: str = "x86_64"


def lambda_gb_s(duration_ms: float, memory_mb: int) -> float:
    """Billed GB-seconds: duration rounded up to the millisecond."""
    return math.ceil(duration_ms) / 1000 * memory_mb / 1024


def payment_cost(usage: PaymentUsage) -> dict[str, float]:
    """USD per payment, line by line, and ``total``."""
    gb_s = unit_price("lambda_gb_s_arm64" if usage.architecture == "arm64" else "lambda_gb_s")
    lines = {
        "api_lambda_duration": lambda_gb_s(usage.api_duration_ms, usage.api_memory_mb) * gb_s,
        "event_lambda_duration": usage.event_invocations
        * lambda_gb_s(usage.event_duration_ms, usage.event_memory_mb)
        * gb_s,
        "lambda_requests": (usage.api_requests + usage.event_invocations) * unit_price("lambda_request"),
        "api_gateway_requests": usage.api_requests * unit_price("apigw_rest_request"),
        "dynamodb_reads": usage.rru * unit_price("dynamodb_rru"),
        "dynamodb_writes": usage.wru * unit_price("dynamodb_wru"),
        "iot_messages": usage.iot_messages * unit_price("iot_message"),
        "iot_rules": usage.rules_triggered * unit_price("iot_rule_triggered")
        + usage.rule_actions * unit_price("iot_action_executed"),
        "iot_connectivity": usage.connection_minutes * unit_price("iot_connection_minute"),
        "sqs_requests": usage.sqs_requests * unit_price("sqs_request"),
    }
    lines["total"] = sum(lines.values())
    return lines

"""Fault injection: DynamoDB errors at the adapter boundary, a World on the DynamoDB adapters (moto),
and the terminal's broker lifecycle facts.

Each scenario asserts three things: what the ECR is told, what the order resource says, and what
becomes of the terminal's claim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from chalicelib.adapters.aws import client
from chalicelib.adapters.dynamodb.payments import DynamoPaymentRepository, DynamoTerminalRepository
from chalicelib.config import Settings
from chalicelib.errors import ApiError
from chalicelib.payments.domain import Terminal
from chalicelib.payments.schemas import parse_order_request
from chalicelib.payments.service import order_status, request_payment
from chalicelib.payments.terminal_events import handle_presence
from tests.conftest import MERCHANT, PASSPHRASE, TERMINAL_ID, World, example
from tests.integration.moto_per_module import (  # noqa: F401
    aws_with_fresh_tables,
    dynamodb_actions_one_at_a_time,
    moto_for_module,
)

ORDER_ID = "ORDER_1537532589263"


def throttled(operation: str) -> Exception:
    return ClientError(
        {
            "Error": {"Code": "ProvisionedThroughputExceededException", "Message": "injected throttle"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        operation,
    )


def server_error(operation: str) -> Exception:
    return ClientError(
        {
            "Error": {"Code": "InternalServerError", "Message": "injected 500"},
            "ResponseMetadata": {"HTTPStatusCode": 500},
        },
        operation,
    )


def timed_out(operation: str) -> Exception:
    return ReadTimeoutError(endpoint_url=f"https://dynamodb.eu-west-3.amazonaws.com ({operation})")


ERRORS: dict[str, Callable[[str], Exception]] = {
    "throttling": throttled,
    "5xx": server_error,
    "timeout": timed_out,
}


@dataclass
class _Planned:
    operation: str
    table: str | None
    error: Callable[[str], Exception]
    skip: int
    times: int


@dataclass
class DynamoFaults:
    """Raises the planned errors from botocore's ``before-parameter-build``: the adapter sees exactly what a
    throttled, failing or timed-out DynamoDB call raises once the SDK's own retries are spent."""

    plans: list[_Planned] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)

    def fail(
        self,
        operation: str,
        table: str | None = None,
        error: str = "throttling",
        *,
        skip: int = 0,
        times: int = 1,
    ) -> None:
        """Fail the matching call(s): after ``skip`` matching calls, the next ``times`` ones."""
        self.plans.append(_Planned(operation, table, ERRORS[error], skip, times))

    def clear(self) -> None:
        self.plans.clear()

    def before_call(self, model: Any, params: dict[str, Any], **_kwargs: Any) -> None:
        table = params.get("TableName")
        if table is None and params.get("TransactItems"):
            first = params["TransactItems"][0]
            table = next(iter(first.values()))["TableName"]
        for plan in self.plans:
            if plan.operation != model.name or (plan.table is not None and plan.table != table) or plan.times <= 0:
                continue
            if plan.skip > 0:
                plan.skip -= 1
                continue
            plan.times -= 1
            self.injected.append(f"{model.name}:{table}")
            raise plan.error(model.name)


@pytest.fixture
def faults(aws: Settings) -> Iterator[DynamoFaults]:
    injector = DynamoFaults()
    events = client("dynamodb").meta.events
    events.register("before-parameter-build.dynamodb", injector.before_call)
    yield injector
    events.unregister("before-parameter-build.dynamodb", injector.before_call)


class DynamoWorld(World):
    """The fakes' World on the DynamoDB adapters (moto): same clock, waker, channel and scripts."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.terminals = DynamoTerminalRepository(settings.terminals_table)  # type: ignore[assignment]
        self.payments = DynamoPaymentRepository(settings.payments_table, 86_400)  # type: ignore[assignment]
        self.terminals.put(Terminal(TERMINAL_ID, MERCHANT, PASSPHRASE, online=True))

    def claim_holder(self) -> tuple[str | None, int]:
        terminal = self.terminals.get(TERMINAL_ID)
        assert terminal is not None
        return terminal.busy_request_id, terminal.busy_until_ms


@pytest.fixture
def dynamo_world(aws: Settings) -> DynamoWorld:
    from dataclasses import replace

    return DynamoWorld(replace(aws, ack_timeout_ms=10_000, payment_deadline_ms=120_000))


def pay(world: World, body: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """What the ECR is told: a Reply, or the ApiError it would see as an HTTP error."""
    body = body or example()
    try:
        return request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body, **kwargs)
    except ApiError as exc:
        return exc


def order_state(world: World) -> str | None:
    try:
        return str(order_status(world.payment_deps, MERCHANT, ORDER_ID).wire()["state"])
    except ApiError:
        return None


def claim_of(world: World) -> str | None:
    terminal = world.terminals.get(TERMINAL_ID)
    assert terminal is not None
    return terminal.busy_request_id if terminal.is_busy(world.clock.now_ms()) else None


def lifecycle(world: World, kind: str, session: str, at_ms: int | None = None) -> str:
    event = {
        "clientId": TERMINAL_ID,
        "timestamp": world.clock.now_ms() if at_ms is None else at_ms,
        "eventType": kind,
        "sessionIdentifier": session,
    }
    return handle_presence(world.event_deps, event)


def redelivered(handler: Callable[[], str], attempts: int = 3) -> tuple[list[str], str]:
    """Lambda's asynchronous retries: the errors of the failed deliveries, and the final outcome."""
    errors: list[str] = []
    for _ in range(attempts):
        try:
            return errors, handler()
        except Exception as exc:
            errors.append(type(exc).__name__)
    raise AssertionError(f"still failing after {attempts} deliveries: {errors}")

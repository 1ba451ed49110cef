from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("METRICS_EMF", "false")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-3")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")

from chalicelib import jsonutil, protocol
from chalicelib.config import Settings
from chalicelib.payments.domain import Terminal
from chalicelib.payments.service import PaymentDeps
from chalicelib.payments.terminal_events import EventDeps, handle_event
from chalicelib.ports import SleepingWaker
from tests.fakes import FakeClock, FakePayments, FakeTerminals, RecordingChannel, ScriptedWaker

DATA = Path(__file__).parent.parent / "examples"
MERCHANT = "M1"
TERMINAL_ID = "PAX-1850320198"
PASSPHRASE = "correct horse battery staple"


def example(name: str = "order-minimal.json", **order_overrides: Any) -> dict[str, Any]:
    body = jsonutil.loads((DATA / name).read_text())
    body["order"].update(order_overrides)
    return body


@pytest.fixture
def minimal_order() -> dict[str, Any]:
    return example()


@pytest.fixture
def full_order_text() -> str:
    return (DATA / "order-full.json").read_text()


class World:
    """Fakes wired like production: the payment service and the event handler share them."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings(ack_timeout_ms=10_000, payment_deadline_ms=120_000)
        self.clock = FakeClock()
        self.terminals = FakeTerminals()
        self.payments = FakePayments()
        self.channel = RecordingChannel()
        self.waker = ScriptedWaker(self.clock)
        self.terminals.put(Terminal(TERMINAL_ID, MERCHANT, PASSPHRASE, online=True))

    @property
    def payment_deps(self) -> PaymentDeps:
        return PaymentDeps(self.terminals, self.payments, self.channel, self.settings, self.clock, self.waker)

    @property
    def event_deps(self) -> EventDeps:
        return EventDeps(self.terminals, self.payments, self.settings, self.clock, self.waker)

    def last_request(self, kind: str = "payment_request") -> dict[str, Any]:
        return [e for _, e in self.channel.published if e["type"] == kind][-1]

    def terminal_says(
        self,
        kind: str,
        request_id: str,
        body: dict[str, Any],
        *,
        passphrase: str = PASSPHRASE,
        terminal_id: str = TERMINAL_ID,
        topic_terminal: str | None = None,
        sent_at_ms: int | None = None,
    ) -> str:
        sent_at = protocol.timestamp_from_ms(sent_at_ms if sent_at_ms is not None else self.clock.now_ms())
        envelope = protocol.make_envelope(kind, request_id, terminal_id, body, passphrase, sent_at=sent_at)
        topic = protocol.topic_for(topic_terminal or terminal_id, "events")
        return handle_event(self.event_deps, topic, protocol.encode(envelope))

    def on_cancel(self, result: dict[str, Any] | None) -> None:
        """The terminal's answer to every cancel_request: this result for the target (None: silence)."""

        def answer(_terminal_id: str, envelope: dict[str, Any]) -> None:
            if envelope["type"] == "cancel_request" and result is not None:
                self.terminal_says("result", envelope["body"]["target_request_id"], result)

        self.channel.on_publish = answer

    def script(self, *steps: Any) -> None:
        """Each step runs at one poll of the waiting request, with that request's id."""
        self.waker.steps.extend(steps)

    def ack(self, body: dict[str, Any] | None = None) -> Any:
        return lambda request_id: self.terminal_says("ack", request_id, body or {})

    def result(self, status: str = "Success", **fields: Any) -> Any:
        body = {
            "payment_status": status,
            "transaction_reference": "TX-1",
            "authorization_code": "A1B2C3",
            "card_brand": "VISA",
            "masked_pan": "497010******0001",
            "authorized_online": True,
            **fields,
        }
        return lambda request_id: self.terminal_says("result", request_id, body)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """moto in-process, with every table created from the one schema."""
    from moto import mock_aws

    from chalicelib.adapters import aws as aws_adapter
    from chalicelib.adapters.dynamodb.tables import create_tables
    from local.moto_server import serialize_dynamodb

    serialize_dynamodb()  # DynamoDB is linearizable per item; moto needs the help under threads

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        aws_adapter.reset_clients()
        settings = Settings()
        create_tables(settings)
        yield settings
    aws_adapter.reset_clients()


def deep(value: Any) -> Any:
    return copy.deepcopy(value)


__all__ = ["MERCHANT", "PASSPHRASE", "TERMINAL_ID", "SleepingWaker", "World", "example"]


@pytest.fixture
def console_aws(aws: Settings) -> Iterator[Settings]:
    """``aws`` plus the Console's queues and export bucket, with the app's components wired to them."""
    import dataclasses

    from chalicelib import bootstrap
    from chalicelib.adapters.aws import client
    from chalicelib.adapters.sqs import create_queues

    settings = dataclasses.replace(create_queues(aws), ipn_secret="ipn-secret-for-tests")
    client("s3").create_bucket(
        Bucket=settings.export_bucket,
        CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]},
    )
    bootstrap.install(bootstrap.build(settings))
    yield settings
    bootstrap.install(None)

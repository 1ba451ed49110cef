"""What only the DynamoDB adapters do, against moto: items carry their expiry, and the IoT channel
publishes what the contract says. Every repository's conditional semantics (docs/payment-api.md idempotency,
one payment per terminal) are pinned once for every store in ``tests/contract``."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from chalicelib import protocol
from chalicelib.adapters.aws import client
from chalicelib.adapters.channels import IotDataChannel
from chalicelib.adapters.dynamodb.payments import DynamoPaymentRepository, dispatch_key, head_key
from chalicelib.config import Settings
from chalicelib.exceptions import ChannelError
from tests.conftest import PASSPHRASE, TERMINAL_ID
from tests.contract.builders import head_and_dispatch
from tests.integration.moto_per_module import aws_with_fresh_tables, moto_for_module  # noqa: F401

RETENTION_S = 90 * 86_400


def raw_item(table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    found: dict[str, Any] | None = (
        client("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    )
    return found


def test_first_attempt_writes_head_and_dispatch_with_their_expiry(aws: Settings) -> None:
    payments = DynamoPaymentRepository(aws.payments_table, RETENTION_S)
    head, dispatch = head_and_dispatch()
    payments.start_attempt(head, dispatch, None)
    assert payments.get_head("M1", "O-1") == head
    assert payments.get_dispatch("r-1") == dispatch
    for key in (head_key("M1", "O-1"), dispatch_key("r-1")):
        item = raw_item(aws.payments_table, key)
        assert item is not None and item["expires_at"] == {"N": str(head.updated_at_ms // 1000 + RETENTION_S)}


# -- the IoT channel --------------------------------------------------------------------------------------


def published_payloads() -> list[tuple[str, bytes]]:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iotdata.models import iotdata_backends

    return list(iotdata_backends[DEFAULT_ACCOUNT_ID]["eu-west-3"].published_payloads)


def capture_publish_params(endpoint: str | None) -> list[dict[str, Any]]:
    captured: list[dict[str, Any]] = []
    client("iot-data", endpoint).meta.events.register(
        "provide-client-params.iot-data.Publish", lambda params, **_: captured.append(dict(params))
    )
    return captured


@pytest.mark.parametrize("endpoint", ["", "data-ats.iot.eu-west-3.amazonaws.com"], ids=["default", "ats-endpoint"])
def test_iot_channel_publishes_the_canonical_envelope_at_qos_1(aws: Settings, endpoint: str) -> None:
    envelope = protocol.make_envelope(
        "payment_request", "r-1", TERMINAL_ID, {"amount": 899, "description": "Café"}, PASSPHRASE
    )
    params = capture_publish_params(f"https://{endpoint}" if endpoint else None)
    IotDataChannel(endpoint).publish(TERMINAL_ID, envelope)
    topic = f"nepting/v1/terminals/{TERMINAL_ID}/requests"
    assert published_payloads() == [(topic, protocol.encode(envelope))]
    assert [(p["topic"], p["qos"], p["payload"]) for p in params] == [(topic, 1, protocol.encode(envelope))]
    assert protocol.verify_signature(protocol.decode(published_payloads()[0][1]), PASSPHRASE)


def test_iot_channel_turns_a_refused_publish_into_a_channel_error(aws: Settings) -> None:
    iot = client("iot-data", None)
    with Stubber(iot) as stubber:
        stubber.add_client_error("publish", service_error_code="ThrottlingException", http_status_code=429)
        with pytest.raises(ChannelError) as caught:
            IotDataChannel().publish(TERMINAL_ID, protocol.make_envelope("cancel_request", "r-1", TERMINAL_ID, {}, "p"))
    assert TERMINAL_ID in str(caught.value)
    assert published_payloads() == []

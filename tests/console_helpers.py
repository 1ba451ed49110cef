"""Builders shared by the Console-side tests: IPNs, signatures, stream and queue events, merchants."""

from __future__ import annotations

import base64
import dataclasses
import functools
import time
from typing import Any

from chalicelib import jsonutil
from chalicelib.adapters.aws import client, to_item
from chalicelib.adapters.dynamodb.merchants import DynamoMerchantRepository
from chalicelib.bootstrap import Components, build, install
from chalicelib.bootstrap import components as ledger
from chalicelib.config import Settings
from chalicelib.console.ingest import merge
from chalicelib.console.ipn import ipn_signature
from chalicelib.console.schemas import IpnBody
from chalicelib.merchants.auth import hash_password
from chalicelib.merchants.ports import MerchantRepository

IPN_SECRET = "ipn-secret-for-tests"
NOTIFY_PASSPHRASE = "merchant notify passphrase"
_sequence = [100]


def ipn_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transaction_reference": "TX-1001",
        "merchant_id": "M1",
        "order_id": "ORDER_1537532589264",
        "terminal_id": "PAX-1850320198",
        "operation": "Debit",
        "status": "approved",
        "amount": 899,
        "currency": "EUR",
        "authorization_code": "A1B2C3",
        "authorized_online": True,
        "card": {"brand": "VISA", "masked_pan": "497010******0001", "entry_mode": "contactless"},
        "processed_at": "2026-11-28T03:12:00.123Z",
    }
    body.update(overrides)
    return body


def signed_headers(raw: bytes, secret: str = IPN_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The gateway's headers for ``raw``, signed at ``timestamp`` (seconds; default: now)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "X-Nepting-Timestamp": stamp,
        "X-Nepting-Signature": ipn_signature(secret, stamp, raw),
    }


def seed_merchant(
    settings: Settings,
    merchant_id: str = "M1",
    notify_url: str | None = None,
    login: str | None = None,
    password: str = "pw",
    passphrase: str = NOTIFY_PASSPHRASE,
) -> dict[str, str]:
    """The merchant, its login, and the Basic Authorization header for it, in the merchants table."""
    merchants = DynamoMerchantRepository(settings.merchants_table)
    return add_merchant(merchants, merchant_id, notify_url, login, password, passphrase)


def add_merchant(
    merchants: MerchantRepository,
    merchant_id: str = "M1",
    notify_url: str | None = None,
    login: str | None = None,
    password: str = "pw",
    passphrase: str = NOTIFY_PASSPHRASE,
) -> dict[str, str]:
    """The merchant, its login, and the Basic Authorization header for it, in any merchant store."""
    merchants.put_merchant(merchant_id, notify_url, passphrase)
    login = login or f"login-{merchant_id}"
    merchants.put_login(login, merchant_id, _hashed(password))
    return {"Authorization": "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()}


@functools.cache
def _hashed(password: str) -> str:
    # scrypt is slow on purpose; one salted hash per test password is enough for tests.
    return hash_password(password)


def order_request(order_id: str = "ORDER_1537532589264", amount: int = 899, **order: Any) -> dict[str, Any]:
    return {
        "order": {
            "order_id": order_id,
            "transaction_type": "Debit",
            "price": {"amount": amount, "currency": "EUR"},
            "basket": [
                {
                    "product_reference": "NF-a1690",
                    "name": "My first product",
                    "type": "good",
                    "quantity": 1,
                    "unit_price": jsonutil.loads("8.99"),
                    "tax_rate": 0,
                    "discount": 0,
                    "total_amount": jsonutil.loads("8.99"),
                }
            ],
            "description": "A super short description here...",
            "custom_data": {"internal_reference": "ORD_987465", "customer_first_order": True},
            **order,
        },
        "customer": {"customer_id": "283749291", "email": "hipay.pos@test.com", "first_name": "Cathy"},
        "pos_technical_info": {
            "notify_url": "https://merchant.example/notify",
            "device_information": {"serial_number": "1850320198", "manufacturer": "PAX"},
            "terminal_transaction_display": {"protocol": "AppNepting", "force_authorization": True},
        },
    }


def head_image(
    merchant_id: str, request: dict[str, Any], attempt: int = 1, at_ms: int = 1_795_000_000_000
) -> dict[str, Any]:
    order_id = request["order"]["order_id"]
    return {
        "pk": f"ORDER#{merchant_id}#{order_id}",
        "merchant_id": merchant_id,
        "order_id": order_id,
        "attempt": attempt,
        "request_id": f"req-{attempt}",
        "terminal_id": "PAX-1850320198",
        "payload_hash": "h",
        "request_json": jsonutil.dumps(request),
        "created_at_ms": at_ms,
        "updated_at_ms": at_ms + attempt,
        "expires_at": at_ms // 1000 + 86_400,
    }


def stream_event(*images: dict[str, Any], event_name: str = "INSERT") -> dict[str, Any]:
    records = []
    for image in images:
        _sequence[0] += 1
        records.append(
            {
                "eventID": f"e{_sequence[0]}",
                "eventName": event_name,
                "eventSource": "aws:dynamodb",
                "dynamodb": {
                    "Keys": {"pk": {"S": image["pk"]}},
                    "NewImage": to_item(image),
                    "SequenceNumber": str(_sequence[0]),
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
        )
    return {"Records": records}


def sqs_event(*bodies: dict[str, Any]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": f"m{index}",
                "receiptHandle": f"r{index}",
                "body": jsonutil.dumps(body),
                "eventSource": "aws:sqs",
            }
            for index, body in enumerate(bodies)
        ]
    }


def drain(queue_url: str) -> list[dict[str, Any]]:
    """Every message now visible on a queue (deleted), as parsed bodies."""
    found = []
    while True:
        batch = client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return found
        for message in batch:
            found.append(jsonutil.loads(message["Body"]))
            client("sqs").delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def install_ledger(settings: Settings, **overrides: Any) -> Components:
    components = dataclasses.replace(build(settings), **overrides)
    install(components)
    return components


# The finance export's columns, in order (docs/export.md).
EXPORT_COLUMNS = [
    "transaction_reference",
    "merchant_id",
    "order_id",
    "terminal_id",
    "operation",
    "status_code",
    "status",
    "amount_minor",
    "currency",
    "authorization_code",
    "card_brand",
    "masked_pan",
    "created_at",
    "updated_at",
    "flags",
    "custom_data",
]
TRICKY = {"note": 'comma, "quote"\nand a new line', "ville": "Besançon €"}


def add_export_row(
    ref: str, merchant: str, terminal: str, status: str, amount: int, day: str, operation: str = "Debit"
) -> None:
    facts = ipn_body(
        transaction_reference=ref, merchant_id=merchant, order_id=f"O-{ref}", terminal_id=terminal,
        operation=operation, status=status, amount=amount, authorization_code="A1",
        card={"brand": "VISA", "masked_pan": "497010******0001", "entry_mode": "chip"},
        processed_at=f"2026-11-{day}T10:00:00.000Z",
    )  # fmt: skip
    merge(ledger().ingest_deps(), ref, ipn=IpnBody.model_validate(facts))

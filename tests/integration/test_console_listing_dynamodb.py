"""The Console's listing routes on DynamoDB (moto): what only the DynamoDB store must do."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.adapters.dynamodb import console as ledger_adapter
from chalicelib.bootstrap import components as ledger
from chalicelib.config import Settings
from chalicelib.console.ingest import merge
from chalicelib.console.schemas import IpnBody
from tests.console_helpers import seed_merchant


@pytest.fixture
def auth(console_aws: Settings) -> dict[str, dict[str, str]]:
    return {"M1": seed_merchant(console_aws, "M1")}


def add(reference: str, merchant: str = "M1", at: str = "10:00:00.000Z", **fields: Any) -> None:
    values: dict[str, Any] = {
        "transaction_reference": reference,
        "merchant_id": merchant,
        "order_id": f"O-{reference}",
        "terminal_id": "PAX-1",
        "operation": "Debit",
        "status": "approved",
        "amount": 100,
        "currency": "EUR",
        "authorization_code": "A1",
        "authorized_online": True,
        "card_brand": "VISA",
        "masked_pan": "497010******0001",
        "entry_mode": "chip",
        "processed_at": "2026-11-28T" + at,
    }
    values.update(fields)
    merge(ledger().ingest_deps(), reference, ipn=IpnBody.model_validate(values))


def get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
    with Client(app) as test_client:
        response = test_client.http.get(path, headers=headers)
    return response.status_code, json.loads(response.body)


def refs(body: dict[str, Any]) -> list[str]:
    return [tx["reference"] for tx in body["transactions"]]


def test_listing_uses_index_queries_and_never_a_scan(
    auth: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    add("T1")
    add("T2", order_id="SHARED")
    real_client = ledger_adapter.client
    calls: list[tuple[str, dict[str, Any]]] = []

    class Spy:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "scan":
                raise AssertionError("the Console must never Scan")
            method = getattr(self.inner, name)

            def recorded(**kwargs: Any) -> Any:
                calls.append((name, kwargs))
                return method(**kwargs)

            return recorded

    monkeypatch.setattr(ledger_adapter, "client", lambda service: Spy(real_client(service)))
    assert refs(get("/v1/transactions", auth["M1"])[1]) == ["T2", "T1"]
    assert refs(get("/v1/transactions?order_id=SHARED", auth["M1"])[1]) == ["T2"]
    assert {kwargs.get("IndexName") for name, kwargs in calls if name == "query"} == {
        "by-merchant-created",
        "by-merchant-order",
    }
    assert all(name == "query" for name, _ in calls)

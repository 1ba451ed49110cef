"""GET /v1/transactions and /v1/transactions/{reference} on fakes: Basic auth, filters, pages, isolation.

That the DynamoDB listing uses index queries and never a Scan is pinned in tests/integration."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib.bootstrap import Components
from chalicelib.bootstrap import components as ledger
from chalicelib.console.ingest import merge
from chalicelib.console.schemas import IpnBody
from tests.console_helpers import add_merchant

DAY = "2026-11-28T"


@pytest.fixture
def auth(console: Components) -> dict[str, dict[str, str]]:
    return {"M1": add_merchant(console.merchants, "M1"), "M2": add_merchant(console.merchants, "M2")}


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
        "card": {"brand": "VISA", "masked_pan": "497010******0001", "entry_mode": "chip"},
        "processed_at": DAY + at,
    }
    values.update(fields)
    merge(ledger().ingest_deps(), reference, ipn=IpnBody.model_validate(values))


def get(path: str, headers: dict[str, str]) -> tuple[int, Any]:
    with Client(app) as test_client:
        response = test_client.http.get(path, headers=headers)
    return response.status_code, json.loads(response.body)


def refs(body: dict[str, Any]) -> list[str]:
    return [tx["reference"] for tx in body["transactions"]]


def test_listing_needs_basic_credentials(auth: dict[str, dict[str, str]]) -> None:
    assert get("/v1/transactions", {})[0] == 401
    assert get("/v1/transactions/T1", {})[0] == 401


def test_a_merchant_sees_only_its_own_transactions_newest_first(auth: dict[str, dict[str, str]]) -> None:
    add("T1", at="10:00:00.000Z")
    add("T2", at="11:00:00.000Z")
    add("X1", merchant="M2", at="10:30:00.000Z")
    status, body = get("/v1/transactions", auth["M1"])
    assert status == 200
    assert refs(body) == ["T2", "T1"]
    assert body["next_cursor"] is None
    assert refs(get("/v1/transactions", auth["M2"])[1]) == ["X1"]


def test_the_transaction_view_carries_the_contract_fields(auth: dict[str, dict[str, str]]) -> None:
    add("T1")
    status, tx = get("/v1/transactions/T1", auth["M1"])
    assert status == 200
    assert tx["reference"] == "T1" and tx["status_code"] == 118 and tx["status"] == "Captured"
    assert tx["amount_minor"] == 100 and isinstance(tx["amount_minor"], int)
    assert tx["card"] == {"brand": "VISA", "masked_pan": "497010******0001", "entry_mode": "chip"}
    assert tx["created_at"] == "2026-11-28T10:00:00.000Z"
    assert tx["updated_at"].endswith("Z") and len(tx["updated_at"]) == 24
    assert tx["flags"] == [] and tx["basket"] is None


def test_another_merchants_transaction_is_a_404(auth: dict[str, dict[str, str]]) -> None:
    add("X1", merchant="M2")
    status, body = get("/v1/transactions/X1", auth["M1"])
    assert status == 404 and body["error"]["code"] == "transaction.not_found"
    assert get("/v1/transactions/NOPE", auth["M1"])[0] == 404


def test_pages_follow_the_cursor_without_gaps_or_repeats(auth: dict[str, dict[str, str]]) -> None:
    for minute in range(7):
        add(f"T{minute}", at=f"10:0{minute}:00.000Z")
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        status, body = get(f"/v1/transactions?limit=3{cursor}", auth["M1"])
        assert status == 200 and len(body["transactions"]) <= 3
        seen += refs(body)
        if not body["next_cursor"]:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert seen == [f"T{minute}" for minute in reversed(range(7))]


def test_a_cursor_is_bound_to_its_merchant(auth: dict[str, dict[str, str]]) -> None:
    for minute in range(3):
        add(f"T{minute}", at=f"10:0{minute}:00.000Z")
    add("X1", merchant="M2")
    cursor = get("/v1/transactions?limit=1", auth["M1"])[1]["next_cursor"]
    status, body = get(f"/v1/transactions?cursor={cursor}", auth["M2"])
    assert status == 400 and body["error"]["code"] == "validation.cursor_invalid"
    assert get("/v1/transactions?cursor=garbage", auth["M1"])[0] == 400


def test_filters_from_to_status_terminal_and_order(auth: dict[str, dict[str, str]]) -> None:
    add("T1", at="09:00:00.000Z")
    add("T2", at="10:00:00.000Z", status="declined")
    add("T3", at="11:00:00.000Z", terminal_id="PAX-2")
    add("T4", at="12:00:00.000Z", order_id="SHARED")
    add("T5", at="12:30:00.000Z", order_id="SHARED", status="declined")

    def listed(query: str) -> list[str]:
        status, body = get(f"/v1/transactions?{query}", auth["M1"])
        assert status == 200, body
        return refs(body)

    assert listed("from=2026-11-28T10:00:00.000Z&to=2026-11-28T12:00:00.000Z") == ["T3", "T2"], "to is exclusive"
    assert listed("from=2026-11-28T11:00:00%2B01:00") == ["T5", "T4", "T3", "T2"], "offsets are understood"
    assert listed("status=113") == ["T5", "T2"]
    assert listed("status=refused") == ["T5", "T2"]
    assert listed("terminal_id=PAX-2") == ["T3"]
    assert listed("order_id=SHARED") == ["T5", "T4"]
    assert listed("order_id=SHARED&status=Captured") == ["T4"]


def test_filtered_pages_are_filled_across_several_queries(auth: dict[str, dict[str, str]]) -> None:
    for minute in range(6):
        add(f"T{minute}", at=f"10:0{minute}:00.000Z", status="approved" if minute % 3 == 0 else "declined")
    status, body = get("/v1/transactions?status=118&limit=2", auth["M1"])
    assert status == 200
    assert refs(body) == ["T3", "T0"]


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("from=yesterday", "from"),
        ("status=9", "status"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(auth: dict[str, dict[str, str]], query: str, path: str) -> None:
    status, body = get(f"/v1/transactions?{query}", auth["M1"])
    assert status == 400 and body["error"]["details"]["path"] == path


def test_the_openapi_document_describes_the_console_and_ipn_routes(auth: dict[str, dict[str, str]]) -> None:
    status, document = get("/openapi.json", {})
    assert status == 200
    assert {"/v1/transactions", "/v1/transactions/{transaction_reference}", "/v1/ipn/nepting"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert {"TransactionView", "TransactionPage", "IpnBody"} <= set(schemas)
    assert schemas["TransactionView"]["properties"]["amount_minor"]["type"] == "integer"
    assert document["paths"]["/v1/ipn/nepting"]["post"]["security"] == []

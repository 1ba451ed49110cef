"""POST /v1/ipn/nepting on fakes: verified, validated, stored durably and queued, or refused with
nothing stored. The secret read from SSM is pinned in tests/integration."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chalice.test import Client

from app import app
from chalicelib import jsonutil
from chalicelib.bootstrap import Components
from chalicelib.observability import METRIC_COUNTS
from tests.console_helpers import IPN_SECRET, add_merchant, ipn_body
from tests.console_helpers import signed_headers as signed_at


@pytest.fixture
def settings(console: Components) -> Components:
    add_merchant(console.merchants, "M1")
    return console


def now_s() -> int:
    from chalicelib.bootstrap import components

    return components().clock.now_ms() // 1000


def signed_headers(raw: bytes, secret: str = IPN_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Signed at the fake clock's time unless told otherwise: the route checks freshness against it."""
    return signed_at(raw, secret, now_s() if timestamp is None else timestamp)


def post(raw: bytes, headers: dict[str, str]) -> Any:
    with Client(app) as test_client:
        return test_client.http.post("/v1/ipn/nepting", headers=headers, body=raw)


def stored_ipns(settings: Components) -> list[dict[str, Any]]:
    return list(settings.ipn_inbox.items.values())  # type: ignore[attr-defined]


def drain(queue: Any) -> list[dict[str, Any]]:
    taken: list[dict[str, Any]] = queue.take()
    return taken


def refused(reason: str) -> int:
    return METRIC_COUNTS[f"IpnRefused.reason={reason}"]


def test_a_valid_ipn_is_stored_queued_and_answered_200(settings: Components) -> None:
    raw = json.dumps(ipn_body()).encode()
    response = post(raw, signed_headers(raw))
    assert response.status_code == 200
    assert json.loads(response.body) == {"status": "stored", "transaction_reference": "TX-1001"}
    items = stored_ipns(settings)
    assert [item["transaction_reference"] for item in items] == ["TX-1001"]
    assert jsonutil.loads(items[0]["body_json"])["amount"] == 899
    assert drain(settings.ipn_queue) == [{"transaction_reference": "TX-1001"}]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: {**h, "X-Nepting-Signature": "0" * 64}, "signature_invalid"),
        (lambda h: {k: v for k, v in h.items() if k != "X-Nepting-Signature"}, "signature_missing"),
        (lambda h: {**h, "X-Nepting-Timestamp": "yesterday"}, "timestamp_invalid"),
    ],
)
def test_a_bad_signature_is_a_401_with_nothing_stored_and_counted(
    settings: Components, mutate: Any, reason: str
) -> None:
    raw = json.dumps(ipn_body()).encode()
    before = refused(reason)
    response = post(raw, mutate(signed_headers(raw)))
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == f"ipn.{reason}"
    assert refused(reason) == before + 1
    assert stored_ipns(settings) == []
    assert drain(settings.ipn_queue) == []


def test_a_signature_made_with_another_secret_is_refused(settings: Components) -> None:
    raw = json.dumps(ipn_body()).encode()
    response = post(raw, signed_headers(raw, secret="not-" + IPN_SECRET))
    assert response.status_code == 401
    assert stored_ipns(settings) == []


def test_a_body_changed_after_signing_is_refused(settings: Components) -> None:
    raw = json.dumps(ipn_body()).encode()
    headers = signed_headers(raw)
    response = post(json.dumps(ipn_body(amount=1)).encode(), headers)
    assert response.status_code == 401
    assert stored_ipns(settings) == []


@pytest.mark.parametrize("skew_s", [-301, 301, 3600])
def test_a_timestamp_more_than_5_minutes_away_is_refused_even_correctly_signed(
    settings: Components, skew_s: int
) -> None:
    raw = json.dumps(ipn_body()).encode()
    before = refused("timestamp_out_of_window")
    response = post(raw, signed_headers(raw, timestamp=now_s() + skew_s))
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == "ipn.timestamp_out_of_window"
    assert refused("timestamp_out_of_window") == before + 1
    assert stored_ipns(settings) == []


def test_a_timestamp_4_minutes_old_is_accepted(settings: Components) -> None:
    raw = json.dumps(ipn_body()).encode()
    assert post(raw, signed_headers(raw, timestamp=now_s() - 240)).status_code == 200


def test_malformed_json_is_a_400_in_the_contract_format(settings: Components) -> None:
    raw = b'{"transaction_reference": "TX-1",'
    before = refused("malformed")
    response = post(raw, signed_headers(raw))
    assert response.status_code == 400
    error = json.loads(response.body)["error"]
    assert error["code"] == "validation.malformed_json" and error["status"] == 400
    assert refused("malformed") == before + 1
    assert stored_ipns(settings) == []


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"amount": 8.99}, "amount"),
        ({"amount": "899"}, "amount"),
        ({"status": "approuved"}, "status"),
        ({"operation": "Cancel"}, "operation"),
        ({"currency": "USD"}, "currency"),
        ({"processed_at": "yesterday"}, "processed_at"),
        ({"card": {"brand": "VISA", "masked_pan": "4970101234560001"}}, "card.masked_pan"),
    ],
)
def test_an_invalid_body_is_a_400_naming_the_field(settings: Components, overrides: dict[str, Any], path: str) -> None:
    raw = json.dumps(ipn_body(**overrides)).encode()
    before = refused("invalid")
    response = post(raw, signed_headers(raw))
    assert response.status_code == 400
    assert json.loads(response.body)["error"]["details"]["path"] == path
    assert refused("invalid") == before + 1
    assert stored_ipns(settings) == []


def test_an_unmasked_pan_never_reaches_the_table(settings: Components) -> None:
    raw = json.dumps(ipn_body(card={"masked_pan": "4970101234560001"})).encode()
    post(raw, signed_headers(raw))
    assert "4970101234560001" not in json.dumps(stored_ipns(settings))


def test_an_unknown_merchant_is_a_422_with_nothing_stored(settings: Components) -> None:
    raw = json.dumps(ipn_body(merchant_id="M404")).encode()
    before = refused("unknown_merchant")
    response = post(raw, signed_headers(raw))
    assert response.status_code == 422
    assert json.loads(response.body)["error"]["code"] == "ipn.unknown_merchant"
    assert refused("unknown_merchant") == before + 1
    assert stored_ipns(settings) == []


def test_a_repeated_reference_is_a_no_op_200_and_the_first_body_is_kept(settings: Components) -> None:
    first = json.dumps(ipn_body()).encode()
    assert post(first, signed_headers(first)).status_code == 200
    settings.ipn_inbox.mark_merged("TX-1001", 1)
    drain(settings.ipn_queue)
    again = json.dumps(ipn_body(amount=1)).encode()
    response = post(again, signed_headers(again))
    assert response.status_code == 200
    assert json.loads(response.body)["status"] == "duplicate"
    items = stored_ipns(settings)
    assert len(items) == 1 and jsonutil.loads(items[0]["body_json"])["amount"] == 899
    assert drain(settings.ipn_queue) == [], "already merged: nothing queued again"


def test_a_repeat_of_a_stored_but_unmerged_ipn_is_queued_again(settings: Components) -> None:
    raw = json.dumps(ipn_body()).encode()
    post(raw, signed_headers(raw))
    drain(settings.ipn_queue)  # as if the queue message had been lost before the merge
    response = post(raw, signed_headers(raw))
    assert response.status_code == 200
    assert drain(settings.ipn_queue) == [{"transaction_reference": "TX-1001"}]

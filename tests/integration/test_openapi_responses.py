"""Every answer of the HTTP API against its own OpenAPI document: each response body, as the routes
really write it, validates against the schema ``GET /openapi.json`` declares for that route and
status. A renamed key, a changed type, a value outside an enumeration or an undeclared status fails.

The API runs as in ``test_api.py``: Chalice's test client over moto tables, with a terminal played
from a background thread through the ``terminal_events`` handler.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from chalicelib import jsonutil
from chalicelib.console.domain import details_from_head
from chalicelib.console.ingest import record_order_details
from chalicelib.console.ipn import ipn_signature
from tests.conftest import TERMINAL_ID, example
from tests.console_helpers import head_image, ipn_body, order_request
from tests.integration.moto_per_module import (  # noqa: F401
    aws_with_fresh_tables,
    dynamodb_actions_one_at_a_time,
    moto_for_module,
)
from tests.integration.test_api import (  # noqa: F401
    FULL_ORDER_ID,
    JSON,
    M1_AUTH,
    ORDER_ID,
    Api,
    api,
    for_terminal,
    now_ms,
    wait_for,
)

IPN_SECRET = "ipn-secret-for-the-document-tests"
Seen = set[tuple[str, str, int]]


@dataclass
class RecordingQueue:
    sent: list[dict[str, Any]] = field(default_factory=list)

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None:
        self.sent.append(body)


@dataclass
class Checked:
    """The API, its document, and every (route, method, status) whose body was checked."""

    api: Api
    document: dict[str, Any]
    ipn_queue: RecordingQueue
    seen: Seen = field(default_factory=set)

    def check(self, response: Any, route: str, method: str, status: int) -> Any:
        """The body, once it validates against the schema the document declares for it."""
        assert response.status_code == status, (route, method, response.body)
        assert response.headers["Content-Type"] == "application/json"
        body = jsonutil.loads(response.body)
        errors = schema_errors(self.document, route, method, status, body)
        assert not errors, (route, method, status, errors, body)
        self.seen.add((route, method, status))
        return body

    def get(self, path: str, route: str, status: int = 200, headers: dict[str, str] | None = None) -> Any:
        response = self.api.client.http.get(path, headers=M1_AUTH if headers is None else headers)
        return self.check(response, route, "get", status)

    def pay(self, status: int, body: Any = None, headers: dict[str, str] | None = None, raw: str | None = None) -> Any:
        return self.check(self.api.pay(body, headers, raw), "/v1/connector/order", "post", status)

    def order(self, order_id: str = ORDER_ID, status: int = 200) -> Any:
        return self.get(f"/v1/connector/order/{order_id}", "/v1/connector/order/{order_id}", status)

    def ipn(self, status: int, body: bytes, secret: str = IPN_SECRET) -> Any:
        stamp = str(now_ms() // 1000)
        headers = {
            "Content-Type": "application/json",
            "X-Nepting-Timestamp": stamp,
            "X-Nepting-Signature": ipn_signature(secret, stamp, body),
        }
        response = self.api.client.http.post("/v1/ipn/nepting", headers=headers, body=body)
        return self.check(response, "/v1/ipn/nepting", "post", status)


def schema_errors(document: dict[str, Any], route: str, method: str, status: int, body: Any) -> list[str]:
    operation = document["paths"][route][method]
    declared = operation["responses"].get(str(status))
    if declared is None:
        return [f"status {status} is not declared for {method.upper()} {route}"]
    # The route's schema refers to #/components/…: validated with the document's components beside it.
    schema = {**declared["content"]["application/json"]["schema"], "components": document["components"]}
    validator = Draft202012Validator(schema)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(body)]


@pytest.fixture
def checked(api: Api) -> Iterator[Checked]:  # noqa: F811
    ipn_queue = RecordingQueue()
    api.components.ipn_secret = lambda: IPN_SECRET
    api.components.ipn_queue = ipn_queue
    api.components.notifications = RecordingQueue()
    response = api.client.http.get("/openapi.json")
    assert response.status_code == 200
    # Fractions as Decimal, as the API's own reader gives them, so multipleOf compares exactly.
    yield Checked(api, json.loads(response.body, parse_float=Decimal), ipn_queue)


def covered(seen: Seen, route: str, method: str, statuses: set[int]) -> None:
    assert {status for r, m, status in seen if (r, m) == (route, method)} == statuses


# -- the document itself ---------------------------------------------------------------------------------


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def test_every_reference_resolves_and_every_json_response_has_a_valid_schema(checked: Checked) -> None:
    document = checked.document
    found = list(refs(document))
    assert found, "the routes refer to the components"
    for ref in found:
        assert isinstance(resolve(document, ref), dict), ref
    for route, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, declared in operation["responses"].items():
                schema = declared["content"]["application/json"]["schema"]
                Draft202012Validator.check_schema(schema)
                assert "$ref" in schema, (route, method, status, "every body is a named model")
    assert document["servers"], "the document says where the API is"


def test_the_check_fails_on_a_renamed_key_a_changed_type_or_an_unknown_value(checked: Checked) -> None:
    body = checked.pay(200)
    route = ("/v1/connector/order", "post", 200)
    assert schema_errors(checked.document, *route, body) == []
    renamed = {("error_code" if key == "errorCode" else key): value for key, value in body.items()}
    assert schema_errors(checked.document, *route, renamed)
    assert schema_errors(checked.document, *route, {**body, "attempt": str(body["attempt"])})
    assert schema_errors(checked.document, *route, {**body, "paymentStatus": "Succeeded"})
    assert schema_errors(checked.document, *route, {**body, "transaction": {**body["transaction"], "pan": "4970"}})
    without_receipt = {key: value for key, value in body.items() if key != "receipt"}
    assert schema_errors(checked.document, *route, without_receipt), "a key always written is required"
    assert schema_errors(checked.document, *route, {**body, "order": {**body["order"], "price": 1}})
    assert schema_errors(checked.document, "/v1/connector/order", "post", 201, body)


# -- the payment API -------------------------------------------------------------------------------------


def test_payment_answers_match_their_schemas(checked: Checked) -> None:
    terminal = checked.api.terminal
    success = checked.pay(200, example("order-full.json"))
    assert success["paymentStatus"] == "Success" and "transaction" in success and "attempt" in success
    assert checked.pay(200, example("order-full.json"))["attempt"] == 1  # the replay
    checked.pay(409, example("order-full.json", description="another payload"))
    terminal.join()
    terminal.behaviour = "decline"
    assert checked.pay(200)["errorCode"] == "declined"
    terminal.join()
    checked.api.components.terminals.claim(TERMINAL_ID, "another-payment", now_ms(), now_ms() + 60_000)
    busy = checked.pay(200, example(order_id="BUSY-1"))
    assert busy["errorCode"] == "terminal_busy" and "attempt" not in busy and "transaction" not in busy
    checked.api.components.terminals.release(TERMINAL_ID, "another-payment")
    for raw in ("{", "[1]", jsonutil.dumps(example()).replace('"amount":100', '"amount":100.5')):
        checked.pay(400, raw=raw)
    checked.pay(401, headers={"Authorization": "Basic bm9ib2R5Om5vdGhpbmc="})
    checked.pay(403, for_terminal("3000"))
    checked.pay(404, for_terminal("999999"))
    checked.pay(413, {**example(), "padding": "x" * (64 * 1024)})
    checked.pay(415, headers={"Content-Type": "text/plain"})
    covered(checked.seen, "/v1/connector/order", "post", {200, 400, 401, 403, 404, 409, 413, 415})


def test_payment_failures_of_the_terminal_match_their_schemas(checked: Checked) -> None:
    terminal = checked.api.terminal
    terminal.behaviour = "no_ack"
    checked.pay(504, example(order_id="NO-ACK"))
    terminal.behaviour = "ack_only"
    checked.pay(504, example(order_id="NO-RESULT"))
    terminal.join()
    # The terminal acks then drops: a long ack window, so that a loaded machine cannot turn it into a 504.
    live = checked.api.components
    live.settings = replace(live.settings, ack_timeout_ms=60_000, payment_deadline_ms=120_000)
    terminal.behaviour = "drop"
    checked.pay(502, example(order_id="DROPPED"))
    terminal.join()
    terminal.say(TERMINAL_ID, "status", "back", {"state": "online"})
    terminal.behaviour = "approve"
    terminal.raise_on_publish = RuntimeError("the broker is gone")
    checked.pay(500, example(order_id="BROKEN"))
    covered(checked.seen, "/v1/connector/order", "post", {500, 502, 504})


def test_the_async_answer_and_the_order_in_each_state_match_their_schemas(checked: Checked) -> None:
    live, terminal = checked.api, checked.api.terminal
    settings = live.components.settings
    # Long timeouts while a state is looked at, so that it cannot move on meanwhile.
    live.components.settings = replace(
        settings, ack_timeout_ms=60_000, payment_deadline_ms=120_000, async_payment_deadline_ms=120_000
    )
    terminal.behaviour = "no_ack"
    accepted = live.pay(example(order_id="PENDING"), headers={"Prefer": "respond-async"})
    assert checked.check(accepted, "/v1/connector/order", "post", 202)["state"] == "pending"
    assert accepted.headers["Location"] == "/v1/connector/order/PENDING"
    assert checked.order("PENDING")["state"] == "pending"
    # The terminal never answers: free it for the next payments (the order stays pending).
    live.components.terminals.release(TERMINAL_ID, terminal.requests()[-1]["request_id"])

    terminal.behaviour, terminal.gate = "approve", threading.Event()
    checked.check(live.pay(headers={"Prefer": "respond-async"}), "/v1/connector/order", "post", 202)
    wait_for(lambda: live.order().json_body["state"] == "acknowledged")
    assert checked.order()["payment"] is None
    terminal.gate.set()
    terminal.join()
    terminal.gate = None
    done = checked.order()
    assert (done["state"], done["payment"]["paymentStatus"]) == ("succeeded", "Success")

    live.components.settings = settings
    terminal.behaviour = "ack_only"
    checked.pay(504, example(order_id="LATE"))
    terminal.join()
    timed_out = checked.order("LATE")
    assert (timed_out["state"], timed_out["reason"], timed_out["payment"]) == ("timed_out", "result_timeout", None)
    request_id = terminal.requests()[-1]["request_id"]
    assert terminal.result(TERMINAL_ID, request_id) == "late_succeeded"
    assert checked.order("LATE")["late_result"] is True

    terminal.behaviour = "busy"
    checked.pay(200, example(order_id="REFUSED"))
    refused = checked.order("REFUSED")
    assert (refused["state"], refused["reason"], refused["payment"]["errorCode"]) == (
        "failed",
        "terminal_busy",
        "terminal_busy",
    )

    checked.order("never-sent", 404)
    checked.get(f"/v1/connector/order/{ORDER_ID}", "/v1/connector/order/{order_id}", 401, headers={})
    covered(checked.seen, "/v1/connector/order/{order_id}", "get", {200, 401, 404})


def test_a_cancelled_order_matches_its_schemas(checked: Checked) -> None:
    live, terminal = checked.api, checked.api.terminal
    # The cancel answers (504 when the held terminal stays silent) well within the 5 s the played
    # terminal holds its answers for.
    live.components.settings = replace(
        live.components.settings, async_payment_deadline_ms=120_000, cancel_timeout_ms=1_000
    )
    terminal.gate = threading.Event()
    checked.check(live.pay(headers={"Prefer": "respond-async"}), "/v1/connector/order", "post", 202)
    wait_for(lambda: live.order().json_body["state"] == "acknowledged")
    # Whatever the cancel answers, the answer and the order afterwards are what the document says.
    cancel = live.pay(example(transaction_type="Cancel"))
    checked.check(cancel, "/v1/connector/order", "post", cancel.status_code)
    terminal.gate.set()
    terminal.join()
    assert checked.order()["state"] != "acknowledged"


def test_health_and_terminals_match_their_schemas(checked: Checked) -> None:
    assert checked.get("/v1/connector/healthcheck", "/v1/connector/healthcheck", headers={}) == {"status": "ok"}
    checked.api.terminal.say(TERMINAL_ID, "status", "s", {"state": "offline"})
    listed = checked.get("/v1/terminals", "/v1/terminals")["terminals"]
    assert [terminal["terminal_id"] for terminal in listed] == [TERMINAL_ID, "PAX-3000"]
    checked.get("/v1/terminals", "/v1/terminals", 401, headers={})


def test_the_orders_listing_matches_its_schema_in_every_state(checked: Checked) -> None:
    terminal = checked.api.terminal
    checked.pay(200, example(order_id="LISTED-PAID"))
    terminal.behaviour = "busy"
    checked.pay(200, example(order_id="LISTED-REFUSED"))
    listed = checked.get("/v1/connector/orders?limit=5", "/v1/connector/orders")
    states = {order["order_id"]: (order["state"], order["reason"]) for order in listed["orders"]}
    assert states == {"LISTED-REFUSED": ("failed", "terminal_busy"), "LISTED-PAID": ("succeeded", None)}
    assert listed["next_cursor"] is None
    first = checked.get("/v1/connector/orders?limit=1", "/v1/connector/orders")
    assert first["next_cursor"] is not None
    assert checked.get("/v1/connector/orders?state=in_flight", "/v1/connector/orders")["orders"] == []
    checked.get("/v1/connector/orders?state=paid", "/v1/connector/orders", 400)
    checked.get("/v1/connector/orders", "/v1/connector/orders", 401, headers={})
    covered(checked.seen, "/v1/connector/orders", "get", {200, 400, 401})


# -- the Console side -------------------------------------------------------------------------------------


def test_ipn_answers_and_transactions_match_their_schemas(checked: Checked) -> None:
    raw = jsonutil.dumps(ipn_body(order_id=FULL_ORDER_ID)).encode()
    assert checked.ipn(200, raw)["status"] == "stored"
    ingest = checked.api.client.lambda_.invoke(
        "ipn_ingest",
        {
            "Records": [
                {"messageId": "m1", "body": jsonutil.dumps(m), "eventSource": "aws:sqs"} for m in checked.ipn_queue.sent
            ]
        },
    )
    assert ingest.payload == {"batchItemFailures": []}
    assert checked.ipn(200, raw)["status"] == "duplicate"
    checked.ipn(400, b"{")
    checked.ipn(400, jsonutil.dumps(ipn_body(amount="899")).encode())
    checked.ipn(401, raw, secret="not-the-secret")
    checked.ipn(422, jsonutil.dumps(ipn_body(transaction_reference="TX-2", merchant_id="M404")).encode())
    covered(checked.seen, "/v1/ipn/nepting", "post", {200, 400, 401, 422})

    bare = checked.get("/v1/transactions/TX-1001", "/v1/transactions/{transaction_reference}")
    assert (bare["basket"], bare["customer"], bare["custom_data"]) == (None, None, None)
    request = order_request(FULL_ORDER_ID, amount=900)
    request["order"]["basket"][0]["origin"] = "an unknown field, echoed as sent"
    record_order_details(checked.api.components.ingest_deps(), details_from_head(head_image("M1", request)))
    detailed = checked.get("/v1/transactions/TX-1001", "/v1/transactions/{transaction_reference}")
    # The order asked 9.00 for a basket of 8.99: both the IPN's figure and the basket disagree with it.
    assert detailed["flags"] == ["amount_mismatch", "basket_mismatch"] and detailed["basket"][0]["origin"]
    page = checked.get("/v1/transactions", "/v1/transactions")
    assert [tx["reference"] for tx in page["transactions"]] == ["TX-1001"] and page["next_cursor"] is None
    checked.get("/v1/transactions?limit=1", "/v1/transactions")
    checked.get("/v1/transactions?status=Captured&order_id=none", "/v1/transactions")
    checked.get("/v1/transactions?limit=0", "/v1/transactions", 400)
    checked.get("/v1/transactions", "/v1/transactions", 401, headers={})
    checked.get("/v1/transactions/TX-404", "/v1/transactions/{transaction_reference}", 404)
    checked.get("/v1/transactions/TX-1001", "/v1/transactions/{transaction_reference}", 401, headers={})
    covered(checked.seen, "/v1/transactions", "get", {200, 400, 401})
    covered(checked.seen, "/v1/transactions/{transaction_reference}", "get", {200, 401, 404})


# -- the frozen contract: extend, never rename -------------------------------------------------------------


def shape(document: dict[str, Any], schema: dict[str, Any]) -> tuple[dict[str, str], dict[str, set[Any]]]:
    """A body schema as ``{dotted key: "[optional ]type[|null]"}`` and ``{dotted key: enumeration}``.

    Parts echoed from the request (``allOf`` of a request model) are one opaque ``object``."""
    kinds: dict[str, str] = {}
    enums: dict[str, set[Any]] = {}

    def walk(node: dict[str, Any], path: str, required: bool) -> None:
        node = resolve(document, node["$ref"]) if "$ref" in node else node
        variants = node.get("anyOf", [node])
        nullable = any(variant.get("type") == "null" for variant in variants)
        (main,) = [variant for variant in variants if variant.get("type") != "null"]
        main = resolve(document, main["$ref"]) if "$ref" in main else main
        kind = "object" if "allOf" in main else main["type"]
        kinds[path] = ("" if required else "optional ") + kind + ("|null" if nullable else "")
        if "enum" in main or "const" in main:
            enums[path] = set(main.get("enum", [main.get("const")]))
        for name, item in main.get("properties", {}).items() if "allOf" not in main else ():
            walk(item, f"{path}.{name}" if path else name, name in main.get("required", []))
        if kind == "array":
            walk(main["items"], path + "[]", True)

    walk(schema, "", True)
    return kinds, enums


def route_shapes(document: dict[str, Any]) -> dict[str, tuple[dict[str, str], dict[str, set[Any]]]]:
    return {
        f"{method.upper()} {route} {status}": shape(document, declared["content"]["application/json"]["schema"])
        for route, operations in document["paths"].items()
        for method, operation in operations.items()
        for status, declared in operation["responses"].items()
    }


def nested(prefix: str, shape_of: dict[str, str]) -> dict[str, str]:
    return {prefix + key: kind for key, kind in shape_of.items() if key}


ERROR = {
    "": "object",
    "error": "object",
    "error.status": "integer",
    "error.code": "string",
    "error.message": "string",
    "error.description": "string",
    "error.details": "optional object",
    "error.details.path": "string",
}
PAYMENT_RESPONSE = {
    "": "object",
    "paymentStatus": "string",
    "receipt": "string|null",
    "errorCode": "string|null",
    "errorData": "object|null",
    "order": "object",
    "customer": "object|null",
    "technical_pos_info": "object",
    "transaction": "optional object",
    "transaction.reference": "optional string",
    "transaction.authorization_code": "optional string",
    "transaction.card_brand": "optional string",
    "transaction.masked_pan": "optional string",
    "transaction.authorized_online": "optional boolean",
    "attempt": "optional integer",
}
ORDER_STATUS = {
    "": "object",
    "order_id": "string",
    "attempt": "integer",
    "request_id": "string",
    "terminal_id": "string",
    "state": "string",
    "reason": "string|null",
    "late_result": "boolean",
    "created_at": "string",
    "acknowledged_at": "string|null",
    "finished_at": "string|null",
    "ack_deadline": "string",
    "deadline": "string",
    "payment": "object|null",
    **nested("payment.", PAYMENT_RESPONSE),
}
TRANSACTION = {
    "": "object",
    "reference": "string",
    "merchant_id": "string",
    "order_id": "string",
    "terminal_id": "string",
    "operation": "string",
    "status_code": "integer",
    "status": "string",
    "amount_minor": "integer",
    "currency": "string",
    "authorization_code": "string|null",
    "card": "object",
    "card.brand": "string|null",
    "card.masked_pan": "string|null",
    "card.entry_mode": "string|null",
    "description": "string|null",
    "basket": "array|null",
    "basket[]": "object",
    "customer": "object|null",
    "custom_data": "object|null",
    "flags": "array",
    "flags[]": "string",
    "created_at": "string",
    "updated_at": "string",
}
TRANSACTION_ENUMS = {
    "operation": {"Debit", "Credit"},
    "status_code": {118, 125, 113, 115},
    "status": {"Captured", "Refunded", "Refused", "Cancelled"},
}
STATES = {"pending", "acknowledged", "succeeded", "failed", "timed_out", "cancelled"}
REASONS = {
    "terminal_busy",
    "ack_timeout",
    "result_timeout",
    "terminal_unreachable",
    "terminal_disconnected",
    "cancelled",
}

# What clients were promised, as of this writing: each route and status, every key with its type and
# presence, every enumeration's values. Keys and values may be added; none may go or change.
FROZEN: dict[str, tuple[dict[str, str], dict[str, set[Any]]]] = {
    "GET /v1/connector/healthcheck 200": ({"": "object", "status": "string"}, {"status": {"ok"}}),
    "POST /v1/connector/order 200": (PAYMENT_RESPONSE, {"paymentStatus": {"Success", "Failed"}}),
    "POST /v1/connector/order 202": (
        {"": "object", "order_id": "string", "state": "string", "location": "string"},
        {"state": {"pending"}},
    ),
    **{f"POST /v1/connector/order {s}": (ERROR, {}) for s in (400, 401, 403, 404, 409, 413, 415, 500, 502, 504)},
    "GET /v1/connector/order/{order_id} 200": (
        ORDER_STATUS,
        {"state": STATES, "reason": REASONS, "payment.paymentStatus": {"Success", "Failed"}},
    ),
    **{f"GET /v1/connector/order/{{order_id}} {s}": (ERROR, {}) for s in (400, 401, 404, 500)},
    "GET /v1/terminals 200": (
        {
            "": "object",
            "terminals": "array",
            "terminals[]": "object",
            "terminals[].terminal_id": "string",
            "terminals[].online": "boolean",
            "terminals[].last_seen_at": "string|null",
            "terminals[].busy": "boolean",
            "terminals[].cloud_api_enabled": "boolean",
        },
        {},
    ),
    **{f"GET /v1/terminals {s}": (ERROR, {}) for s in (400, 401, 404, 500)},
    "GET /v1/transactions 200": (
        {
            "": "object",
            "transactions": "array",
            "transactions[]": "object",
            **nested("transactions[].", TRANSACTION),
            "next_cursor": "string|null",
        },
        {f"transactions[].{key}": values for key, values in TRANSACTION_ENUMS.items()},
    ),
    **{f"GET /v1/transactions {s}": (ERROR, {}) for s in (400, 401)},
    "GET /v1/transactions/{transaction_reference} 200": (TRANSACTION, TRANSACTION_ENUMS),
    **{f"GET /v1/transactions/{{transaction_reference}} {s}": (ERROR, {}) for s in (401, 404)},
    "POST /v1/ipn/nepting 200": (
        {"": "object", "status": "string", "transaction_reference": "string"},
        {"status": {"stored", "duplicate"}},
    ),
    **{f"POST /v1/ipn/nepting {s}": (ERROR, {}) for s in (400, 401, 422)},
}


def broken_promises(document: dict[str, Any]) -> list[str]:
    current = route_shapes(document)
    broken = []
    for answer, (kinds, enums) in FROZEN.items():
        if answer not in current:
            broken.append(f"{answer}: no longer declared")
            continue
        now_kinds, now_enums = current[answer]
        broken += [
            f"{answer}: {key} was {kind}, is {now_kinds.get(key)}"
            for key, kind in kinds.items()
            if now_kinds.get(key) != kind
        ]
        broken += [
            f"{answer}: {key} lost {sorted(values - now_enums.get(key, set()), key=str)}"
            for key, values in enums.items()
            if not values <= now_enums.get(key, set())
        ]
    return broken


def test_the_document_keeps_every_key_type_and_value_clients_were_promised(checked: Checked) -> None:
    assert broken_promises(checked.document) == []


@pytest.mark.parametrize(
    ("change", "broken"),
    [
        (lambda p: p.__setitem__("errorcode", p.pop("errorCode")), "errorCode was string|null, is None"),
        (lambda p: p.__setitem__("attempt", {"type": "string"}), "attempt was optional integer, is optional string"),
        (lambda p: p["paymentStatus"].__setitem__("enum", ["Success"]), "paymentStatus lost ['Failed']"),
    ],
    ids=["renamed", "retyped", "value-dropped"],
)
def test_a_rename_a_type_change_or_a_dropped_value_breaks_a_promise(checked: Checked, change: Any, broken: str) -> None:
    document = copy.deepcopy(checked.document)
    change(document["components"]["schemas"]["PaymentResponse"]["properties"])
    assert f"POST /v1/connector/order 200: {broken}" in broken_promises(document)

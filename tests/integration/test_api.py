"""The payment API through Chalice's test client, over moto tables, with a terminal played from a
background thread through the ``terminal_events`` handler: every answer of docs/payment-api.md."""

from __future__ import annotations

import base64
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

import app as app_module
from chalicelib import bootstrap, jsonutil, protocol
from chalicelib.config import Settings
from chalicelib.merchants import enrollment
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments.domain import DispatchState
from chalicelib.ports import SleepingWaker
from tests.conftest import TERMINAL_ID, example
from tests.integration.moto_per_module import (  # noqa: F401
    aws_with_fresh_tables,
    dynamodb_actions_one_at_a_time,
    moto_for_module,
)

ROOT = Path(__file__).resolve().parents[2]
ORDER_ID = "ORDER_1537532589263"
FULL_ORDER_ID = "ORDER_1537532589264"
M1_LOGIN, M1_PASSWORD = "shop-one", "password-of-shop-one"
M2_LOGIN, M2_PASSWORD = "shop-two", "password-of-shop-two"
M2_TERMINAL = "PAX-2000"
DISABLED_TERMINAL = "PAX-3000"
ACK_TIMEOUT_MS, DEADLINE_MS = 300, 1500
SECRET_DETAIL = "boom: table nepting-payments at 10.0.0.7, key=AKIA-not-a-key"


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


M1_AUTH = {"Authorization": basic(M1_LOGIN, M1_PASSWORD)}
M2_AUTH = {"Authorization": basic(M2_LOGIN, M2_PASSWORD)}
JSON = {"Content-Type": "application/json"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iot_rule_event(topic: str, envelope: dict[str, Any]) -> dict[str, Any]:
    """What the IoT topic rule hands the Lambda: payload base64-encoded, topic and arrival time."""
    return {"topic": topic, "payload": base64.b64encode(protocol.encode(envelope)).decode(), "received_at": now_ms()}


class RecordingWaker(SleepingWaker):
    def __init__(self) -> None:
        self.waits: list[tuple[int, str]] = []

    def wait(self, request_id: str, timeout_s: float) -> None:
        self.waits.append((threading.get_ident(), request_id))
        super().wait(request_id, timeout_s)

    def threads_waiting_on(self, request_id: str) -> set[int]:
        return {thread for thread, waited in list(self.waits) if waited == request_id}


@dataclass
class PlayedTerminal:
    """The terminal channel: records every publish and answers the way ``behaviour`` says, from a
    background thread, through the same Lambda handler the IoT topic rule feeds."""

    passphrases: dict[str, str]
    behaviour: str = "approve"
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    raise_on_publish: Exception | None = None
    gate: threading.Event | None = None  # when set, the result waits for it (the customer is slow)

    def publish(self, terminal_id: str, envelope: dict[str, Any]) -> None:
        if self.raise_on_publish is not None:
            raise self.raise_on_publish
        self.published.append((terminal_id, envelope))
        if envelope["type"] != "payment_request":
            return
        thread = threading.Thread(target=self._play, args=(terminal_id, envelope["request_id"]), daemon=True)
        self.threads.append(thread)
        thread.start()

    def requests(self, kind: str = "payment_request") -> list[dict[str, Any]]:
        return [e for _, e in self.published if e["type"] == kind]

    def say(self, terminal_id: str, kind: str, request_id: str, body: dict[str, Any]) -> str:
        envelope = protocol.make_envelope(kind, request_id, terminal_id, body, self.passphrases[terminal_id])
        topic = protocol.topic_for(terminal_id, "status" if kind == "status" else "events")
        handler = app_module.terminal_status_handler if kind == "status" else app_module.terminal_events_handler
        outcome = handler(iot_rule_event(topic, envelope), None)["outcome"]
        self.outcomes.append(outcome)
        return str(outcome)

    def result(self, terminal_id: str, request_id: str, status: str = "Success", **fields: Any) -> str:
        body = {
            "payment_status": status,
            "transaction_reference": "TX-" + request_id[:8],
            "authorization_code": "A1B2C3",
            "card_brand": "VISA",
            "masked_pan": "497010******0001",
            "authorized_online": True,
            "receipt": base64.b64encode(b"TICKET CLIENT\n8,99 EUR").decode(),
            **fields,
        }
        return self.say(terminal_id, "result", request_id, body)

    def _play(self, terminal_id: str, request_id: str) -> None:
        if self.behaviour == "no_ack":
            return
        if self.behaviour == "busy":
            self.say(terminal_id, "ack", request_id, {"accepted": False, "reason": "busy"})
            return
        self.say(terminal_id, "ack", request_id, {})
        if self.gate is not None:
            assert self.gate.wait(5)
        if self.behaviour == "approve":
            self.result(terminal_id, request_id)
        elif self.behaviour == "decline":
            self.result(terminal_id, request_id, "Failed", error_code="declined", error_data={"reason": "funds"})
        elif self.behaviour == "drop":
            self.say(terminal_id, "status", "will-" + request_id, {"state": "offline"})

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=10)
            assert not thread.is_alive()


@dataclass
class Api:
    client: Client
    components: bootstrap.Components
    terminal: PlayedTerminal
    waker: RecordingWaker

    def pay(self, body: Any = None, headers: dict[str, str] | None = None, raw: str | bytes | None = None) -> Any:
        text = raw if raw is not None else jsonutil.dumps(body if body is not None else example())
        return self.client.http.post("/v1/connector/order", headers={**JSON, **M1_AUTH, **(headers or {})}, body=text)

    def order(self, order_id: str = ORDER_ID, headers: dict[str, str] | None = None) -> Any:
        return self.client.http.get(f"/v1/connector/order/{order_id}", headers=headers or M1_AUTH)


@pytest.fixture
def api(aws: Settings, linearizable_dynamodb: None) -> Iterator[Api]:
    settings = replace(aws, ack_timeout_ms=ACK_TIMEOUT_MS, payment_deadline_ms=DEADLINE_MS)
    components = bootstrap.build(settings)
    waker = RecordingWaker()
    components.waker = waker
    enrollment.create_merchant(components.merchants, "M1", M1_LOGIN, M1_PASSWORD)
    enrollment.create_merchant(components.merchants, "M2", M2_LOGIN, M2_PASSWORD)
    passphrases: dict[str, str] = {}
    for merchant, manufacturer, serial, with_passphrase in (
        ("M1", "PAX", "1850320198", True),
        ("M2", "PAX", "2000", True),
        ("M1", "PAX", "3000", False),
    ):
        terminal_id, passphrase = enrollment.enroll_terminal(
            components.terminals, components.merchants, merchant, manufacturer, serial, with_passphrase=with_passphrase
        )
        components.terminals.record_status(terminal_id, True, now_ms(), protocol.timestamp_from_ms(now_ms()))
        if passphrase:
            passphrases[terminal_id] = passphrase
    terminal = PlayedTerminal(passphrases)
    components.channel = terminal
    bootstrap.install(components)
    # Chalice's test client patches os.environ per request; concurrent requests could leave its values.
    saved_environ = dict(os.environ)
    try:
        with Client(app_module.app, project_dir=str(ROOT)) as client:
            yield Api(client, components, terminal, waker)
        terminal.join()
    finally:
        bootstrap.install(None)
        os.environ.clear()
        os.environ.update(saved_environ)


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.body
    assert response.headers["Content-Type"] == "application/json"
    error: dict[str, Any] = response.json_body["error"]
    assert (error["status"], error["code"]) == (status, code)
    assert error["message"] and error["description"]
    return error


def for_terminal(serial: str) -> dict[str, Any]:
    body = example()
    body["pos_technical_info"]["device_information"]["serial_number"] = serial
    return body


# -- 200 -------------------------------------------------------------------------------------------


def test_approved_payment_is_a_200_success_echoing_the_request(api: Api) -> None:
    response = api.pay(example("order-full.json"))
    assert response.status_code == 200, response.body
    body = response.json_body
    assert body["paymentStatus"] == "Success" and body["errorCode"] is None and body["attempt"] == 1
    assert base64.b64decode(body["receipt"]).decode() == "TICKET CLIENT\n8,99 EUR"
    assert body["order"]["order_id"] == FULL_ORDER_ID
    assert body["customer"]["email"] == "hipay.pos@test.com"
    assert body["technical_pos_info"]["terminal_transaction_display"]["force_authorization"] is True
    assert body["transaction"]["masked_pan"] == "497010******0001"
    assert body["transaction"]["card_brand"] == "VISA" and body["transaction"]["authorized_online"] is True
    assert b'"unit_price":8.99' in response.body, "basket prices are echoed verbatim, never through a float"
    (request,) = api.terminal.requests()
    assert request["terminal_id"] == TERMINAL_ID
    assert protocol.verify_signature(request, api.terminal.passphrases[TERMINAL_ID])
    assert request["body"]["amount"] == 899 and request["body"]["force_authorization"] is True
    api.terminal.join()  # the handler may still be finishing (release, metrics) when the answer is out
    assert api.terminal.outcomes == ["acknowledged", "succeeded"]


def test_declined_payment_is_a_200_failed_with_the_terminals_error(api: Api) -> None:
    api.terminal.behaviour = "decline"
    response = api.pay()
    assert response.status_code == 200
    body = response.json_body
    assert (body["paymentStatus"], body["errorCode"], body["errorData"]) == ("Failed", "declined", {"reason": "funds"})


def test_busy_terminal_is_a_200_failed_terminal_busy_without_an_attempt(api: Api) -> None:
    api.components.terminals.claim(TERMINAL_ID, "another-payment", now_ms(), now_ms() + 60_000)
    response = api.pay()
    assert response.status_code == 200
    assert (response.json_body["paymentStatus"], response.json_body["errorCode"]) == ("Failed", "terminal_busy")
    assert api.terminal.published == []
    error_of(api.order(), 404, "order.not_found")


def test_terminal_refusing_in_its_ack_is_a_200_failed_terminal_busy(api: Api) -> None:
    api.terminal.behaviour = "busy"
    response = api.pay()
    assert response.status_code == 200
    assert (response.json_body["paymentStatus"], response.json_body["errorCode"]) == ("Failed", "terminal_busy")
    terminal = api.components.terminals.get(TERMINAL_ID)
    assert terminal is not None and terminal.busy_request_id is None


# -- idempotency -----------------------------------------------------------------------------------------


def test_replay_after_success_is_the_stored_response_marked_replayed(api: Api) -> None:
    first = api.pay()
    again = api.pay()
    assert again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.json_body == first.json_body
    assert len(api.terminal.requests()) == 1


def test_other_payload_for_a_succeeded_order_is_a_409(api: Api) -> None:
    api.pay()
    error_of(api.pay(example(price={"amount": 101, "currency": "EUR"})), 409, "order.conflict")
    assert len(api.terminal.requests()) == 1


def test_retry_after_a_failure_starts_a_new_attempt(api: Api) -> None:
    api.terminal.behaviour = "decline"
    assert api.pay().json_body["attempt"] == 1
    api.terminal.join()
    api.terminal.behaviour = "approve"
    retried = api.pay()
    assert (retried.json_body["paymentStatus"], retried.json_body["attempt"]) == ("Success", 2)
    assert len({r["request_id"] for r in api.terminal.requests()}) == 2
    assert api.order().json_body["attempt"] == 2


def in_thread(action: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(action()), daemon=True)
    thread.start()
    return thread, out


def test_duplicate_while_in_flight_joins_the_payment_and_sends_nothing_twice(api: Api) -> None:
    api.terminal.gate = threading.Event()
    first, first_reply = in_thread(api.pay)
    wait_for(lambda: bool(api.terminal.requests()))
    request_id = api.terminal.requests()[0]["request_id"]
    second, second_reply = in_thread(api.pay)
    # release the customer once both requests are waiting on the same dispatch
    wait_for(lambda: len(api.waker.threads_waiting_on(request_id)) == 2)
    api.terminal.gate.set()
    first.join(10)
    second.join(10)
    assert first_reply[0].status_code == second_reply[0].status_code == 200
    assert first_reply[0].json_body == second_reply[0].json_body
    assert first_reply[0].json_body["paymentStatus"] == "Success"
    assert len(api.terminal.requests()) == 1


def test_concurrent_requests_each_see_their_own_request(api: Api) -> None:
    # Chalice keeps current_request on the app object: a request arriving while another is being
    # authenticated must not swap its body, headers or credentials for the other's.
    authenticator = api.components.authenticator
    inside, release = threading.Event(), threading.Event()
    real = authenticator.merchant_for

    def slow_merchant_for(header: str | None, source: str | None = None) -> str:
        if header == M1_AUTH["Authorization"] and not release.is_set():
            inside.set()
            assert release.wait(5)
        return real(header, source)

    authenticator.merchant_for = slow_merchant_for  # type: ignore[method-assign]
    paying, reply = in_thread(api.pay)
    assert inside.wait(5)
    other = api.client.http.post(
        "/v1/connector/order", headers={**JSON, **M2_AUTH}, body=jsonutil.dumps(for_terminal("2000"))
    )
    release.set()
    paying.join(10)
    assert other.status_code == 200 and other.json_body["order"]["order_id"] == ORDER_ID
    assert reply[0].status_code == 200, reply[0].body
    assert reply[0].json_body["technical_pos_info"]["device_information"]["serial_number"] == "1850320198"
    assert sorted(r["terminal_id"] for r in api.terminal.requests()) == [TERMINAL_ID, M2_TERMINAL]


# -- 202 and the order resource -----------------------------------------------------------------------------


def test_respond_async_is_a_202_with_the_orders_location_and_the_result_is_read_there(api: Api) -> None:
    response = api.pay(headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    assert response.headers["Location"] == f"/v1/connector/order/{ORDER_ID}"
    assert response.json_body["order_id"] == ORDER_ID
    api.terminal.join()
    status = api.client.http.get(response.headers["Location"], headers=M1_AUTH)
    assert status.status_code == 200
    assert (status.json_body["state"], status.json_body["late_result"]) == ("succeeded", False)
    assert status.json_body["payment"]["paymentStatus"] == "Success"
    assert status.json_body["finished_at"].endswith("Z") and status.json_body["acknowledged_at"].endswith("Z")


def local_server_call(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """One request through the local stack's HTTP server: status, headers and JSON body."""
    from local.api_server import ApiServer

    server = ApiServer(app_module.app, "127.0.0.1", 0)
    server.start()
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}{path}", data=body, headers=headers or {}, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, jsonutil.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.headers, jsonutil.loads(error.read())
    finally:
        server.stop()


@pytest.mark.parametrize("order_id", ["A/B", "a?b=1", "x#y", "café-€", "50%25", "sp ace"])
def test_any_order_id_gets_a_percent_encoded_location_that_finds_it(api: Api, order_id: str) -> None:
    body = example(order_id=order_id)
    status, headers, answer = local_server_call(
        "POST", "/v1/connector/order", jsonutil.dumps(body).encode(), {**JSON, **M1_AUTH, "Prefer": "respond-async"}
    )
    assert status == 202, answer
    location = headers["Location"]
    assert location.isascii() and "?" not in location and "#" not in location
    assert location.count("/") == 4
    api.terminal.join()
    status, _, found = local_server_call("GET", location, headers=M1_AUTH)
    assert (status, found["order_id"]) == (200, order_id)


def test_order_of_another_merchant_or_never_sent_is_a_404(api: Api) -> None:
    api.pay()
    error_of(api.order(headers=M2_AUTH), 404, "order.not_found")
    error_of(api.order("never-sent"), 404, "order.not_found")


# -- 4xx ------------------------------------------------------------------------------------------------


# One app per test costs about a second (moto tables, two slow password hashes): the cases of one
# answer share it, and each assertion names its case.
INVALID_BODIES = [
    (
        "fractional-amount",
        jsonutil.dumps(example()).replace('"amount":100', '"amount":100.5'),
        "int_type",
        "order.price.amount",
    ),
    (
        "concert",
        jsonutil.dumps(example()).replace('"AppNepting"', '"ConcertV3.2"'),
        "protocol_unsupported",
        "pos_technical_info.terminal_transaction_display.protocol",
    ),
    ("currency", jsonutil.dumps(example()).replace('"EUR"', '"USD"'), "currency_unsupported", "order.price.currency"),
    ("array", "[1, 2]", "not_an_object", ""),
    ("truncated", "{", "malformed_json", ""),
    ("nan", '{"a": NaN}', "malformed_json", ""),
    ("empty", "", "malformed_json", ""),
    ("not-utf8", b'{"a": "\xff"}', "malformed_json", ""),
    (
        "huge-exponent-in-custom-data",
        jsonutil.dumps(example()).replace('"order":{', '"order":{"custom_data":{"k":1E+300000},', 1),
        "exponent_too_large",
        "order.custom_data.k",
    ),
    (
        "tiny-tax-rate",
        jsonutil.dumps(example("order-full.json")).replace('"tax_rate":0', '"tax_rate":1E-999999999', 1),
        "exponent_too_large",
        "order.basket.0.tax_rate",
    ),
    ("huge-unknown-field", '{"x":1e400,' + jsonutil.dumps(example())[1:], "exponent_too_large", "x"),
    ("long-number", '{"x":' + "1" * 31 + "}", "number_too_long", "x"),
    ("deep", '{"x":' + "[" * 5000 + "]" * 5000 + "}", "too_deep", "x" + ".0" * 31),
    (
        "lone-surrogate",
        jsonutil.dumps(example()).replace('"order":{', '"order":{"description":"\\ud800",', 1),
        "lone_surrogate",
        "order.description",
    ),
    (
        "total-1e30",
        jsonutil.dumps(example("order-full.json")).replace('"total_amount":8.99', '"total_amount":1E+30', 1),
        "exponent_too_large",
        "order.basket.0.total_amount",
    ),
    (
        "total-of-30-digits",
        jsonutil.dumps(example("order-full.json")).replace('"total_amount":8.99', '"total_amount":' + "9" * 30, 1),
        "less_than_equal",
        "order.basket.0.total_amount",
    ),
]


def test_invalid_body_is_a_400_naming_the_first_bad_field(api: Api) -> None:
    for case, raw, code, path in INVALID_BODIES:
        response = api.pay(raw=raw)
        assert response.status_code == 400, case
        error = response.json_body["error"]
        assert (error["status"], error["code"]) == (400, f"validation.{code}"), case
        assert error.get("details") == ({"path": path} if path is not None else None), case
    assert api.terminal.published == []


BASKETS_THAT_ARE_OFF = [
    (
        "line-total",
        jsonutil.dumps(example("order-full.json")).replace('"total_amount":8.99', '"total_amount":9.99'),
        "basket_line_total",
        "order.basket.0.total_amount",
    ),
    (
        "basket-total",
        jsonutil.dumps(example("order-full.json")).replace('"amount":899', '"amount":900'),
        "basket_total",
        "order.basket",
    ),
    ("hipay-original", jsonutil.dumps(example("order-full-hipay.json")), "basket_total", "order.basket"),
]


def test_a_basket_that_is_off_is_a_400_for_a_strict_merchant(api: Api) -> None:
    enrollment.create_merchant(api.components.merchants, "M1", M1_LOGIN, M1_PASSWORD, basket_policy="strict")
    for case, raw, code, path in BASKETS_THAT_ARE_OFF:
        error = error_of(api.pay(raw=raw), 400, f"validation.{code}")
        assert error["details"] == {"path": path}, case
    assert api.terminal.published == []


def test_hipays_original_full_example_is_accepted_and_its_order_flagged_basket_mismatch(api: Api) -> None:
    body = example("order-full-hipay.json")
    response = api.pay(body)
    assert response.status_code == 200 and response.json_body["paymentStatus"] == "Success"
    flagged = api.order(body["order"]["order_id"]).json_body
    assert (flagged["state"], flagged["flags"]) == ("succeeded", ["basket_mismatch"])
    api.pay(example("order-full.json"))
    assert api.order(FULL_ORDER_ID).json_body["flags"] == []


WRONG_CREDENTIALS = [
    ("missing", {}),
    ("wrong-password", {"Authorization": basic(M1_LOGIN, "wrong-password")}),
    ("unknown-login", {"Authorization": basic("nobody", M1_PASSWORD)}),
    ("malformed", {"Authorization": "Basic %%%garbage"}),
    ("not-basic", {"Authorization": "Bearer " + base64.b64encode(f"{M1_LOGIN}:{M1_PASSWORD}".encode()).decode()}),
    ("empty-password", {"Authorization": basic(M1_LOGIN, "")}),
    ("other-merchants-login-with-this-password", {"Authorization": basic(M2_LOGIN, M1_PASSWORD)}),
]


def test_missing_or_wrong_credentials_are_a_401_on_the_payment_routes(api: Api) -> None:
    api.pay()  # a cached success must not let a wrong password through
    for case, headers in WRONG_CREDENTIALS:
        for response in (
            api.client.http.post("/v1/connector/order", headers={**JSON, **headers}, body=jsonutil.dumps(example())),
            api.client.http.get(f"/v1/connector/order/{ORDER_ID}", headers=headers),
            api.client.http.get("/v1/terminals", headers=headers),
        ):
            assert response.status_code == 401, case
            assert response.json_body["error"]["code"] == "auth.unauthorized", case
            assert response.headers["WWW-Authenticate"].startswith("Basic"), case
    assert len(api.terminal.requests()) == 1


def test_repeated_failed_authentications_of_a_login_are_a_429_with_retry_after(api: Api) -> None:
    wrong = {"Authorization": basic(M2_LOGIN, "not-the-password")}
    limit = api.components.settings.auth_failures_per_login
    # Windows are fixed: if one ends during the attempts, the count starts again once, so the
    # limit is reached within twice as many attempts, and never before `limit` failures.
    statuses = []
    while 429 not in statuses and len(statuses) < 2 * limit:
        statuses.append(api.client.http.get("/v1/terminals", headers=wrong).status_code)
    assert statuses.index(429) >= limit and set(statuses[:-1]) == {401}
    for headers in (wrong, M2_AUTH):  # the right password too: no slow hash runs for this login now
        response = api.client.http.get("/v1/terminals", headers=headers)
        error = error_of(response, 429, "request.throttled")
        assert 1 <= int(response.headers["Retry-After"]) <= api.components.settings.auth_window_s
        assert error["message"]
    assert api.client.http.get("/v1/terminals", headers=M1_AUTH).status_code == 200


def test_terminal_without_passphrase_is_a_403(api: Api) -> None:
    error_of(api.pay(for_terminal("3000")), 403, "terminal.service_disabled")
    assert api.terminal.published == []


def test_unknown_terminal_and_another_merchants_terminal_are_the_same_404(api: Api) -> None:
    unknown = error_of(api.pay(for_terminal("999999")), 404, "terminal.not_found")
    foreign = error_of(api.pay(for_terminal("2000")), 404, "terminal.not_found")
    assert unknown == foreign, "another merchant's terminal is not revealed"
    assert api.terminal.published == []
    assert (
        api.client.http.post(
            "/v1/connector/order", headers={**JSON, **M2_AUTH}, body=jsonutil.dumps(for_terminal("2000"))
        ).status_code
        == 200
    )


def test_unknown_route_is_the_contracts_404_on_the_local_server(api: Api) -> None:
    # Chalice's API Gateway emulation answers unknown routes 403 "Missing Authentication Token"; the local
    # server (and API Gateway's configured gateway response) answer the contract's 404.
    from local.api_server import ApiServer

    server = ApiServer(app_module.app, "127.0.0.1", 0)
    server.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v1/nothing-here", timeout=5)
        assert caught.value.code == 404
        body = jsonutil.loads(caught.value.read())
        assert (body["error"]["status"], body["error"]["code"]) == (404, "route.not_found")
    finally:
        server.stop()


def test_body_over_64_kib_is_a_413(api: Api) -> None:
    body = example()
    body["padding"] = "x" * (64 * 1024)
    error_of(api.pay(body), 413, "request.too_large")
    assert api.terminal.published == []


def test_body_of_exactly_64_kib_is_read(api: Api) -> None:
    body = example()
    text = jsonutil.dumps({**body, "padding": ""})
    body["padding"] = "x" * (64 * 1024 - len(text.encode()))
    assert len(jsonutil.dumps(body).encode()) == 64 * 1024
    assert api.pay(body).status_code == 200


def test_body_that_is_not_json_is_a_415(api: Api) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        response = api.pay(headers={"Content-Type": content_type})
        assert response.status_code == 415, content_type
        assert response.json_body["error"]["code"] == "request.unsupported_media_type", content_type
    assert api.terminal.published == []


def test_json_with_a_charset_is_accepted(api: Api) -> None:
    assert api.pay(headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


# -- 5xx ------------------------------------------------------------------------------------------------


def test_offline_terminal_is_a_502_at_once_and_nothing_is_published(api: Api) -> None:
    api.terminal.say(TERMINAL_ID, "status", "will", {"state": "offline"})
    error_of(api.pay(), 502, "terminal.offline")
    assert api.terminal.published == []
    assert api.waker.waits == [], "no waiting for a terminal known to be offline"
    error_of(api.order(), 404, "order.not_found")


def test_terminal_dropping_during_the_payment_is_a_502(api: Api) -> None:
    api.terminal.behaviour = "drop"
    error_of(api.pay(), 502, "terminal.disconnected")
    api.terminal.join()
    assert api.order().json_body["state"] == "failed"
    assert api.order().json_body["reason"] == "terminal_disconnected"


def test_no_ack_is_a_504_ack_timeout_and_the_terminal_is_told_to_cancel(api: Api) -> None:
    api.terminal.behaviour = "no_ack"
    error_of(api.pay(), 504, "terminal.ack_timeout")
    (request,) = api.terminal.requests()
    (cancel,) = api.terminal.requests("cancel_request")
    assert cancel["body"] == {"order_id": ORDER_ID, "target_request_id": request["request_id"]}
    status = api.order().json_body
    assert (status["state"], status["reason"]) == ("timed_out", "ack_timeout")
    terminal = api.components.terminals.get(TERMINAL_ID)
    assert terminal is not None and terminal.busy_request_id is None, "the terminal is free for the next payment"


def test_no_result_is_a_504_and_the_late_result_shows_on_the_order_once_it_lands(api: Api) -> None:
    api.terminal.behaviour = "ack_only"
    error_of(api.pay(), 504, "terminal.result_timeout")
    api.terminal.join()
    before = api.order().json_body
    assert (before["state"], before["reason"], before["payment"]) == ("timed_out", "result_timeout", None)
    request_id = api.terminal.requests()[0]["request_id"]
    assert api.terminal.result(TERMINAL_ID, request_id) == "late_succeeded"
    after = api.order().json_body
    assert (after["state"], after["late_result"]) == ("succeeded", True)
    assert after["payment"]["paymentStatus"] == "Success"
    assert after["payment"]["transaction"]["reference"] == "TX-" + request_id[:8]
    # a repeated late result changes nothing
    assert api.terminal.result(TERMINAL_ID, request_id, "Failed") == "ignored:already_final"
    assert api.order().json_body == after


def test_unexpected_error_is_a_500_that_leaks_nothing(api: Api) -> None:
    api.terminal.raise_on_publish = RuntimeError(SECRET_DETAIL)
    counted = METRIC_COUNTS["ApiErrors.reason=unexpected"]
    response = api.pay()
    error = error_of(response, 500, "internal.error")
    assert "details" not in error
    text = response.body.decode()
    for leak in ("boom", "nepting-payments", "10.0.0.7", "AKIA", "Traceback", "RuntimeError", "payments.py"):
        assert leak not in text
    assert METRIC_COUNTS["ApiErrors.reason=unexpected"] == counted + 1


# -- the rest of the surface ---------------------------------------------------------------------------------


def test_healthcheck_needs_no_credentials(api: Api) -> None:
    response = api.client.http.get("/v1/connector/healthcheck")
    assert (response.status_code, response.json_body) == (200, {"status": "ok"})


def test_terminals_lists_only_the_merchants_own_with_their_presence(api: Api) -> None:
    api.terminal.say(TERMINAL_ID, "status", "s", {"state": "offline"})
    api.components.terminals.claim(DISABLED_TERMINAL, "r-x", now_ms(), now_ms() + 60_000)
    response = api.client.http.get("/v1/terminals", headers=M1_AUTH)
    assert response.status_code == 200
    listed = {t["terminal_id"]: t for t in response.json_body["terminals"]}
    assert list(listed) == [TERMINAL_ID, DISABLED_TERMINAL]
    assert (listed[TERMINAL_ID]["online"], listed[TERMINAL_ID]["busy"]) == (False, False)
    assert listed[TERMINAL_ID]["last_seen_at"].endswith("Z")
    assert (listed[DISABLED_TERMINAL]["online"], listed[DISABLED_TERMINAL]["busy"]) == (True, True)
    assert listed[DISABLED_TERMINAL]["cloud_api_enabled"] is False
    assert "passphrase" not in response.body.decode()
    other = api.client.http.get("/v1/terminals", headers=M2_AUTH).json_body["terminals"]
    assert [t["terminal_id"] for t in other] == [M2_TERMINAL]


def test_status_lambda_records_presence_from_the_iot_rule_event(api: Api) -> None:
    envelope = protocol.make_envelope(
        "status", "s-1", TERMINAL_ID, {"state": "offline"}, api.terminal.passphrases[TERMINAL_ID]
    )
    invoked = api.client.lambda_.invoke(
        "terminal_status", iot_rule_event(protocol.topic_for(TERMINAL_ID, "status"), envelope)
    )
    assert invoked.payload == {"outcome": "offline"}
    terminal = api.components.terminals.get(TERMINAL_ID)
    assert terminal is not None and terminal.online is False


def test_events_lambda_refuses_a_forged_event(api: Api) -> None:
    api.terminal.behaviour = "no_ack"
    api.pay(headers={"Prefer": "respond-async"})
    request_id = api.terminal.requests()[0]["request_id"]
    forged = protocol.make_envelope("result", request_id, TERMINAL_ID, {"payment_status": "Success"}, "guessed")
    invoked = api.client.lambda_.invoke(
        "terminal_events", iot_rule_event(protocol.topic_for(TERMINAL_ID, "events"), forged)
    )
    assert invoked.payload == {"outcome": "refused:bad_signature"}
    dispatch = api.components.payments.get_dispatch(request_id)
    assert dispatch is not None and dispatch.state == DispatchState.PENDING


def test_openapi_document_is_valid_and_describes_every_route(api: Api) -> None:
    from openapi_spec_validator import validate

    response = api.client.http.get("/openapi.json", headers=M1_AUTH)
    assert response.status_code == 200
    document = response.json_body
    validate(document)
    for path, methods in app_module.app.routes.items():
        if not path.startswith("/v1/"):
            continue  # the document itself, and the pages (/, /console, /docs) that read it
        for method, entry in methods.items():
            if entry.view_name.startswith("method_not_allowed"):
                assert method.lower() not in document["paths"][path], (path, method)
                continue
            operation = document["paths"][path][method.lower()]
            assert "200" in operation["responses"] or "202" in operation["responses"], (path, method)
    order_responses = set(document["paths"]["/v1/connector/order"]["post"]["responses"])
    assert {"200", "202", "400", "401", "403", "404", "409", "413", "415", "500", "502", "504"} <= order_responses
    assert document["paths"]["/v1/connector/healthcheck"]["get"]["security"] == []
    schemas = document["components"]["schemas"]
    assert {"OrderRequest", "PaymentResponse", "ErrorBody", "OrderStatus", "TerminalList", "OrderPage"} <= set(schemas)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)

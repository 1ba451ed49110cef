"""Every entry point of the system on one screen: HTTP routes and event handlers.

Each is a few lines: parse the input, call one function in chalicelib/, shape the output.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from chalice import Chalice, Response
from chalice.app import Request

from chalicelib import openapi
from chalicelib.http import ANY_CONTENT, api_handler, json_response, read_json_body
from chalicelib.models import parse_order_request
from chalicelib.services import payments, terminal_events, terminals
from chalicelib.wiring import components

app = Chalice(app_name="nepting-cloud-api")


def _request() -> Request:
    request = app.current_request
    if request is None:
        raise RuntimeError("no current request")
    return request


def _merchant() -> str:
    return components().authenticator.merchant_for(_request().headers.get("authorization"))


@app.route("/v1/connector/healthcheck", methods=["GET"])
@api_handler
def healthcheck() -> Response:
    return json_response(200, {"status": "ok"})


@app.route("/v1/connector/order", methods=["POST"], content_types=ANY_CONTENT)
@api_handler
def send_order() -> Response:
    merchant_id = _merchant()
    raw = read_json_body(_request())
    request = parse_order_request(raw)
    prefer = (_request().headers.get("prefer") or "").lower()
    reply = payments.request_payment(
        components().payment_deps(), merchant_id, request, raw, respond_async="respond-async" in prefer
    )
    return json_response(reply.status, reply.body, reply.headers)


@app.route("/v1/connector/order/{order_id}", methods=["GET"])
@api_handler
def get_order(order_id: str) -> Response:
    merchant_id = _merchant()
    return json_response(200, payments.order_status(components().payment_deps(), merchant_id, order_id))


@app.route("/v1/terminals", methods=["GET"])
@api_handler
def list_terminals() -> Response:
    merchant_id = _merchant()
    found = terminals.list_terminals(components().terminals, merchant_id, components().clock.now_ms())
    return json_response(200, {"terminals": found})


@app.route("/openapi.json", methods=["GET"])
@api_handler
def openapi_document() -> Response:
    return json_response(200, openapi.document())


def _iot_message(event: dict[str, Any]) -> tuple[str, bytes, int]:
    """The topic rule's ``SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_at``."""
    received_at = event.get("received_at")
    return (
        str(event["topic"]),
        base64.b64decode(event["payload"]),
        int(received_at) if received_at is not None else time.time_ns() // 1_000_000,
    )


@app.lambda_function(name="terminal_events")
def terminal_events_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    topic, payload, _ = _iot_message(event)
    return {"outcome": terminal_events.handle_event(components().event_deps(), topic, payload)}


@app.lambda_function(name="terminal_status")
def terminal_status_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    topic, payload, received_at = _iot_message(event)
    return {"outcome": terminal_events.handle_status(components().event_deps(), topic, payload, received_at)}

"""Every entry point of the system on one screen: HTTP routes and event handlers.

Each is a few lines: parse the input, call one function in chalicelib/, shape the output.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from chalice import Response
from chalice.app import Request

from chalicelib import openapi
from chalicelib.adapters.exports import start_table_export
from chalicelib.bootstrap import components
from chalicelib.console import ingest, ipn, notifications, queries
from chalicelib.console_ui import pages
from chalicelib.event_sources import BatchResult, new_image, sqs_batch, stream_batch
from chalicelib.http import (
    ANY_CONTENT,
    ThreadSafeChalice,
    api_handler,
    document_response,
    json_response,
    note_order_id,
    raw_body,
    read_json_body,
)
from chalicelib.payments import orders, terminal_events, terminals
from chalicelib.payments import service as payments
from chalicelib.payments.schemas import Health, parse_order_request

app = ThreadSafeChalice(app_name="nepting-cloud-api")


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
    return json_response(200, Health(status="ok"))


@app.route("/v1/connector/order", methods=["POST"], content_types=ANY_CONTENT)
@api_handler
def send_order() -> Response:
    merchant_id = _merchant()
    raw = read_json_body(_request())
    request = parse_order_request(raw)
    note_order_id(request.order.order_id)
    prefer = (_request().headers.get("prefer") or "").lower()
    reply = payments.request_payment(
        components().payment_deps(), merchant_id, request, raw, respond_async="respond-async" in prefer
    )
    return json_response(reply.status, reply.response, reply.headers)


@app.route("/v1/connector/order/{order_id}", methods=["GET"])
@api_handler
def get_order(order_id: str) -> Response:
    merchant_id = _merchant()
    return json_response(200, payments.order_status(components().payment_deps(), merchant_id, order_id))


@app.route("/v1/connector/orders", methods=["GET"])
@api_handler
def list_orders() -> Response:
    merchant_id = _merchant()
    params = {key: str(value) for key, value in (_request().query_params or {}).items()}
    settings, now_ms = components().settings, components().clock.now_ms()
    longest = max(settings.payment_deadline_ms, settings.async_payment_deadline_ms)
    return json_response(200, orders.list_orders(components().payments, merchant_id, params, now_ms, longest))


@app.route("/v1/terminals", methods=["GET"])
@api_handler
def list_terminals() -> Response:
    merchant_id = _merchant()
    found = terminals.list_terminals(components().terminals, merchant_id, components().clock.now_ms())
    return json_response(200, found)


@app.route("/openapi.json", methods=["GET"])
@api_handler
def openapi_document() -> Response:
    return document_response(200, openapi.document())


# --- Pages: the Console and the API reference, static files calling the JSON API above ---


@app.route("/", methods=["GET"])
@api_handler
def home() -> Response:
    return pages.redirect("console")


@app.route("/console", methods=["GET"])
@api_handler
def console_page() -> Response:
    return pages.page("console", _request().headers.get("if-none-match"))


@app.route("/console/{name}", methods=["GET"])
@api_handler
def console_asset(name: str) -> Response:
    return pages.asset("console", name, _request().headers.get("if-none-match"))


@app.route("/docs", methods=["GET"])
@api_handler
def docs_page() -> Response:
    return pages.page("docs", _request().headers.get("if-none-match"))


@app.route("/docs/{name}", methods=["GET"])
@api_handler
def docs_asset(name: str) -> Response:
    return pages.asset("docs", name, _request().headers.get("if-none-match"))


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


# --- Console side (CONTRACT §3-§5): IPN, transactions, merchant notifications, finance export ---


@app.route("/v1/ipn/nepting", methods=["POST"], content_types=ANY_CONTENT)
@api_handler
def receive_ipn() -> Response:
    request = _request()
    return json_response(200, ipn.receive_ipn(components().ipn_deps(), request.headers, raw_body(request)))


@app.route("/v1/transactions", methods=["GET"])
@api_handler
def list_transactions() -> Response:
    merchant_id = _merchant()
    params = {key: str(value) for key, value in (_request().query_params or {}).items()}
    return json_response(200, queries.list_transactions(components().transactions, merchant_id, params))


@app.route("/v1/transactions/{transaction_reference}", methods=["GET"])
@api_handler
def get_transaction(transaction_reference: str) -> Response:
    merchant_id = _merchant()
    return json_response(200, queries.get_transaction(components().transactions, merchant_id, transaction_reference))


@app.lambda_function(name="order_notifications")
def order_notifications_handler(event: dict[str, Any], context: Any) -> BatchResult:
    deps = components().ingest_deps()
    return stream_batch(event, lambda record: ingest.order_head_changed(deps, new_image(record)), "order_notifications")


@app.lambda_function(name="ipn_ingest")
def ipn_ingest_handler(event: dict[str, Any], context: Any) -> BatchResult:
    deps = components().ingest_deps()
    return sqs_batch(event, lambda body: ingest.ingest_ipn(deps, body["transaction_reference"]), "ipn_ingest")


@app.lambda_function(name="merchant_notifier")
def merchant_notifier_handler(event: dict[str, Any], context: Any) -> BatchResult:
    deps = components().notifier_deps()
    return sqs_batch(event, lambda body: notifications.deliver(deps, body), "merchant_notifier")


@app.lambda_function(name="finance_export")
def finance_export_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    settings = components().settings
    # The scheduled event's id makes a redelivered schedule start the same export, not a second one.
    arn = start_table_export(
        settings.transactions_table, settings.export_bucket, settings.export_prefix, event.get("id")
    )
    return {"export_arn": arn}

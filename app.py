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
from chalicelib.event_sources import BatchResult, new_image, sqs_batch, stream_batch, text_field
from chalicelib.http import (
    ANY_CONTENT,
    ThreadSafeChalice,
    answer_unserved_methods,
    api_handler,
    document_response,
    json_response,
    note_order_id,
    raw_body,
    read_json_body,
)
from chalicelib.keys import order_key
from chalicelib.observability import count, log_event
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
    request = _request()
    source = ((request.context or {}).get("identity") or {}).get("sourceIp")
    return components().authenticator.merchant_for(request.headers.get("authorization"), source)


def _basket_policy(merchant_id: str) -> str:
    return str((components().merchants.get_merchant(merchant_id) or {}).get("basket_policy") or "lenient")


@app.route("/v1/connector/healthcheck", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def healthcheck() -> Response:
    return json_response(200, Health(status="ok"))


@app.route("/v1/connector/order", methods=["POST"], content_types=ANY_CONTENT)
@api_handler
def send_order() -> Response:
    merchant_id = _merchant()
    loopback = bool(components().settings.notify_allow_loopback_http)
    request = parse_order_request(read_json_body(_request()), lambda: _basket_policy(merchant_id), loopback)
    note_order_id(request.order.order_id)
    prefer = (_request().headers.get("prefer") or "").lower()
    with components().waiting_payments().waiting(merchant_id, order_key(merchant_id, request.order.order_id)):
        reply = payments.request_payment(
            components().payment_deps(),
            merchant_id,
            request,
            request.echo(),
            respond_async="respond-async" in prefer,
            arrived_at_ms=_arrived_at_ms(),
        )
    return json_response(reply.status, reply.response, reply.headers)


def _arrived_at_ms() -> int | None:
    """API Gateway's ``requestTimeEpoch`` (the local server sets it too): deadlines count from there."""
    epoch = (_request().context or {}).get("requestTimeEpoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0 else None


@app.route("/v1/connector/order/{order_id}", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def get_order(order_id: str) -> Response:
    merchant_id = _merchant()
    return json_response(200, payments.order_status(components().payment_deps(), merchant_id, order_id))


@app.route("/v1/connector/orders", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def list_orders() -> Response:
    merchant_id = _merchant()
    params = {key: str(value) for key, value in (_request().query_params or {}).items()}
    settings, now_ms = components().settings, components().clock.now_ms()
    longest = max(settings.payment_deadline_ms, settings.async_payment_deadline_ms)
    return json_response(200, orders.list_orders(components().payments, merchant_id, params, now_ms, longest))


@app.route("/v1/terminals", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def list_terminals() -> Response:
    merchant_id = _merchant()
    found = terminals.list_terminals(components().terminals, merchant_id, components().clock.now_ms())
    return json_response(200, found)


@app.route("/openapi.json", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def openapi_document() -> Response:
    return document_response(200, openapi.document())


# --- Pages: the Console and the API reference, static files calling the JSON API above ---


@app.route("/", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def home() -> Response:
    return pages.redirect("console")


@app.route("/console", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def console_page() -> Response:
    return pages.page("console", _request().headers.get("if-none-match"))


@app.route("/console/{name}", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def console_asset(name: str) -> Response:
    return pages.asset("console", name, _request().headers.get("if-none-match"))


@app.route("/docs", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def docs_page() -> Response:
    return pages.page("docs", _request().headers.get("if-none-match"))


@app.route("/docs/{name}", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def docs_asset(name: str) -> Response:
    return pages.asset("docs", name, _request().headers.get("if-none-match"))


def _iot_message(event: dict[str, Any]) -> tuple[str, bytes, int]:
    """The topic rule's ``SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_at``."""
    received_at = event.get("received_at")
    if not isinstance(event["topic"], str):
        raise TypeError("topic is not a string")
    return (
        event["topic"],
        base64.b64decode(event["payload"], validate=True),
        int(received_at) if received_at is not None else time.time_ns() // 1_000_000,
    )


def _unreadable_event() -> dict[str, str]:
    count("EventsRefused", reason="bad_event")
    log_event("topic rule event refused", level="warning", reason="bad_event")
    return {"outcome": "refused:bad_event"}


@app.lambda_function(name="terminal_events")
def terminal_events_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    try:
        topic, payload, _ = _iot_message(event)
    except (AttributeError, KeyError, TypeError, ValueError):
        return _unreadable_event()
    return {"outcome": terminal_events.handle_event(components().event_deps(), topic, payload)}


@app.lambda_function(name="terminal_status")
def terminal_status_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    # Two topic rules feed presence: the broker's lifecycle events (the authority) and the terminals'
    # own status messages.
    if isinstance(event, dict) and "eventType" in event:
        return {"outcome": terminal_events.handle_presence(components().event_deps(), event)}
    try:
        topic, payload, received_at = _iot_message(event)
    except (AttributeError, KeyError, TypeError, ValueError):
        return _unreadable_event()
    return {"outcome": terminal_events.handle_status(components().event_deps(), topic, payload, received_at)}


# --- Console side: IPN, transactions, merchant notifications, finance export (docs/ipn.md and the next) ---


@app.route("/v1/ipn/nepting", methods=["POST"], content_types=ANY_CONTENT)
@api_handler
def receive_ipn() -> Response:
    request = _request()
    return json_response(200, ipn.receive_ipn(components().ipn_deps(), request.headers, raw_body(request)))


@app.route("/v1/transactions", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def list_transactions() -> Response:
    merchant_id = _merchant()
    params = {key: str(value) for key, value in (_request().query_params or {}).items()}
    return json_response(200, queries.list_transactions(components().transactions, merchant_id, params))


@app.route("/v1/transactions/{transaction_reference}", methods=["GET"], content_types=ANY_CONTENT)
@api_handler
def get_transaction(transaction_reference: str) -> Response:
    merchant_id = _merchant()
    return json_response(200, queries.get_transaction(components().transactions, merchant_id, transaction_reference))


# Last of the routes: every method a route does not serve is a 405 in the contract's format.
answer_unserved_methods(app)


@app.lambda_function(name="order_notifications")
def order_notifications_handler(event: dict[str, Any], context: Any) -> BatchResult:
    deps = components().ingest_deps()
    return stream_batch(event, lambda record: ingest.order_head_changed(deps, new_image(record)), "order_notifications")


@app.lambda_function(name="ipn_ingest")
def ipn_ingest_handler(event: dict[str, Any], context: Any) -> BatchResult:
    deps = components().ingest_deps()
    return sqs_batch(
        event, lambda body: ingest.ingest_ipn(deps, text_field(body, "transaction_reference")), "ipn_ingest"
    )


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

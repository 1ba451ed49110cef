"""The OpenAPI 3.1 description of the HTTP API, generated from the pydantic models that validate
every request and build every response: a route's schema is the model its answer is made of."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from chalicelib.console.domain import STATUS_LABELS
from chalicelib.console.schemas import IpnAccepted, IpnBody, TransactionPage, TransactionView
from chalicelib.errors import ErrorBody
from chalicelib.payments.domain import DispatchState
from chalicelib.payments.orders import IN_FLIGHT_FILTER
from chalicelib.payments.schemas import (
    Health,
    OrderAccepted,
    OrderPage,
    OrderRequest,
    OrderStatus,
    PaymentResponse,
    TerminalList,
)
from chalicelib.wire import REF_TEMPLATE

# What clients send, described as it is validated; what the API answers, described as it is written.
_REQUESTS: list[type[BaseModel]] = [OrderRequest, IpnBody]
_RESPONSES: list[type[BaseModel]] = [
    PaymentResponse,
    OrderAccepted,
    OrderStatus,
    OrderPage,
    TerminalList,
    Health,
    ErrorBody,
    IpnAccepted,
    TransactionView,
    TransactionPage,
]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_ERRORS = {
    code: _json("ErrorBody", text)
    for code, text in {
        "400": "invalid body or parameter",
        "401": "credentials missing or wrong",
        "404": "unknown terminal, order or route",
        "500": "unexpected",
    }.items()
}


_PATHS: dict[str, Any] = {
    "/v1/connector/healthcheck": {
        "get": {"summary": "Service health", "security": [], "responses": {"200": _json("Health", "ok")}}
    },
    "/v1/connector/order": {
        "post": {
            "summary": "Send a payment request to a terminal and wait for its result",
            "parameters": [
                {
                    "name": "Prefer",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "enum": ["respond-async"]},
                }
            ],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("OrderRequest")}}},
            "responses": {
                "200": _json("PaymentResponse", "the terminal answered, or was busy"),
                "202": {
                    **_json("OrderAccepted", "accepted (Prefer: respond-async); the outcome is read at Location"),
                    "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                },
                "403": _json("ErrorBody", "Cloud API service not enabled on the terminal"),
                "409": _json("ErrorBody", "order_id already used for a different payload"),
                "413": _json("ErrorBody", "body too large"),
                "415": _json("ErrorBody", "body not JSON"),
                "502": _json("ErrorBody", "terminal not connected, or dropped"),
                "504": _json("ErrorBody", "terminal.ack_timeout or terminal.result_timeout"),
                **_ERRORS,
            },
        }
    },
    "/v1/connector/order/{order_id}": {
        "get": {
            "summary": "The order's latest attempt",
            "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json("OrderStatus", "the latest attempt"), **_ERRORS},
        }
    },
    "/v1/connector/orders": {
        "get": {
            "summary": "The merchant's orders, latest attempt first, each with its timeline",
            "description": "The state filter applies after the store's page: a page may be short (even empty) "
            "and still carry a next_cursor.",
            "parameters": [
                {
                    "name": "state",
                    "in": "query",
                    "required": False,
                    "description": "in_flight (pending or acknowledged), or one state",
                    "schema": {"type": "string", "enum": [IN_FLIGHT_FILTER, *(state.value for state in DispatchState)]},
                },
                {"name": "terminal_id", "in": "query", "required": False, "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": "next_cursor of the previous page",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {"200": _json("OrderPage", "one page"), **_ERRORS},
        }
    },
    "/v1/terminals": {
        "get": {
            "summary": "The merchant's terminals",
            "responses": {"200": _json("TerminalList", "terminals"), **_ERRORS},
        }
    },
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_ERROR_400 = _json("ErrorBody", "invalid parameter")
_ERROR_401 = _json("ErrorBody", "credentials missing or wrong")

_CONSOLE_PATHS: dict[str, Any] = {
    "/v1/transactions": {
        "get": {
            "summary": "The merchant's Console transactions, newest first",
            "parameters": [
                _query("from", "RFC 3339, inclusive", {"type": "string", "format": "date-time"}),
                _query("to", "RFC 3339, exclusive", {"type": "string", "format": "date-time"}),
                _query(
                    "status",
                    "status code (118) or label (Captured; any case)",
                    {"type": "string", "enum": [*map(str, STATUS_LABELS), *STATUS_LABELS.values()]},
                ),
                _query("terminal_id", "terminal id", {"type": "string"}),
                _query("order_id", "order id", {"type": "string"}),
                _query("limit", "page size", {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}),
                _query("cursor", "next_cursor of the previous page", {"type": "string"}),
            ],
            "responses": {"200": _json("TransactionPage", "one page"), "400": _ERROR_400, "401": _ERROR_401},
        }
    },
    "/v1/transactions/{transaction_reference}": {
        "get": {
            "summary": "One Console transaction",
            "parameters": [
                {"name": "transaction_reference", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": _json("TransactionView", "the transaction"),
                "401": _ERROR_401,
                "404": _json("ErrorBody", "no such transaction for this merchant"),
            },
        }
    },
    "/v1/ipn/nepting": {
        "post": {
            "summary": "IPN from the Nepting payment gateway (HMAC-signed, no Basic auth)",
            "security": [],
            "parameters": [
                {"name": "X-Nepting-Timestamp", "in": "header", "required": True, "schema": {"type": "string"}},
                {"name": "X-Nepting-Signature", "in": "header", "required": True, "schema": {"type": "string"}},
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("IpnBody")}},
            },
            "responses": {
                "200": _json("IpnAccepted", "stored (or already stored)"),
                "400": _json("ErrorBody", "malformed or invalid body"),
                "401": _json("ErrorBody", "signature wrong or timestamp more than 5 minutes away"),
                "422": _json("ErrorBody", "unknown merchant"),
            },
        }
    },
}


class _ExactNumbers(GenerateJsonSchema):
    """pydantic writes a ``Decimal`` bound as a float (``99999999.0``) and a ``Decimal`` default as a
    string (``"0"``); the document says them as the exact numbers they are (and the API's JSON
    writer refuses floats)."""

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        exact: JsonSchemaValue = _exact(super().decimal_schema(schema))
        return exact

    def encode_default(self, dft: Any) -> Any:
        return _exact(dft) if isinstance(dft, Decimal) else super().encode_default(dft)


def _exact(value: Any) -> Any:
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, dict):
        return {key: _exact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exact(item) for item in value]
    return value


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    modes: list[tuple[type[BaseModel], JsonSchemaMode]] = [(model, "validation") for model in _REQUESTS]
    modes += [(model, "serialization") for model in _RESPONSES]
    _, schemas = models_json_schema(modes, ref_template=REF_TEMPLATE, schema_generator=_ExactNumbers)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Nepting Cloud API",
            "version": "1.2.0",
            "description": "Wire-compatible with HiPay's Cloud API for Nepting v1.2, plus order look-up, "
            "asynchronous mode, terminals and transactions.",
        },
        # Relative to where this document is served, which is the API's own base URL (on API
        # Gateway including the stage, locally the local stack's address).
        "servers": [{"url": ".", "description": "this deployment"}],
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
        "security": [{"basic": []}],
        "paths": {**_PATHS, **_CONSOLE_PATHS},
    }

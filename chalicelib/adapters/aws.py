"""boto3 clients, created once per process and reused (warm Lambdas, local threads).

The endpoint comes from boto3's own ``AWS_ENDPOINT_URL`` variables, so moto in server mode and
real AWS are reached by the very same code.
"""

from __future__ import annotations

import os
import threading
from decimal import Decimal
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config

_clients: dict[str, Any] = {}
_lock = threading.Lock()
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def client(service: str, endpoint_url: str | None = None) -> Any:
    key = f"{service}@{endpoint_url or ''}"
    found = _clients.get(key)
    if found is None:
        with _lock:
            found = _clients.get(key)
            if found is None:
                config = Config(
                    max_pool_connections=int(os.environ.get("AWS_MAX_POOL_CONNECTIONS", "50")),
                    retries={"mode": "standard", "max_attempts": 3},
                    connect_timeout=2,
                    read_timeout=5,
                )
                found = boto3.session.Session().client(service, config=config, endpoint_url=endpoint_url)
                _clients[key] = found
    return found


def reset_clients() -> None:
    """Forget the cached clients (tests switch endpoints between moto instances)."""
    with _lock:
        _clients.clear()


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {key: _serializer.serialize(value) for key, value in values.items() if value is not None}


def to_value(value: Any) -> Any:
    return _serializer.serialize(value)


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {key: _plain(_deserializer.deserialize(value)) for key, value in item.items()}


def _plain(value: Any) -> Any:
    """DynamoDB numbers come back as Decimal; integral ones are ints in this codebase."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value

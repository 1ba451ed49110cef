"""One moto per test module instead of one per test: the tables are emptied between tests by
resetting moto's backends and recreating them, which costs milliseconds where a fresh moto and
fresh boto3 clients cost about a second.

Opt in by importing the fixtures into a test module (``aws`` then replaces conftest's):

    from tests.integration.moto_per_module import aws_with_fresh_tables, moto_for_module  # noqa: F401

DynamoDB is linearizable per item; moto in-process is plain Python whose item operations interleave
under threads (a lost conditional write, a read serialized while a write mutates the item). Tests
that drive DynamoDB from several threads therefore use ``linearizable_dynamodb``
(``dynamodb_actions_one_at_a_time``): each DynamoDB action runs whole, under one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib.adapters import aws as aws_adapter
from chalicelib.adapters.dynamodb.tables import create_tables
from chalicelib.config import Settings


@pytest.fixture(scope="module", name="moto_for_module")
def moto_for_module() -> Iterator[None]:
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
            patch.delenv(name, raising=False)
        with mock_aws():
            aws_adapter.reset_clients()
            yield
        aws_adapter.reset_clients()


@pytest.fixture(name="aws")
def aws_with_fresh_tables(moto_for_module: None) -> Settings:
    """Empty moto backends with every table created from the one schema, like conftest's ``aws``."""
    from moto.core.base_backend import BackendDict

    BackendDict.reset()
    settings = Settings()
    create_tables(settings)
    return settings


@pytest.fixture(name="linearizable_dynamodb")
def dynamodb_actions_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each DynamoDB action (condition, write, and the response built from the item) runs whole."""
    from moto.dynamodb.responses import DynamoHandler

    lock = threading.RLock()
    call_action = DynamoHandler.call_action

    def one_at_a_time(self: DynamoHandler) -> Any:
        with lock:
            return call_action(self)

    monkeypatch.setattr(DynamoHandler, "call_action", one_at_a_time)

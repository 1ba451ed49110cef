"""moto for the local stack: one set of in-memory AWS backends, reached two ways.

- In the stack's own process (API, handlers, pollers) through moto's in-process interception:
  about 1.4 ms per DynamoDB call against about 7 ms through HTTP (measured), and the payment path
  makes a dozen of them.
- From outside (``python -m admin``, a terminal-app developer's tools, the finance export) through
  moto in server mode on ``MOTO_PORT``, serving those very backends, with keep-alive and Nagle off.

DynamoDB is linearizable per item; moto's item operations are plain Python and may interleave
under threads (a lost conditional update, or "dictionary changed size during iteration" in a query
racing a write), so they are serialized here: a conditional claim that loses must lose, as on AWS.
"""

from __future__ import annotations

import copy
import functools
import socket
import threading
from collections.abc import Callable
from typing import Any

import moto.dynamodb.models as moto_dynamodb_models
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class MotoPortInUseError(OSError):
    pass


_write_lock = threading.RLock()
_ITEM_OPERATIONS = (
    "put_item",
    "update_item",
    "delete_item",
    "transact_write_items",
    "batch_write_item",
    "get_item",
    "query",
    "scan",
    "transact_get_items",
    "batch_get_item",
)


def serialize_dynamodb() -> None:
    _transact_with_item_rollback()
    _answers_from_copies()
    for name in _ITEM_OPERATIONS:
        original = getattr(DynamoDBBackend, name, None)
        if original is None or getattr(original, "_serialized", False):
            continue

        def make(method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
                with _write_lock:
                    return method(self, *args, **kwargs)

            locked._serialized = True  # type: ignore[attr-defined]
            return locked

        setattr(DynamoDBBackend, name, make(original))


class _TablesNotCopied:
    """moto's ``copy`` module as its transaction sees it: tables are not deep-copied for rollback.

    moto 5 backs up every table a transaction names with ``copy.deepcopy(table)`` -- once per
    item, so twice for a payment's head and dispatch -- which costs time proportional to every
    item ever written, under the lock that serializes all DynamoDB operations: the local stack
    slowed down with each payment made (measured in bench/README.md). The rollback is done per
    item instead, by ``_transact_with_item_rollback``.
    """

    copy = staticmethod(copy.copy)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        return value if isinstance(value, Table) else copy.deepcopy(value, memo)


def _transact_with_item_rollback() -> None:
    original = DynamoDBBackend.transact_write_items
    if getattr(original, "_item_rollback", False):
        return
    moto_dynamodb_models.copy = _TablesNotCopied  # type: ignore[assignment]

    @functools.wraps(original)
    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        with _write_lock:
            saved = _snapshot(self, transact_items)
            try:
                original(self, transact_items)
            except Exception:
                _restore(saved)
                raise

    transact_write_items._item_rollback = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _answers_from_copies() -> None:
    """moto serializes the item a GetItem or an UpdateItem (``ReturnValues``) answers with from the
    live item, after the lock is released; a write to that item meanwhile made it fail with
    "dictionary changed size during iteration" (seen under the benchmark's load, an ack and its result
    updating one dispatch at once, crashing the terminal-event handler). Answer from a private copy
    made under the lock instead."""
    for name in ("get_item", "update_item"):
        original = getattr(DynamoDBBackend, name)
        if getattr(original, "_copies", False):
            continue

        def make(method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def answer_from_copy(self: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
                with _write_lock:
                    return copy.deepcopy(method(self, *args, **kwargs))

            answer_from_copy._copies = True  # type: ignore[attr-defined]
            return answer_from_copy

        setattr(DynamoDBBackend, name, make(original))


_Saved = tuple[list[tuple[Table, DynamoType, DynamoType | None, Any]], list[tuple[Table, int]]]


def _snapshot(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> _Saved:
    """A copy of each item the transaction names (None if absent) and each stream's length."""
    items: list[tuple[Table, DynamoType, DynamoType | None, Any]] = []
    streams: dict[str, tuple[Table, int]] = {}
    for entry in transact_items:
        try:
            _kind, op = next(iter(entry.items()))
            table = backend.tables[op["TableName"]]
            key = op.get("Key") or op["Item"]
            hash_value = DynamoType(key[table.hash_key_attr])
            range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
        except (KeyError, StopIteration, AttributeError, TypeError):
            continue  # moto itself refuses this item before writing anything
        items.append((table, hash_value, range_value, copy.deepcopy(table.get_item(hash_value, range_value))))
        if table.stream_shard is not None and table.name not in streams:
            streams[table.name] = (table, len(table.stream_shard.items))
    return items, list(streams.values())


def _restore(saved: _Saved) -> None:
    items, streams = saved
    for table, hash_value, range_value, item in reversed(items):
        if range_value is None:
            if item is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = item
        elif item is None:
            table.items[hash_value].pop(range_value, None)
        else:
            table.items[hash_value][range_value] = item
    for table, length in streams:
        if table.stream_shard is not None:
            del table.stream_shard.items[length:]


class _KeepAliveHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, *args: object, **kwargs: object) -> None:
        return None


class LocalAws:
    """Start in-process interception, then the server over the same backends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        serialize_dynamodb()
        self._mock = mock_aws()
        app = DomainDispatcherApplication(create_backend_app)
        try:
            self._server: BaseWSGIServer = make_server(
                host, port, app, threaded=True, request_handler=_KeepAliveHandler
            )
        except (OSError, SystemExit) as exc:
            raise MotoPortInUseError(f"moto port {port} is already in use (set MOTO_PORT)") from exc
        self._server.socket.listen(1024)  # a deeper backlog than werkzeug's 128, for load tests
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._server.host}:{self._server.port}"

    def start(self) -> LocalAws:
        self._mock.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._mock.stop()

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

import functools
import socket
import threading
from collections.abc import Callable
from typing import Any

from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend
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

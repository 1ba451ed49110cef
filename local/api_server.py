"""The Chalice app's HTTP routes on a real socket, threaded so that many payments wait at once.

Chalice's own gateway emulation turns HTTP into the Lambda proxy event and back; this server adds
what the local stack needs on top: one shared gateway, keep-alive, Nagle off on every connection,
a deep accept queue, and the contract's 404 for unknown routes (API Gateway is configured to do the
same on AWS). Like API Gateway it never reads a body larger than the limit (the announced size is
checked first), decodes path parameters, reads chunked bodies, answers malformed requests in the
contract's format rather than dropping them, and times out clients that stall.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from chalice.config import Config
from chalice.local import LambdaContext, LambdaEventConverter, LocalGateway, LocalGatewayException

from chalicelib import jsonutil
from chalicelib.errors import ApiError
from chalicelib.http import MAX_BODY_BYTES, log_request
from chalicelib.observability import log_event


class ApiPortInUseError(OSError):
    pass


class _FrontDoorGateway(LocalGateway):
    """Chalice's gateway plus API Gateway's ``requestTimeEpoch``: when the request reached the socket,
    which is what the payment deadlines count from (not when a handler thread got to it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrival = threading.local()
        # Chalice looks these up through its layered config on every request; they never change.
        timeout_s = self._config.lambda_timeout or self.MAX_LAMBDA_EXECUTION_TIME
        self._context_args = (self._config.function_name, self._config.lambda_memory_size, timeout_s * 1000)

    def _generate_lambda_context(self) -> LambdaContext:
        function_name, memory_size, timeout_ms = self._context_args
        return LambdaContext(function_name=function_name, memory_size=memory_size, max_runtime_ms=timeout_ms)

    def _generate_lambda_event(self, method: str, path: str, headers: Any, body: bytes | None) -> Any:
        event = super()._generate_lambda_event(method, path, headers, body)
        arrived = getattr(self.arrival, "ms", None)
        event["requestContext"]["requestTimeEpoch"] = arrived if arrived is not None else time.time_ns() // 1_000_000
        return event


# A client gets this long to send each part of its request; one that stalls is answered 408 and
# its connection closed, instead of holding a thread forever.
READ_TIMEOUT_S = 30.0


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.error = ApiError(status, code, message)


class _DecodedPathParameters(LambdaEventConverter):
    """API Gateway hands path parameters percent-decoded; Chalice's emulation hands them as sent."""

    def create_lambda_event(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        event: dict[str, Any] = super().create_lambda_event(*args, **kwargs)
        parameters = event.get("pathParameters")
        if parameters:
            event["pathParameters"] = {key: unquote(value) for key, value in parameters.items()}
        return event


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer
    timeout = READ_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, headers too long) in the contract's format."""
        error = ApiError(code, "request.malformed", message or "malformed request")
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._send_error(error)

    def _read_body(self) -> bytes | None:
        """The body, read only after its announced size is known to be acceptable."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            return self._read_chunked()
        announced = (self.headers.get("content-length") or "").strip()
        if not announced:
            return None
        if not announced.isascii() or not announced.isdigit() or len(announced) > 12:
            raise _BadRequest(400, "request.malformed", "Content-Length is not a number")
        length = int(announced)
        if length > MAX_BODY_BYTES:
            raise _BadRequest(413, "request.too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise _BadRequest(400, "request.malformed", "the body is shorter than its Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(64).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise _BadRequest(400, "request.malformed", "malformed chunked body") from None
            if size < 0 or len(body) + size > MAX_BODY_BYTES:
                raise _BadRequest(413, "request.too_large", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return bytes(body)
            chunk = self.rfile.read(size)
            if len(chunk) < size or self.rfile.read(2) != b"\r\n":
                raise _BadRequest(400, "request.malformed", "malformed chunked body")
            body += chunk

    def _handle(self) -> None:
        self.server.gateway.arrival.ms = time.time_ns() // 1_000_000
        started = time.perf_counter()
        try:
            body = self._read_body()
        except _BadRequest as refused:
            # What is left of the body is unread: this connection cannot carry another request.
            self.close_connection = True
            self._send_error(refused.error)
            return
        except TimeoutError:
            self.close_connection = True
            self._send_error(ApiError(408, "request.timeout", "the request was not sent in time"))
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        try:
            response = self.server.gateway.handle_request(self.command, self.path, headers, body)
        except LocalGatewayException:
            path = self.path.split("?")[0]
            error = ApiError(404, "route.not_found", f"No route {self.command} {path}")
            self._send_error(error)
            # The routes log their own request line; this one never reached a route.
            log_request(self.command, path, 404, error.code, started)
            return
        out_headers = dict(response.get("headers") or {})
        out_headers.update(response.get("multiValueHeaders") or {})
        payload = response.get("body")
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        self._send(response["statusCode"], out_headers, payload or b"")

    def _send_error(self, error: ApiError) -> None:
        self._send(
            error.status, {"Content-Type": "application/json", **error.headers}, jsonutil.dumps(error.body()).encode()
        )

    def _send(self, status: int, headers: dict[str, Any], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() in ("content-length", "connection"):
                continue
            for item in value if isinstance(value, list) else [value]:
                # http.server writes headers as Latin-1; anything else would drop the connection.
                self.send_header(name, str(item).encode("latin-1", "replace").decode("latin-1"))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        # Head and body leave in one write: one system call, one segment for a small answer.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    def __getattr__(self, name: str) -> Any:
        # http.server looks up do_<METHOD>; a method no route can serve (TRACE, QUERY, …) is the
        # contract's 405 on a known route, 404 elsewhere, not http.server's own 501.
        if name.startswith("do_"):
            return self._unserved_method
        raise AttributeError(name)

    def _unserved_method(self) -> None:
        self.close_connection = True
        try:
            matched = self.server.gateway.event_converter._route_matcher.match_route(self.path)
        except ValueError:
            self._send_error(ApiError(404, "route.not_found", f"No route {self.command} {self.path.split('?')[0]}"))
            return
        entries = self.server.app.routes.get(matched.route, {})
        allow = ", ".join(sorted(m for m, e in entries.items() if not e.view_name.startswith("method_not_allowed")))
        error = ApiError(405, "request.method_not_allowed", f"this route serves {allow}", headers={"Allow": allow})
        self._send_error(error)


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.gateway = _FrontDoorGateway(app, Config.create(chalice_stage="local", lambda_timeout=900))
        self.gateway.event_converter = _DecodedPathParameters(
            self.gateway.event_converter._route_matcher, self.gateway.event_converter._binary_types
        )
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            if exc.errno in (98, 48):  # EADDRINUSE on Linux, macOS
                raise ApiPortInUseError(f"API port {port} is already in use (set API_PORT)") from None
            raise
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One JSON line instead of socketserver's traceback on stderr.

        A client that hangs up before its answer is written (an ECR that gave up on a payment) is
        an expected event: the payment goes on and its result stays readable; nothing is retried.
        """
        exc = sys.exc_info()[1]
        address = client_address[0] if isinstance(client_address, tuple) and client_address else str(client_address)
        if isinstance(exc, ConnectionError):
            log_event("client_disconnected", reason=type(exc).__name__, client=address)
            return
        log_event("api_server_error", level="exception", client=address)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="api-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

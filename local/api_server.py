"""The Chalice app's HTTP routes on a real socket, threaded so that many payments wait at once.

Chalice's own gateway emulation turns HTTP into the Lambda proxy event and back; this server adds
what the local stack needs on top: one shared gateway, keep-alive, Nagle off on every connection,
a deep accept queue, and the contract's 404 for unknown routes (API Gateway is configured to do the
same on AWS).
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chalice.config import Config
from chalice.local import LocalGateway, LocalGatewayException

from chalicelib import jsonutil
from chalicelib.errors import ApiError
from chalicelib.http import log_request


class ApiPortInUseError(OSError):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _handle(self) -> None:
        started = time.perf_counter()
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else None
        headers = {key.lower(): value for key, value in self.headers.items()}
        try:
            response = self.server.gateway.handle_request(self.command, self.path, headers, body)
        except LocalGatewayException:
            path = self.path.split("?")[0]
            error = ApiError(404, "route.not_found", f"No route {self.command} {path}")
            self._send(404, {"Content-Type": "application/json"}, jsonutil.dumps(error.body()).encode())
            # The routes log their own request line; this one never reached a route.
            log_request(self.command, path, 404, error.code, started)
            return
        out_headers = dict(response.get("headers") or {})
        out_headers.update(response.get("multiValueHeaders") or {})
        payload = response.get("body")
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        self._send(response["statusCode"], out_headers, payload or b"")

    def _send(self, status: int, headers: dict[str, Any], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() in ("content-length", "connection"):
                continue
            for item in value if isinstance(value, list) else [value]:
                self.send_header(name, str(item))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.gateway = LocalGateway(app, Config.create(chalice_stage="local", lambda_timeout=900))
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="api-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

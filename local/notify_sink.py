"""A merchant's notification endpoint for tests and ``make run``: records every POST it gets.

with NotificationSink() as sink:          # 127.0.0.1, a free port
    sink.status = 500                     # answer 500 until told otherwise
    ...
    sink.status = 200
    assert sink.wait_for(1, timeout_s=5)
    sink.received[0].form["status"]       # '118'
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qsl


@dataclass(frozen=True)
class ReceivedNotification:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    @property
    def signature(self) -> str | None:
        return self.headers.get("x-allopass-signature")


class NotificationSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.status = 200
        self.received: list[ReceivedNotification] = []
        self.attempts = 0
        self._changed = threading.Condition()
        sink = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                answered = sink.status
                with sink._changed:
                    sink.attempts += 1
                    if 200 <= answered < 300:
                        # Only acknowledged deliveries count as received, as the merchant sees it.
                        sink.received.append(
                            ReceivedNotification(
                                self.path, {k.lower(): v for k, v in self.headers.items()}, body, answered
                            )
                        )
                    sink._changed.notify_all()
                self.send_response(answered)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="notify-sink", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/notify"

    def start(self) -> NotificationSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int, timeout_s: float = 10.0, attempts: bool = False) -> bool:
        """Wait until ``count`` notifications were acknowledged (or attempted, with ``attempts``)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: (self.attempts if attempts else len(self.received)) >= count, timeout=timeout_s
            )

    def __enter__(self) -> NotificationSink:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

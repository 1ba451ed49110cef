"""The simulated payment gateway of the local stack: after each result the cloud records, its IPN is
posted to the API by the gateway's own workers; a result it cannot read is reported, and the
workers go on."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from chalicelib.payments.domain import Dispatch, DispatchState
from local.gateway import observing_results
from tests.contract.builders import head_and_dispatch


class Received:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrived = threading.Condition()


@pytest.fixture
def api() -> Iterator[tuple[str, Received]]:
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            with received.arrived:
                received.bodies.append(body)
                received.arrived.notify_all()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


class Payments:
    """Dispatches by request id; a request id in ``broken`` fails its read once."""

    def __init__(self, dispatches: list[Dispatch], broken: set[str]) -> None:
        self.dispatches = {d.request_id: d for d in dispatches}
        self.broken = broken
        self.reader_threads: list[str] = []

    def get_dispatch(self, request_id: str) -> Dispatch | None:
        self.reader_threads.append(threading.current_thread().name)
        if request_id in self.broken:
            self.broken.discard(request_id)
            raise OSError("disk I/O error")
        return self.dispatches.get(request_id)


def succeeded(request_id: str, reference: str) -> Dispatch:
    _, dispatch = head_and_dispatch(request_id, order_id=f"O-{request_id}")
    result = {"payment_status": "Success", "transaction_reference": reference, "masked_pan": "497010******0014"}
    return replace(dispatch, state=DispatchState.SUCCEEDED, result=result)


def result_event(request_id: str) -> dict[str, Any]:
    envelope = {"type": "result", "request_id": request_id}
    return {"payload": base64.b64encode(json.dumps(envelope).encode()).decode()}


def test_the_gateway_posts_each_recorded_result_from_its_own_workers_and_outlives_a_failed_read(
    api: tuple[str, Received], caplog: pytest.LogCaptureFixture
) -> None:
    url, received = api
    stop = threading.Event()
    stack = SimpleNamespace(seed=SimpleNamespace(ipn_secret="s"), stop_event=stop, api_url=url)
    payments = Payments([succeeded("r-1", "T-1"), succeeded("r-2", "T-2")], broken={"r-1"})
    outcomes = iter(["succeeded", "succeeded", "ignored:already_final"])

    def events_handler(event: dict[str, Any], context: Any) -> dict[str, str]:
        return {"outcome": next(outcomes)}

    handler = observing_results(stack, events_handler, payments)  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.ERROR, logger="local.gateway"):
            for request_id in ("r-1", "r-2", "r-2"):  # the third is not a recorded result: no IPN
                handler(result_event(request_id), None)
            with received.arrived:
                assert received.arrived.wait_for(lambda: len(received.bodies) >= 1, 10)
    finally:
        stop.set()
    assert [body["transaction_reference"] for body in received.bodies] == ["T-2"]
    assert "IPN not built" in caplog.text
    # The reads happened in the gateway's threads, not in the caller's (the topic rule's lane).
    assert payments.reader_threads and all(name.startswith("gateway-ipn-") for name in payments.reader_threads)

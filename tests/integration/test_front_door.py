"""The local API server records when each request arrived as API Gateway's ``requestTimeEpoch``, and
the payment route hands it to the service: deadlines count from the front door."""

from __future__ import annotations

import json
import time
import urllib.request

from chalice import Chalice

import app as app_module
from local.api_server import ApiServer


def test_local_server_sets_request_time_epoch_at_arrival() -> None:
    probe = Chalice(app_name="front-door-probe")

    @probe.route("/when")
    def when() -> dict[str, object]:
        request = probe.current_request
        assert request is not None
        time.sleep(0.2)  # the handler starts late: the epoch must not move with it
        return {"epoch": request.context.get("requestTimeEpoch"), "handled": time.time_ns() // 1_000_000}

    server = ApiServer(probe, "127.0.0.1", 0)
    server.start()
    try:
        before = time.time_ns() // 1_000_000
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/when", timeout=10) as response:
            body = json.loads(response.read())
    finally:
        server.stop()
    assert isinstance(body["epoch"], int)
    assert before <= body["epoch"] <= body["handled"] - 200


def test_payment_route_reads_the_epoch_and_refuses_garbage() -> None:
    class Request:
        def __init__(self, context: dict[str, object]) -> None:
            self.context = context

    for context, expected in (
        ({"requestTimeEpoch": 1_795_000_000_123}, 1_795_000_000_123),
        ({"requestTimeEpoch": "1795000000123"}, None),
        ({"requestTimeEpoch": True}, None),
        ({}, None),
    ):
        app_module.app.current_request = Request(context)  # type: ignore[assignment]
        try:
            assert app_module._arrived_at_ms() == expected
        finally:
            app_module.app.current_request = None  # type: ignore[assignment]

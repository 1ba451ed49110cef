"""The local API server records when each request arrived as API Gateway's ``requestTimeEpoch``, and
the payment route hands it to the service: deadlines count from the front door."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.request

import pytest
from chalice import Chalice

import app as app_module
from local.api_server import ApiServer
from tests.logs import captured_logs


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


def test_a_client_hanging_up_before_its_answer_is_one_log_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    probe = Chalice(app_name="front-door-hangup")
    answered = threading.Event()

    @probe.route("/slow")
    def slow() -> dict[str, object]:
        time.sleep(0.3)  # the client is gone by now
        answered.set()
        return {"padding": "x" * 2_000_000}  # more than the socket buffers: the write fails

    server = ApiServer(probe, "127.0.0.1", 0)
    server.start()
    try:
        with captured_logs() as logged:
            client = socket.create_connection(("127.0.0.1", server.port))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
            client.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            client.close()
            assert answered.wait(5)
            deadline = time.monotonic() + 5
            while not logged.lines("client_disconnected") and time.monotonic() < deadline:
                time.sleep(0.02)
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/slow", timeout=10) as response:
                assert response.status == 200  # the server still serves
    finally:
        server.stop()
    assert "Traceback" not in capsys.readouterr().err
    assert [line["reason"] for line in logged.lines("client_disconnected")] in (
        ["BrokenPipeError"],
        ["ConnectionResetError"],
    )
    assert logged.lines("api_server_error") == []

"""X-Ray subsegments with the payment's order_id and request_id, sent to the daemon only when traced."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from chalicelib.observability import traced

ROOT = "1-6740a2b0-4f1c2d3e4f5a6b7c8d9e0f1a"
PARENT = "53995c3f42cd8ad8"


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    host, port = sock.getsockname()
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", f"{host}:{port}")
    yield sock
    sock.close()


def test_a_sampled_invocation_sends_one_subsegment_with_the_annotations(
    daemon: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("_X_AMZN_TRACE_ID", f"Root={ROOT};Parent={PARENT};Sampled=1")
    with traced("payment wait", order_id="ORDER-1", request_id="r-42"):
        pass
    header, body = daemon.recv(65_536).decode().split("\n", 1)
    assert json.loads(header) == {"format": "json", "version": 1}
    document = json.loads(body)
    assert document["type"] == "subsegment" and document["name"] == "payment wait"
    assert (document["trace_id"], document["parent_id"]) == (ROOT, PARENT)
    assert document["annotations"] == {"order_id": "ORDER-1", "request_id": "r-42"}
    assert len(document["id"]) == 16
    assert 0 <= document["end_time"] - document["start_time"] < 60


def test_an_unsampled_or_untraced_invocation_sends_nothing(
    daemon: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon.settimeout(0.2)
    for header in (f"Root={ROOT};Parent={PARENT};Sampled=0", None):
        if header is None:
            monkeypatch.delenv("_X_AMZN_TRACE_ID", raising=False)
        else:
            monkeypatch.setenv("_X_AMZN_TRACE_ID", header)
        with traced("payment wait", order_id="ORDER-1", request_id="r-42"):
            pass
    with pytest.raises(TimeoutError):
        daemon.recv(65_536)


def test_an_unreachable_daemon_never_fails_the_traced_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_X_AMZN_TRACE_ID", f"Root={ROOT};Parent={PARENT};Sampled=1")
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", "not-an-address")
    with traced("payment wait", order_id="ORDER-1", request_id="r-42"):
        result = 42
    assert result == 42


def test_a_synchronous_payment_annotates_its_wait_with_its_order_and_dispatch(
    daemon: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chalicelib.payments.schemas import parse_order_request
    from chalicelib.payments.service import request_payment
    from tests.conftest import MERCHANT, World, example

    monkeypatch.setenv("_X_AMZN_TRACE_ID", f"Root={ROOT};Parent={PARENT};Sampled=1")
    world = World()
    world.script(world.ack(), world.result())
    body = example()
    request_payment(world.payment_deps, MERCHANT, parse_order_request(body), body)
    document = json.loads(daemon.recv(65_536).decode().split("\n", 1)[1])
    assert document["annotations"] == {
        "order_id": body["order"]["order_id"],
        "request_id": world.last_request()["request_id"],
    }

"""The local stack's HTTP server on a real socket: every request is answered in the contract's
format (never dropped), no body past the limit is read, stalled clients do not hold it, and every
route answers the methods it does not serve with a 405 listing those it does."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

import app as app_module
from chalicelib import jsonutil
from chalicelib.http import HTTP_METHODS
from local import api_server
from local.api_server import ApiServer


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    monkeypatch.setattr(api_server._Handler, "timeout", 1.0)
    server = ApiServer(app_module.app, "127.0.0.1", 0)
    server.start()
    yield server
    server.stop()


def exchange(server: ApiServer, raw: bytes, *, shut_write: bool = False) -> tuple[int, dict[str, str], Any]:
    """Send ``raw`` as is; the first answer's status, headers and JSON body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(raw)
        if shut_write:
            conn.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, f"connection closed without an answer after {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = conn.recv(65536)
            assert chunk
            rest += chunk
        return int(lines[0].split()[1]), headers, jsonutil.loads(rest[:length]) if length else None


def error_code(answer: tuple[int, dict[str, str], Any]) -> tuple[int, str]:
    status, _, body = answer
    assert body["error"]["status"] == status
    return status, body["error"]["code"]


def test_a_content_length_that_is_not_a_number_is_a_400(server: ApiServer) -> None:
    raw = b"POST /v1/connector/order HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}"
    assert error_code(exchange(server, raw)) == (400, "request.malformed")


def test_a_body_announced_past_the_limit_is_refused_before_it_is_sent(server: ApiServer) -> None:
    # 50 MB announced, none of it sent: the answer comes at once, unauthenticated or not.
    raw = b"POST /v1/connector/order HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n"
    status, headers, body = exchange(server, raw)
    assert (status, body["error"]["code"]) == (413, "request.too_large")
    assert headers["connection"] == "close"


def test_a_chunked_body_is_read(server: ApiServer) -> None:
    raw = (
        b"POST /v1/ipn/nepting HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    # Read, then refused for what it lacks (no signature), not for how it was sent.
    assert error_code(exchange(server, raw)) == (401, "ipn.signature_missing")


def test_a_chunked_body_past_the_limit_is_a_413(server: ApiServer) -> None:
    raw = b"POST /v1/ipn/nepting HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFF\r\n"
    assert error_code(exchange(server, raw)) == (413, "request.too_large")


def test_a_malformed_chunked_body_is_a_400(server: ApiServer) -> None:
    raw = b"POST /v1/ipn/nepting HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    assert error_code(exchange(server, raw)) == (400, "request.malformed")


def test_a_body_shorter_than_announced_is_answered_once_the_client_stops_sending(server: ApiServer) -> None:
    raw = b"POST /v1/ipn/nepting HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}"
    assert error_code(exchange(server, raw, shut_write=True)) == (400, "request.malformed")


def test_a_client_that_stalls_mid_body_is_answered_408(server: ApiServer) -> None:
    raw = b"POST /v1/ipn/nepting HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}"
    assert error_code(exchange(server, raw)) == (408, "request.timeout")


def test_a_malformed_request_line_is_answered_in_the_contracts_format(server: ApiServer) -> None:
    assert error_code(exchange(server, b"GET /v1/terminals HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n"))[0] == 431


def test_a_method_no_route_serves_is_a_405_on_a_route_and_a_404_elsewhere(server: ApiServer) -> None:
    status, headers, body = exchange(server, b"QUERY /v1/terminals HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body["error"]["code"], headers["allow"]) == (405, "request.method_not_allowed", "GET")
    assert error_code(exchange(server, b"TRACE /nothing HTTP/1.1\r\nHost: x\r\n\r\n")) == (404, "route.not_found")


@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("/v1/connector/order", "POST"),
        ("/v1/connector/order/A1", "GET"),
        ("/v1/connector/healthcheck", "GET"),
        ("/v1/terminals", "GET"),
        ("/v1/transactions", "GET"),
        ("/v1/transactions/T1", "GET"),
        ("/v1/ipn/nepting", "POST"),
        ("/openapi.json", "GET"),
    ],
)
def test_every_route_answers_a_method_it_does_not_serve_with_a_405_and_allow(
    server: ApiServer, path: str, served: str
) -> None:
    for method in HTTP_METHODS:
        if method in (served, "HEAD"):
            continue
        raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
        status, headers, body = exchange(server, raw)
        assert (status, body["error"]["code"]) == (405, "request.method_not_allowed"), method
        assert headers["allow"] == served


def test_a_get_route_with_a_body_of_another_type_answers_in_the_contracts_format(server: ApiServer) -> None:
    raw = b"GET /v1/connector/healthcheck HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"
    status, _, body = exchange(server, raw)
    assert (status, body) == (200, {"status": "ok"})


def test_a_non_json_order_body_is_a_415_in_the_contracts_format(server: ApiServer) -> None:
    raw = b"POST /v1/ipn/nepting HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}"
    # The IPN route verifies its signature first; the payment route authenticates first: both answer
    # in the contract's format whatever the media type.
    assert error_code(exchange(server, raw))[0] == 401

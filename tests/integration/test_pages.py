"""The pages the API serves (``/``, ``/console``, ``/docs``), the orders listing route, and the one
``request`` log line each HTTP request leaves, through Chalice's own test client."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

import app as app_module
from chalicelib import bootstrap
from chalicelib.config import Settings
from chalicelib.merchants import enrollment
from tests.integration.moto_per_module import aws_with_fresh_tables, moto_for_module  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
LOGIN, PASSWORD = "pages-shop", "pages-shop-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()}


@pytest.fixture
def client(aws: Settings) -> Iterator[Client]:
    components = bootstrap.build(aws)
    enrollment.create_merchant(components.merchants, "M1", LOGIN, PASSWORD)
    bootstrap.install(components)
    try:
        with Client(app_module.app, project_dir=str(ROOT)) as test_client:
            yield test_client
    finally:
        bootstrap.install(None)


@pytest.fixture
def request_lines(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []

    def record(message: str, level: str = "info", **fields: Any) -> None:
        if message == "request":
            lines.append({"level": level, **fields})

    monkeypatch.setattr("chalicelib.http.log_event", record)
    return lines


@pytest.mark.parametrize(("path", "title"), [("/console", "Console"), ("/docs", "API reference")])
def test_each_page_is_html_from_this_origin_only(client: Client, path: str, title: str) -> None:
    response = client.http.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    body = response.body.decode()
    assert f"<title>{title}" in body
    assert "http://" not in body and "https://" not in body  # every asset is relative: no CDN
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
        ("/docs/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        ("/docs/swagger-ui.css", "text/css; charset=utf-8"),
        ("/docs/swagger-ui-LICENSE.txt", "text/plain; charset=utf-8"),
    ],
)
def test_assets_are_served_with_their_type_and_revalidated_by_etag(
    client: Client, path: str, content_type: str
) -> None:
    response = client.http.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    again = client.http.get(path, headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304 and again.body == b""


def test_the_vendored_bundle_is_served_as_upstream_wrote_it_and_its_archive_is_not(client: Client) -> None:
    response = client.http.get("/docs/swagger-ui-bundle.js")
    assert response.status_code == 200
    # swagger-ui-dist 5.35.0's swagger-ui-bundle.js, byte for byte (kept gzipped in the package)
    assert hashlib.sha256(response.body).hexdigest() == (
        "e6a898692f2d768e807c3ba4626068a69a2c5dd960dd6c76f3e4d3a3de180af2"
    )
    assert client.http.get("/docs/swagger-ui-bundle.js.gz").status_code == 404


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..%2Fpages.py", "%2E%2E"])
def test_only_listed_files_are_served(client: Client, name: str) -> None:
    response = client.http.get(f"/console/{name}")
    assert response.status_code == 404
    assert response.json_body["error"]["code"] == "route.not_found"


def test_the_root_sends_the_browser_to_the_console_relatively(client: Client) -> None:
    response = client.http.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "console"  # stays under API Gateway's stage prefix


def test_every_request_leaves_one_line_with_status_code_duration_and_order(
    client: Client, request_lines: list[dict[str, Any]]
) -> None:
    client.http.get("/v1/connector/order/ORDER-9", headers=AUTH)
    client.http.get("/v1/terminals")
    client.http.get("/console")

    assert [(line["method"], line["path"], line["status"], line.get("code")) for line in request_lines] == [
        ("GET", "/v1/connector/order/ORDER-9", 404, "order.not_found"),
        ("GET", "/v1/terminals", 401, "auth.unauthorized"),
        ("GET", "/console", 200, None),
    ]
    assert request_lines[0]["order_id"] == "ORDER-9"
    assert all(isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0 for line in request_lines)
    assert {line["level"] for line in request_lines} == {"info"}


def test_a_posted_orders_id_is_named_in_its_request_line(client: Client, request_lines: list[dict[str, Any]]) -> None:
    body = (
        '{"order":{"order_id":"POSTED-1","price":{"amount":100,"currency":"EUR"}},"pos_technical_info":'
        '{"device_information":{"serial_number":"404","manufacturer":"PAX"},'
        '"terminal_transaction_display":{"protocol":"AppNepting"}}}'
    )
    response = client.http.post("/v1/connector/order", headers={**AUTH, "Content-Type": "application/json"}, body=body)
    assert response.status_code == 404
    (line,) = request_lines
    assert (line["status"], line["code"], line["order_id"]) == (404, "terminal.not_found", "POSTED-1")


def test_a_scripts_401_carries_no_basic_challenge_but_other_clients_get_it(client: Client) -> None:
    plain = client.http.get("/v1/terminals")
    scripted = client.http.get("/v1/terminals", headers={"X-Requested-With": "XMLHttpRequest"})
    assert plain.status_code == scripted.status_code == 401
    assert plain.headers["WWW-Authenticate"].startswith("Basic")
    assert "WWW-Authenticate" not in scripted.headers
    assert scripted.json_body == plain.json_body


def test_the_orders_route_lists_the_callers_orders(client: Client) -> None:
    response = client.http.get("/v1/connector/orders?state=in_flight&limit=5", headers=AUTH)
    assert response.status_code == 200
    assert response.json_body == {"orders": [], "next_cursor": None}
    refused = client.http.get("/v1/connector/orders?state=paid", headers=AUTH)
    assert refused.status_code == 400 and refused.json_body["error"]["code"] == "validation.state_unknown"
    assert client.http.get("/v1/connector/orders").status_code == 401

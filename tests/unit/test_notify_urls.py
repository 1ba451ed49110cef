"""Merchant notifications go to public https addresses only (docs/merchant-notifications.md): refused when given, and
checked again when sending, with the connection pinned to the address that was checked."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from chalicelib.adapters.http_notifier import UrllibFormPoster
from chalicelib.config import Settings
from chalicelib.console import notifications
from chalicelib.console.domain import Transaction
from chalicelib.errors import ApiError
from chalicelib.exceptions import EnrollmentError
from chalicelib.merchants import enrollment
from chalicelib.notify_urls import NotifyUrlRefused, Unresolvable, pinned_target, refusal_when_given
from chalicelib.observability import METRIC_COUNTS
from chalicelib.payments.schemas import parse_order_request
from tests.conftest import example
from tests.fakes import FakeClock

PUBLIC = "93.184.215.14"


def resolver(table: dict[str, list[str]]) -> Any:
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise Unresolvable(host)
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/n", "loopback_address"),
        ("https://[::1]/n", "loopback_address"),
        ("https://10.0.0.7/n", "private_address"),
        ("https://172.16.3.4/n", "private_address"),
        ("https://192.168.1.1:8443/n", "private_address"),
        ("https://169.254.169.254/latest/meta-data/", "link_local_address"),
        ("https://[fd00:ec2::254]/n", "private_address"),
        ("https://[::ffff:127.0.0.1]/n", "loopback_address"),
        ("https://[::ffff:10.1.2.3]/n", "private_address"),
        ("https://100.64.0.1/n", "reserved_address"),
        ("https://224.0.0.1/n", "multicast_address"),
        ("https://0.0.0.0/n", "private_address"),
        ("https://240.0.0.1/n", "private_address"),
        ("http://93.184.215.14/n", "not_https"),
        ("ftp://93.184.215.14/n", "not_https"),
        ("https:///n", "malformed_url"),
        ("https://host:99999/n", "malformed_url"),
    ],
)
def test_a_refused_address_or_scheme_is_refused_when_given(url: str, reason: str) -> None:
    assert refusal_when_given(url, resolve=resolver({"host": [PUBLIC]})) == reason


def test_a_name_that_resolves_only_to_refused_addresses_is_refused() -> None:
    resolve = resolver({"internal.example": ["10.0.0.1", "169.254.169.254"]})
    assert refusal_when_given("https://internal.example/n", resolve=resolve) == "private_address"


def test_a_name_with_a_public_address_is_accepted_and_pinned_to_it() -> None:
    resolve = resolver({"shop.example": ["10.0.0.1", PUBLIC]})
    assert refusal_when_given("https://shop.example/n", resolve=resolve) is None
    assert pinned_target("https://shop.example:8443/n?t=1", resolve=resolve) == ("https", "shop.example", 8443, PUBLIC)


def test_a_name_that_does_not_resolve_now_is_accepted_then_checked_when_sending() -> None:
    resolve = resolver({})
    assert refusal_when_given("https://later.example/n", resolve=resolve) is None
    with pytest.raises(Unresolvable):
        pinned_target("https://later.example/n", resolve=resolve)


def test_http_to_loopback_only_with_the_local_setting() -> None:
    resolve = resolver({"localhost": ["127.0.0.1"], "shop.example": [PUBLIC]})
    assert refusal_when_given("http://127.0.0.1:9000/n", resolve=resolve) == "not_https"
    assert refusal_when_given("http://127.0.0.1:9000/n", allow_loopback_http=True, resolve=resolve) is None
    assert refusal_when_given("http://localhost/n", allow_loopback_http=True, resolve=resolve) is None
    assert refusal_when_given("http://shop.example/n", True, resolve) == "http_outside_loopback"
    assert refusal_when_given("http://10.0.0.1/n", True, resolve) == "private_address"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://169.254.169.254/latest", "url_https"),  # an IP literal is never a merchant's server
        ("https://localhost/notify", "notify_url_refused"),  # a name resolving to loopback only
        ("http://shop.example/notify", "url_https"),
    ],
)
def test_an_order_with_a_refused_notify_url_is_a_400_naming_the_field(url: str, code: str) -> None:
    body = example("order-full.json")
    body["pos_technical_info"]["notify_url"] = url
    with pytest.raises(ApiError) as caught:
        parse_order_request(body)
    assert (caught.value.status, caught.value.code) == (400, f"validation.{code}")
    assert caught.value.path == "pos_technical_info.notify_url"


class MemoryMerchants:
    def __init__(self) -> None:
        self.merchants: dict[str, Any] = {}

    def get_merchant(self, merchant_id: str) -> dict[str, Any] | None:
        return self.merchants.get(merchant_id)

    def get_login(self, login: str) -> dict[str, Any] | None:
        return None

    def put_merchant(self, merchant_id: str, notify_url: str | None, passphrase: str, basket_policy: str = "") -> None:
        self.merchants[merchant_id] = {"notify_url": notify_url, "notify_passphrase": passphrase}

    def put_login(self, login: str, merchant_id: str, password_hash: str) -> None:
        return None


def test_a_merchant_default_url_in_a_refused_range_is_refused_at_enrollment() -> None:
    merchants = MemoryMerchants()
    with pytest.raises(EnrollmentError, match="private_address"):
        enrollment.create_merchant(merchants, "M1", "shop", "a-long-password", notify_url="https://10.9.8.7/n")
    assert merchants.merchants == {}


# -- sending -------------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.seen = []  # type: ignore[attr-defined]
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_connection_goes_to_the_checked_address_with_the_urls_host(receiver: HTTPServer) -> None:
    port = receiver.server_address[1]
    resolve = resolver({"merchant.test": ["127.0.0.1"]})
    poster = UrllibFormPoster(2, allow_loopback_http=True, resolve=resolve)
    assert poster.post(f"http://merchant.test:{port}/notify?token=t", b"a=1", {}) == 200
    assert receiver.seen == [("/notify?token=t", f"merchant.test:{port}")]  # type: ignore[attr-defined]
    assert resolve.calls == ["merchant.test"], "one lookup: the address checked is the address used"


def test_a_redirect_is_an_answer_not_followed(receiver: HTTPServer) -> None:
    receiver.status = 302  # type: ignore[attr-defined]
    poster = UrllibFormPoster(2, allow_loopback_http=True)
    assert poster.post(f"http://127.0.0.1:{receiver.server_address[1]}/n", b"a=1", {}) == 302
    assert len(receiver.seen) == 1  # type: ignore[attr-defined]


def test_a_name_that_now_resolves_to_a_refused_address_is_refused_when_sending(receiver: HTTPServer) -> None:
    resolve = resolver({"rebound.example": ["127.0.0.1"]})
    with pytest.raises(NotifyUrlRefused) as caught:
        UrllibFormPoster(2, resolve=resolve).post("https://rebound.example/n", b"a=1", {})
    assert caught.value.reason == "loopback_address"
    assert receiver.seen == []  # type: ignore[attr-defined]


def test_a_name_without_an_address_now_is_a_failed_try_retried_later() -> None:
    assert UrllibFormPoster(2, resolve=resolver({})).post("https://later.example/n", b"a=1", {}) == 0


class RefusingPoster:
    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        raise NotifyUrlRefused("private_address")


class OneTransaction:
    def __init__(self, tx: Transaction) -> None:
        self.tx = tx

    def get(self, reference: str) -> Transaction | None:
        return self.tx if reference == self.tx.transaction_reference else None


class Queue:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None:
        self.sent.append(body)


def test_a_notification_found_refused_when_sending_is_parked_with_its_reason() -> None:
    tx = Transaction(
        "TX-1", "M1", "O1", "PAX-1", "Debit", "approved", 118, "Captured", 899, "EUR",
        "2026-11-28T03:12:00.123Z", "2026-11-28T03:12:00.123Z", notify_url="https://shop.example/n",
    )  # fmt: skip
    merchants = MemoryMerchants()
    merchants.put_merchant("M1", None, "passphrase")
    retries, parked = Queue(), Queue()
    deps = notifications.NotifierDeps(
        OneTransaction(tx),  # type: ignore[arg-type]
        merchants,
        retries,
        parked,
        RefusingPoster(),
        FakeClock(),
        Settings(),
    )
    refused = METRIC_COUNTS["NotificationsRefused.reason=private_address"]
    assert notifications.deliver(deps, {"transaction_reference": "TX-1", "status_code": 118}) == "parked"
    assert parked.sent[0]["parked_reason"] == "notify_url_refused_private_address"
    assert retries.sent == []
    assert METRIC_COUNTS["NotificationsRefused.reason=private_address"] == refused + 1

"""The Console and the API reference in a real browser: Debian's Chromium driven by Playwright,
against the local stack on free ports.

A payment made through the API shows in flight, then succeeded, while its terminal goes busy then
free; its transaction opens with the order's details; the filters narrow the list and the CSV holds
what they show. Each page is kept as a screenshot under build/screenshots/ (paths printed).

Chromium is Debian's (``apt-get install chromium``), launched by path: no browser download. Where it
is missing the tests skip and say why; under CI (``CI=true``, where .ci/run installs it) they fail.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from local.stack import RunningStack, StackConfig, start_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "build" / "screenshots"
LOGIN, PASSWORD = "shop", "shop-password-2026"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
SEED = {
    "ipn_secret": "browser-ipn-secret",
    "merchants": [
        {"merchant_id": "M1", "login": LOGIN, "password": PASSWORD, "notify_passphrase": "np1", "notify_url": None},
        {"merchant_id": "M2", "login": "other", "password": "other-password-2026", "notify_passphrase": "np2"},
    ],
    "terminals": [
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "COUNTER1",
            "passphrase": "p-counter",
            # Long enough for the page to show the payment in flight and the terminal busy.
            "simulator": {"behavior": "approve", "delay_ms": 4000},
        },
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "DECLINE1",
            "passphrase": "p-decline",
            "simulator": {"behavior": "decline", "delay_ms": 0},
        },
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "OFFLINE1",
            "passphrase": "p-offline",
            "simulator": {"behavior": "offline"},
        },
        {
            "merchant_id": "M2",
            "manufacturer": "PAX",
            "serial_number": "THEIRS1",
            "passphrase": "p-theirs",
            "simulator": {"behavior": "approve", "delay_ms": 0},
        },
    ],
}


def _require_browser(chromium: Path = CHROMIUM) -> None:
    in_ci = os.environ.get("CI", "").lower() == "true"
    problem = None
    if not chromium.exists():
        problem = f"Chromium is not installed at {chromium} (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "the playwright package is missing (make install)"
    if problem is None:
        return
    if in_ci:
        pytest.fail(f"browser tests cannot run in CI: {problem}; .ci/run installs Chromium before make test")
    pytest.skip(f"browser tests not run: {problem}")


def test_without_chromium_the_tests_skip_saying_why_but_fail_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "chromium"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        _require_browser(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs Chromium"):
        _require_browser(missing)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    _require_browser()
    seed_path = tmp_path_factory.mktemp("seed") / "seed.json"
    seed_path.write_text(json.dumps(SEED))
    running = start_stack(StackConfig(api_port=0, mqtt_port=0, seed_path=seed_path))
    yield running
    assert running.crash_report() is None
    running.stop()


@pytest.fixture(scope="module")
def browser(stack: RunningStack) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1360, "height": 900},
        )
        yield context
        context.close()


class PageWatch:
    """Every request the page made, and every script error or console error it reported."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))

    def other_origins(self, api_url: str) -> list[str]:
        own = urlsplit(api_url).netloc
        return [
            url for url in self.requests if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc != own
        ]


@pytest.fixture(scope="module")
def console(browser: Any, stack: RunningStack) -> Iterator[PageWatch]:
    """The Console page, signed in as the seed's first merchant."""
    page = browser.new_page()
    watch = PageWatch(page)
    page.goto(f"{stack.api_url}/console")
    page.get_by_label("Login").fill(LOGIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#terminals li[data-terminal='PAX-COUNTER1']").wait_for()
    yield watch
    page.close()
    assert watch.errors == []
    assert watch.other_origins(stack.api_url) == []


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def pay(stack: RunningStack, serial: str, order_id: str, amount: int = 1250) -> threading.Thread:
    """POST the order through the API on a thread: the synchronous answer takes the terminal's time."""
    body = {
        "order": {
            "order_id": order_id,
            "transaction_type": "Debit",
            "price": {"amount": amount, "currency": "EUR"},
            "description": "Browser test order",
            "basket": [
                {
                    "product_reference": "SKU-42",
                    "name": "Espresso cup",
                    "type": "good",
                    "quantity": 2,
                    "unit_price": 6.25,
                    "tax_rate": 20,
                    "total_amount": 12.5,
                }
            ],
            "custom_data": {"till": "front-3"},
        },
        "customer": {"customer_id": "C-7", "first_name": "Ada"},
        "pos_technical_info": {
            "device_information": {"serial_number": serial, "manufacturer": "PAX"},
            "terminal_transaction_display": {"protocol": "AppNepting"},
        },
    }
    token = base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{stack.api_url}/v1/connector/order",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    answers: list[int] = []

    def send() -> None:
        with urllib.request.urlopen(request, timeout=60) as response:
            answers.append(response.status)

    thread = threading.Thread(target=send, name=f"pay-{order_id}")
    thread.start()
    return thread


def test_wrong_credentials_are_refused_on_the_page_without_a_browser_login_prompt(
    browser: Any, stack: RunningStack
) -> None:
    page = browser.new_page()
    watch = PageWatch(page)
    challenges: list[str | None] = []
    page.on("response", lambda response: challenges.append(response.headers.get("www-authenticate")))
    page.goto(f"{stack.api_url}/")
    assert page.url.endswith("/console")
    screenshot(page, "console-sign-in")
    page.get_by_label("Login").fill(LOGIN)
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert").first
    alert.wait_for()
    page.wait_for_function("document.getElementById('sign-in-error').textContent.length > 0")
    assert alert.inner_text() == "Wrong login or password."
    assert page.locator("#app").is_hidden()
    assert not any(challenges)
    page.close()
    # The refused sign-in's 401 is reported by Chromium as a failed resource load, nothing else.
    assert [error for error in watch.errors if "401" not in error] == []


def test_a_payment_shows_in_flight_then_succeeded_while_its_terminal_goes_busy_then_free(
    console: PageWatch, stack: RunningStack
) -> None:
    page = console.page
    terminal = page.locator("#terminals li[data-terminal='PAX-COUNTER1']")
    assert terminal.get_attribute("data-online") == "true"
    assert terminal.get_attribute("data-busy") == "false"

    payment = pay(stack, "COUNTER1", "BROWSER-1")
    in_flight = page.locator("#in-flight tr[data-order='BROWSER-1']")
    in_flight.wait_for(timeout=15_000)
    page.wait_for_selector("#terminals li[data-terminal='PAX-COUNTER1'][data-busy='true']", timeout=15_000)
    assert "Received" in in_flight.inner_text()
    screenshot(page, "console-payment-in-flight")

    page.wait_for_selector("#recent tr[data-order='BROWSER-1'][data-state='succeeded']", timeout=30_000)
    page.wait_for_selector("#terminals li[data-terminal='PAX-COUNTER1'][data-busy='false']", timeout=15_000)
    payment.join(timeout=30)
    in_flight.wait_for(state="detached", timeout=15_000)
    row = page.locator("#recent tr[data-order='BROWSER-1']")
    timeline = row.locator(".timeline").inner_text()
    for step in ("Received", "Dispatched", "Acknowledged", "Succeeded"):
        assert step in timeline
    assert "12.50 EUR" in row.inner_text()
    # Another merchant's terminal is never shown.
    assert page.locator("#terminals li[data-terminal='PAX-THEIRS1']").count() == 0


def test_the_resulting_transaction_opens_with_the_orders_basket_customer_and_custom_data(
    console: PageWatch, stack: RunningStack
) -> None:
    page = console.page
    page.wait_for_selector("#recent tr[data-order='BROWSER-1'][data-state='succeeded']", timeout=30_000)
    row = page.locator("#transactions tbody tr[data-order='BROWSER-1']")
    row.wait_for(timeout=30_000)
    # The order's details reach the transaction a moment after the gateway's notice: reopen until merged.
    dialog = page.locator("#detail")
    for _ in range(20):
        row.get_by_role("button").click()
        dialog.wait_for(state="visible")
        if "Espresso cup" in dialog.inner_text():
            break
        page.get_by_role("button", name="Close").click()
        page.wait_for_timeout(500)
    text = dialog.inner_text()
    assert "118 Captured" in text and "12.50 EUR" in text
    assert "Espresso cup" in text and "SKU-42" in text
    assert "Ada" in text and "front-3" in text
    assert "497010******0001" in text
    screenshot(page, "console-transaction-detail")
    page.get_by_role("button", name="Close").click()
    assert dialog.is_hidden()


def test_filters_narrow_the_transactions_and_the_csv_holds_what_they_show(
    console: PageWatch, stack: RunningStack
) -> None:
    page = console.page
    pay(stack, "DECLINE1", "BROWSER-DECLINED").join(timeout=30)
    page.wait_for_selector("#transactions tbody tr[data-order='BROWSER-DECLINED']", timeout=30_000)
    page.wait_for_selector("#transactions tbody tr[data-order='BROWSER-1']", timeout=30_000)

    page.get_by_label("Status").select_option("113")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_selector("#transactions tbody tr[data-order='BROWSER-1']", state="detached")
    orders = page.locator("#transactions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.order)")
    assert orders == ["BROWSER-DECLINED"]
    assert "113 Refused" in page.locator("#transactions tbody").inner_text()
    screenshot(page, "console-transactions-filtered")

    with page.expect_download() as downloaded:
        page.get_by_role("button", name="Download CSV").click()
    download = downloaded.value
    assert re.fullmatch(r"transactions-.*\.csv", download.suggested_filename)
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert [(row["order_id"], row["status_code"], row["amount"]) for row in rows] == [
        ("BROWSER-DECLINED", "113", "12.50")
    ]

    page.get_by_label("Order id").fill("BROWSER-1")
    page.get_by_label("Status").select_option("")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_selector("#transactions tbody tr[data-order='BROWSER-DECLINED']", state="detached")
    assert page.locator("#transactions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.order)") == [
        "BROWSER-1"
    ]
    page.get_by_role("button", name="Reset").click()
    page.wait_for_selector("#transactions tbody tr[data-order='BROWSER-DECLINED']")
    screenshot(page, "console")


def test_the_api_reference_renders_every_route_of_the_served_openapi(browser: Any, stack: RunningStack) -> None:
    page = browser.new_page()
    watch = PageWatch(page)
    page.goto(f"{stack.api_url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    with urllib.request.urlopen(f"{stack.api_url}/openapi.json", timeout=10) as response:
        document = json.loads(response.read())
    shown = page.locator(".opblock-summary-path").evaluate_all("nodes => nodes.map(n => n.dataset.path)")
    expected = [path for path, operations in document["paths"].items() for _ in operations]
    assert sorted(shown) == sorted(expected)
    assert "/v1/connector/orders" in shown
    screenshot(page, "api-docs")
    page.close()
    assert watch.errors == []
    assert watch.other_origins(stack.api_url) == []


def _uncached(route: Any) -> None:
    route.continue_(headers={**route.request.headers, "cache-control": "no-cache"})


def test_page_load_time_and_size_are_reported(browser: Any, stack: RunningStack) -> None:
    """Figures for the record, not limits: load time and bytes of each page, cold cache."""
    figures = {}
    for name in ("console", "docs"):
        page = browser.new_page()
        page.route(
            "**/*", lambda route: route.continue_(headers={**route.request.headers, "cache-control": "no-cache"})
        )
        page.goto(f"{stack.api_url}/{name}", wait_until="load")
        timing = page.evaluate(
            """() => {
                const nav = performance.getEntriesByType('navigation')[0];
                const resources = performance.getEntriesByType('resource');
                const bytes = [nav, ...resources].reduce((sum, e) => sum + (e.encodedBodySize || 0), 0);
                return {load_ms: Math.round(nav.loadEventEnd), bytes, files: resources.length + 1};
            }"""
        )
        figures[name] = timing
        page.close()
        assert timing["bytes"] > 0 and timing["files"] >= 3
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "page-figures.json").write_text(json.dumps(figures, indent=2))
    print(f"page figures: {json.dumps(figures)}")

"""Limits on expensive work (docs/payment-api.md): 429 request.throttled with Retry-After, against the
in-memory limit store."""

from __future__ import annotations

import base64

import pytest

from chalicelib.errors import ApiError
from chalicelib.limits import AuthGuard, LimitSettings, WaitingPayments
from chalicelib.merchants import auth
from chalicelib.merchants.auth import Authenticator, hash_password
from tests.fakes import MemoryLimitStore

LOGIN, PASSWORD = "shop", "the-right-password"
SETTINGS = LimitSettings(auth_failures_per_login=3, auth_failures_per_address=5, auth_window_s=60)


class Logins:
    def __init__(self) -> None:
        self.records = {LOGIN: {"merchant_id": "M1", "password_hash": hash_password(PASSWORD)}}

    def get_login(self, login: str) -> dict[str, str] | None:
        return self.records.get(login)


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


class Wall:
    def __init__(self) -> None:
        self.now = 6_000.0

    def __call__(self) -> float:
        return self.now


def guarded() -> tuple[Authenticator, Wall]:
    wall = Wall()
    return Authenticator(Logins(), 60, guard=AuthGuard(MemoryLimitStore(), SETTINGS), wall_clock=wall), wall


def throttled(error: ApiError) -> int:
    assert (error.status, error.code) == (429, "request.throttled")
    assert error.body()["error"]["status"] == 429
    return int(error.headers["Retry-After"])


def test_past_the_failures_of_a_login_it_is_a_429_without_running_the_slow_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authenticator, wall = guarded()
    for _ in range(3):
        with pytest.raises(ApiError) as caught:
            authenticator.merchant_for(basic(LOGIN, "wrong"), "203.0.113.9")
        assert caught.value.status == 401
    hashes: list[str] = []
    monkeypatch.setattr(auth, "verify_password", lambda password, stored: hashes.append(password) or True)
    wall.now += 15
    with pytest.raises(ApiError) as caught:
        authenticator.merchant_for(basic(LOGIN, PASSWORD), "198.51.100.7")
    assert throttled(caught.value) == 45, "until the window ends"
    assert hashes == []


def test_the_login_is_usable_again_in_the_next_window() -> None:
    authenticator, wall = guarded()
    for _ in range(3):
        with pytest.raises(ApiError):
            authenticator.merchant_for(basic(LOGIN, "wrong"), "203.0.113.9")
    wall.now += 60
    assert authenticator.merchant_for(basic(LOGIN, PASSWORD), "203.0.113.9") == "M1"


def test_past_the_failures_of_an_address_every_login_from_it_is_a_429() -> None:
    authenticator, _ = guarded()
    for index in range(5):
        with pytest.raises(ApiError):
            authenticator.merchant_for(basic(f"guess-{index}", "wrong"), "203.0.113.9")
    with pytest.raises(ApiError) as caught:
        authenticator.merchant_for(basic(LOGIN, PASSWORD), "203.0.113.9")
    throttled(caught.value)
    assert authenticator.merchant_for(basic(LOGIN, PASSWORD), "198.51.100.7") == "M1"


def test_a_cached_credential_is_not_held_up_by_failures_of_others() -> None:
    authenticator, _ = guarded()
    authenticator.merchant_for(basic(LOGIN, PASSWORD), "203.0.113.9")
    for _ in range(5):
        with pytest.raises(ApiError):
            authenticator.merchant_for(basic(LOGIN, "wrong"), "203.0.113.9")
    assert authenticator.merchant_for(basic(LOGIN, PASSWORD), "203.0.113.9") == "M1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def waiting(store: MemoryLimitStore, clock: Clock, per_merchant: int = 2, per_order: int = 2) -> WaitingPayments:
    settings = LimitSettings(waiting_payments_per_merchant=per_merchant, waiting_requests_per_order=per_order)
    return WaitingPayments(store, settings, longest_wait_ms=120_000, now_ms=clock)


def test_payments_waiting_at_once_per_merchant_are_limited_and_released() -> None:
    store, clock = MemoryLimitStore(), Clock()
    limits = waiting(store, clock)
    with limits.waiting("M1", "M1#A"), limits.waiting("M1", "M1#B"):
        with pytest.raises(ApiError) as caught, limits.waiting("M1", "M1#C"):
            pass
        throttled(caught.value)
        with limits.waiting("M2", "M2#A"):
            pass
    with limits.waiting("M1", "M1#C"):
        pass
    assert {key: taken for key, (taken, _) in store.gauges.items()} == {
        "WAITING#MERCHANT#M1": 0,
        "WAITING#ORDER#M1#A": 0,
        "WAITING#ORDER#M1#B": 0,
        "WAITING#ORDER#M1#C": 0,
        "WAITING#MERCHANT#M2": 0,
        "WAITING#ORDER#M2#A": 0,
    }


def test_duplicates_joining_one_payment_are_limited() -> None:
    store, clock = MemoryLimitStore(), Clock()
    limits = waiting(store, clock, per_merchant=10, per_order=2)
    with limits.waiting("M1", "M1#A"), limits.waiting("M1", "M1#A"):
        with pytest.raises(ApiError) as caught, limits.waiting("M1", "M1#A"):
            pass
        throttled(caught.value)
        # the refused duplicate gave its merchant unit back
        assert store.gauges["WAITING#MERCHANT#M1"][0] == 2


def test_a_gauge_left_full_by_a_process_that_died_is_reclaimed_after_the_longest_wait() -> None:
    store, clock = MemoryLimitStore(), Clock()
    limits = waiting(store, clock, per_merchant=1)
    store.acquire("WAITING#MERCHANT#M1", 1, clock.now, 180_000)  # taken and never given back
    with pytest.raises(ApiError), limits.waiting("M1", "M1#A"):
        pass
    clock.now += 180_001
    with limits.waiting("M1", "M1#A"):
        pass

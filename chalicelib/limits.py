"""Limits on expensive work (docs/payment-api.md, 429 ``request.throttled`` with ``Retry-After``).

- failed authentications: per login and per source address, counted in fixed windows; past the
  limit, credentials are not even checked (no slow hash runs) until the window ends;
- payments waiting at once: per merchant, and per order (the duplicates joining one payment).

The state lives behind :class:`LimitStore`, shared by every process (on AWS, items of the merchants
table: atomic counters and conditional gauges, expired by TTL), so the limits hold across Lambda
instances. Concurrency: a counter's increments are atomic and exact; a check reads it first, so
attempts already past the check when the limit is reached still run (at most one per concurrent
request). A gauge is taken by a conditional increment, so it is never over its limit; one left
taken by a process that died is reclaimed once nothing has touched it for longer than any payment
can last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from chalicelib.errors import ApiError


class LimitStore(Protocol):
    def increment(self, key: str, expires_at_s: int) -> int:
        """Add one to the counter ``key`` (created at 0, dropped after ``expires_at_s``); the new count."""
        ...

    def read(self, key: str) -> int:
        """The counter's value; 0 when it does not exist (or expired)."""
        ...

    def acquire(self, key: str, limit: int, now_ms: int, stale_after_ms: int) -> bool:
        """Take one unit of the gauge ``key`` if fewer than ``limit`` are taken. A gauge nobody has
        touched for ``stale_after_ms`` holds only leaked units and starts again from zero."""
        ...

    def release(self, key: str, now_ms: int) -> None:
        """Give back one unit taken by ``acquire``."""
        ...


@dataclass(frozen=True)
class LimitSettings:
    auth_failures_per_login: int = 10
    auth_failures_per_address: int = 50
    auth_window_s: int = 60
    waiting_payments_per_merchant: int = 100
    waiting_requests_per_order: int = 5


def throttled(retry_after_s: int, message: str) -> ApiError:
    return ApiError(
        429,
        "request.throttled",
        message,
        "Too many requests; retry after the number of seconds in Retry-After",
        headers={"Retry-After": str(max(1, retry_after_s))},
    )


class AuthGuard:
    """Counts failed authentications; refuses to check credentials past the limits."""

    def __init__(self, store: LimitStore, settings: LimitSettings) -> None:
        self.store = store
        self.settings = settings

    def _keys(self, login: str, address: str | None, now_s: int) -> list[tuple[str, int]]:
        window = now_s // self.settings.auth_window_s
        keys = [(f"AUTHFAIL#LOGIN#{login}#{window}", self.settings.auth_failures_per_login)]
        if address:
            keys.append((f"AUTHFAIL#ADDR#{address}#{window}", self.settings.auth_failures_per_address))
        return keys

    def check(self, login: str, address: str | None, now_s: int) -> None:
        for key, limit in self._keys(login, address, now_s):
            if self.store.read(key) >= limit:
                retry_after = self.settings.auth_window_s - now_s % self.settings.auth_window_s
                raise throttled(retry_after, "too many failed authentications; retry later")

    def failed(self, login: str, address: str | None, now_s: int) -> None:
        expires = (now_s // self.settings.auth_window_s + 2) * self.settings.auth_window_s
        for key, _ in self._keys(login, address, now_s):
            self.store.increment(key, expires)


class WaitingPayments:
    """Gauges of the payment requests held open: per merchant, and per order."""

    def __init__(
        self, store: LimitStore, settings: LimitSettings, longest_wait_ms: int, now_ms: Callable[[], int]
    ) -> None:
        self.store = store
        self.settings = settings
        self.now_ms = now_ms
        # Past the longest a payment request can be held, a gauge still taken only holds leaks.
        self.stale_after_ms = longest_wait_ms + 60_000

    @contextmanager
    def waiting(self, merchant_id: str, order_key: str) -> Iterator[None]:
        merchant = f"WAITING#MERCHANT#{merchant_id}"
        order = f"WAITING#ORDER#{order_key}"
        now_ms = self.now_ms()
        if not self.store.acquire(merchant, self.settings.waiting_payments_per_merchant, now_ms, self.stale_after_ms):
            raise throttled(1, "too many payments waiting at once for this merchant")
        try:
            if not self.store.acquire(order, self.settings.waiting_requests_per_order, now_ms, self.stale_after_ms):
                raise throttled(1, "too many requests waiting on this order")
            try:
                yield
            finally:
                self.store.release(order, self.now_ms())
        finally:
            self.store.release(merchant, self.now_ms())

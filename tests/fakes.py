"""In-memory fakes of the ports, with the same conditional semantics as the DynamoDB adapters."""

from __future__ import annotations

import copy
import threading
from dataclasses import replace
from typing import Any

from chalicelib.exceptions import ChannelError, ConditionFailed
from chalicelib.payments.domain import Dispatch, DispatchState, OrderHead, Terminal


class FakeClock:
    def __init__(self, start_ms: int = 1_795_000_000_000) -> None:
        self.now = start_ms

    def now_ms(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class FakeTerminals:
    def __init__(self) -> None:
        self.items: dict[str, Terminal] = {}

    def get(self, terminal_id: str) -> Terminal | None:
        found = self.items.get(terminal_id)
        return replace(found) if found else None

    def list_for_merchant(self, merchant_id: str) -> list[Terminal]:
        return [replace(t) for t in self.items.values() if t.merchant_id == merchant_id]

    def put(self, terminal: Terminal) -> None:
        self.items[terminal.terminal_id] = replace(terminal)

    def claim(self, terminal_id: str, request_id: str, now_ms: int, until_ms: int, order_key: str = "") -> bool:
        terminal = self.items.get(terminal_id)
        if terminal is None or (terminal.busy_request_id is not None and terminal.busy_until_ms > now_ms):
            return False
        terminal.busy_request_id, terminal.busy_until_ms, terminal.busy_order = request_id, until_ms, order_key
        return True

    def release(self, terminal_id: str, request_id: str) -> bool:
        terminal = self.items.get(terminal_id)
        if terminal is None or terminal.busy_request_id != request_id:
            return False
        terminal.busy_request_id, terminal.busy_until_ms, terminal.busy_order = None, 0, None
        return True

    def record_status(self, terminal_id: str, online: bool, sent_at_ms: int, seen_at: str) -> bool:
        terminal = self.items.get(terminal_id)
        if terminal is None or terminal.status_at_ms > sent_at_ms:
            return False
        terminal.online, terminal.status_at_ms, terminal.last_seen_at = online, sent_at_ms, seen_at
        return True


class FakePayments:
    def __init__(self) -> None:
        self.heads: dict[tuple[str, str], OrderHead] = {}
        self.dispatches: dict[str, Dispatch] = {}
        self.reads = 0
        self.lock = threading.Lock()

    def get_head(self, merchant_id: str, order_id: str) -> OrderHead | None:
        found = self.heads.get((merchant_id, order_id))
        return replace(found) if found else None

    def get_dispatch(self, request_id: str) -> Dispatch | None:
        self.reads += 1
        found = self.dispatches.get(request_id)
        return copy.deepcopy(found) if found else None

    def start_attempt(self, head: OrderHead, dispatch: Dispatch, previous_attempt: int | None) -> None:
        with self.lock:
            current = self.heads.get((head.merchant_id, head.order_id))
            if (previous_attempt is None and current is not None) or (
                previous_attempt is not None and (current is None or current.attempt != previous_attempt)
            ):
                raise ConditionFailed("head moved")
            self.heads[(head.merchant_id, head.order_id)] = replace(head)
            self.dispatches[dispatch.request_id] = copy.deepcopy(dispatch)

    def transition(
        self,
        request_id: str,
        allowed_from: frozenset[DispatchState],
        to: DispatchState,
        now_ms: int,
        terminal_id: str | None = None,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
        late: bool = False,
        failed_for: frozenset[str] = frozenset(),
    ) -> Dispatch:
        with self.lock:
            dispatch = self.dispatches.get(request_id)
            allowed = dispatch is not None and (
                dispatch.state in allowed_from
                or (dispatch.state == DispatchState.FAILED and dispatch.reason in failed_for)
            )
            if dispatch is None or not allowed:
                raise ConditionFailed(request_id)
            if terminal_id is not None and dispatch.terminal_id != terminal_id:
                raise ConditionFailed(request_id)
            dispatch.state = to
            dispatch.version += 1
            if to == DispatchState.ACKNOWLEDGED:
                dispatch.acked_at_ms = now_ms
            else:
                dispatch.finished_at_ms = now_ms
            if reason is not None:
                dispatch.reason = reason
            if result is not None:
                dispatch.result = copy.deepcopy(result)
            if late:
                dispatch.late = True
            return copy.deepcopy(dispatch)


class RecordingChannel:
    """Records what was published; ``on_publish`` lets a test play the terminal synchronously."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.fail = False
        self.on_publish: Any = None

    def publish(self, terminal_id: str, envelope: dict[str, Any]) -> None:
        if self.fail:
            raise ChannelError("broker down")
        self.published.append((terminal_id, envelope))
        if self.on_publish is not None:
            self.on_publish(terminal_id, envelope)


class ScriptedWaker:
    """Runs a callback on each wait instead of sleeping: the 'terminal' acts between two polls."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []
        self.steps: list[Any] = []
        self.woken: list[str] = []

    def wait(self, request_id: str, timeout_s: float) -> None:
        self.waits.append(timeout_s)
        self.clock.advance(max(1, int(timeout_s * 1000)))
        if self.steps:
            self.steps.pop(0)(request_id)

    def wake(self, request_id: str) -> None:
        self.woken.append(request_id)


class MemoryLimitStore:
    """The limit store's semantics in memory: atomic counters, gauges taken under their limit."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, tuple[int, int]] = {}

    def increment(self, key: str, expires_at_s: int) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    def read(self, key: str) -> int:
        return self.counters.get(key, 0)

    def acquire(self, key: str, limit: int, now_ms: int, stale_after_ms: int) -> bool:
        taken, touched = self.gauges.get(key, (0, now_ms))
        if taken >= limit:
            if touched >= now_ms - stale_after_ms:
                return False
            taken = 0
        self.gauges[key] = (taken + 1, now_ms)
        return True

    def release(self, key: str, now_ms: int) -> None:
        taken, _ = self.gauges.get(key, (0, now_ms))
        if taken > 0:
            self.gauges[key] = (taken - 1, now_ms)

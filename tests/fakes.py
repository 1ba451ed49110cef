"""In-memory fakes of every port, with the same conditional semantics as the DynamoDB adapters.

Where an adapter raises ``ConditionFailed`` its fake raises it too, and where an adapter answers
False its fake answers False; ``tests/contract`` runs the same tests against both to keep it so, and
``tests/fakes_conform.py`` (type-checked by ``make typecheck``) holds each fake to its port.
Every read hands out a copy: a caller mutating what it read never changes the store behind its back.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import replace
from typing import Any

from chalicelib.bootstrap import Components
from chalicelib.config import Settings
from chalicelib.console.domain import OrderDetails, Transaction, TransactionQuery
from chalicelib.console.ports import Position
from chalicelib.exceptions import ChannelError, ConditionFailed
from chalicelib.merchants.auth import Authenticator
from chalicelib.payments.domain import Dispatch, OrderHead, OrderPosition, Terminal, Transition


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
        # A conditional write is one step, as DynamoDB's are per item.
        self.lock = threading.Lock()

    def get(self, terminal_id: str) -> Terminal | None:
        found = self.items.get(terminal_id)
        return replace(found) if found else None

    def list_for_merchant(self, merchant_id: str) -> list[Terminal]:
        return [replace(t) for t in self.items.values() if t.merchant_id == merchant_id]

    def put(self, terminal: Terminal) -> None:
        with self.lock:
            self.items[terminal.terminal_id] = replace(terminal)

    def create(self, terminal: Terminal) -> None:
        with self.lock:
            if terminal.terminal_id in self.items:
                raise ConditionFailed(f"terminal {terminal.terminal_id} is already enrolled")
            self.items[terminal.terminal_id] = replace(terminal)

    def set_passphrase(self, terminal_id: str, merchant_id: str, passphrase: str | None) -> None:
        with self.lock:
            terminal = self.items.get(terminal_id)
            if terminal is None or terminal.merchant_id != merchant_id:
                raise ConditionFailed(f"terminal {terminal_id} is not enrolled for {merchant_id}")
            terminal.passphrase = passphrase or None

    def claim(self, terminal_id: str, request_id: str, now_ms: int, until_ms: int, order_key: str = "") -> bool:
        with self.lock:
            terminal = self.items.get(terminal_id)
            if terminal is None or (terminal.busy_request_id is not None and terminal.busy_until_ms > now_ms):
                return False
            terminal.busy_request_id, terminal.busy_until_ms, terminal.busy_order = request_id, until_ms, order_key
            return True

    def release(self, terminal_id: str, request_id: str) -> bool:
        with self.lock:
            terminal = self.items.get(terminal_id)
            if terminal is None or terminal.busy_request_id != request_id:
                return False
            terminal.busy_request_id, terminal.busy_until_ms, terminal.busy_order = None, 0, None
            return True

    def record_status(self, terminal_id: str, online: bool, sent_at_ms: int, seen_at: str) -> bool:
        with self.lock:
            terminal = self.items.get(terminal_id)
            if terminal is None or terminal.status_at_ms >= sent_at_ms:
                return False
            terminal.online, terminal.status_at_ms, terminal.last_seen_at = online, sent_at_ms, seen_at
            return True

    def record_presence(self, terminal_id: str, online: bool, at_ms: int, session: str, seen_at: str) -> bool:
        with self.lock:
            terminal = self.items.get(terminal_id)
            if terminal is None or terminal.status_at_ms > at_ms:
                return False
            if not online and terminal.presence_session not in (None, session):
                return False
            terminal.online, terminal.status_at_ms, terminal.last_seen_at = online, at_ms, seen_at
            terminal.presence_session = session
            return True


class FakePayments:
    def __init__(self) -> None:
        self.heads: dict[tuple[str, str], OrderHead] = {}
        self.dispatches: dict[str, Dispatch] = {}
        self.reads = 0
        self.lock = threading.Lock()

    def get_head(self, merchant_id: str, order_id: str) -> OrderHead | None:
        with self.lock:
            found = self.heads.get((merchant_id, order_id))
            return replace(found) if found else None

    def get_dispatch(self, request_id: str) -> Dispatch | None:
        with self.lock:
            self.reads += 1
            found = self.dispatches.get(request_id)
            return copy.deepcopy(found) if found else None

    def list_heads(
        self, merchant_id: str, limit: int, after: OrderPosition | None = None, terminal_id: str | None = None
    ) -> tuple[list[OrderHead], OrderPosition | None]:
        # Like a filtered query: ``limit`` heads are read, the filter then drops some of them.
        with self.lock:
            mine = [h for h in self.heads.values() if h.merchant_id == merchant_id]
        ordered = sorted(mine, key=lambda h: (h.updated_at_ms, h.order_id), reverse=True)
        if after is not None:
            ordered = [h for h in ordered if (h.updated_at_ms, h.order_id) < after]
        read = ordered[:limit]
        more = len(ordered) > limit
        position = (read[-1].updated_at_ms, read[-1].order_id) if more else None
        return [replace(h) for h in read if terminal_id is None or h.terminal_id == terminal_id], position

    def start_attempt(self, head: OrderHead, dispatch: Dispatch, previous_attempt: int | None) -> None:
        with self.lock:
            current = self.heads.get((head.merchant_id, head.order_id))
            if (previous_attempt is None and current is not None) or (
                previous_attempt is not None and (current is None or current.attempt != previous_attempt)
            ):
                raise ConditionFailed("head moved")
            if dispatch.request_id in self.dispatches:
                raise ConditionFailed(f"dispatch {dispatch.request_id} exists")
            self.heads[(head.merchant_id, head.order_id)] = replace(head)
            self.dispatches[dispatch.request_id] = copy.deepcopy(dispatch)

    def apply(self, transition: Transition) -> Dispatch:
        with self.lock:
            dispatch = self.dispatches.get(transition.request_id)
            if dispatch is None or not transition.rule.allows(dispatch):
                raise ConditionFailed(f"{transition.request_id}: {transition.rule.name} refused")
            if transition.terminal_id is not None and dispatch.terminal_id != transition.terminal_id:
                raise ConditionFailed(f"{transition.request_id}: other terminal")
            dispatch.state = transition.to
            dispatch.version += 1
            setattr(dispatch, transition.rule.stamp, transition.at_ms)
            if transition.reason is not None:
                dispatch.reason = transition.reason
            if transition.result is not None:
                dispatch.result = copy.deepcopy(transition.result)
                dispatch.result_at_ms = transition.at_ms
            if transition.rule.late:
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
            # A Cancel waits on "{request_id}#cancel": the step acts on the payment all the same.
            self.steps.pop(0)(request_id.split("#")[0])

    def wake(self, request_id: str) -> None:
        self.woken.append(request_id)


# -- Console ---------------------------------------------------------------------------------------


def _sort_key(tx: Transaction) -> tuple[str, str]:
    return tx.created_at, tx.transaction_reference


def _position(tx: Transaction) -> Position:
    return {"created_at": tx.created_at, "transaction_reference": tx.transaction_reference}


class FakeTransactions:
    """Transactions by reference, listed like the two indexes: per merchant or per order, by ``created_at``."""

    def __init__(self) -> None:
        self.items: dict[str, Transaction] = {}
        self.lock = threading.Lock()

    def get(self, reference: str) -> Transaction | None:
        with self.lock:
            found = self.items.get(reference)
            return copy.deepcopy(found) if found else None

    def put(self, tx: Transaction, expected_version: int) -> None:
        with self.lock:
            current = self.items.get(tx.transaction_reference)
            stored_version = None if current is None else current.version
            if (expected_version == 0 and current is not None) or (
                expected_version != 0 and stored_version != expected_version
            ):
                raise ConditionFailed(f"transaction {tx.transaction_reference} changed meanwhile")
            self.items[tx.transaction_reference] = copy.deepcopy(tx)

    def mark_enqueued(self, reference: str, status_code: int) -> None:
        with self.lock:
            tx = self.items.get(reference)
            if tx is None or tx.notify_pending_status != status_code or tx.notify_enqueued:
                raise ConditionFailed(f"transaction {reference} changed meanwhile")
            tx.notify_enqueued = True
            tx.version += 1

    def record_delivery(self, reference: str, status_code: int) -> None:
        with self.lock:
            tx = self.items.get(reference)
            if tx is None or status_code in tx.notified_statuses:
                raise ConditionFailed(f"transaction {reference} changed meanwhile")
            tx.notified_statuses.append(status_code)
            tx.version += 1

    def list_for_order(self, merchant_id: str, order_id: str) -> list[Transaction]:
        query = TransactionQuery(merchant_id=merchant_id, order_id=order_id)
        found: list[Transaction] = []
        after: Position | None = None
        while True:
            items, after = self.page(query, 100, after)
            found.extend(items)
            if after is None:
                return found

    def page(
        self, query: TransactionQuery, limit: int, after: Position | None
    ) -> tuple[list[Transaction], Position | None]:
        """As the DynamoDB Query does it: ``limit`` items of the partition's range are read, newest
        first, then filtered, so a page may come back short and still continue."""
        low, high = query.created_from or "0", query.created_to or "~"
        with self.lock:
            in_range = sorted(
                (
                    tx
                    for tx in self.items.values()
                    if tx.merchant_id == query.merchant_id
                    and (query.order_id is None or tx.order_id == query.order_id)
                    and low <= tx.created_at <= high
                ),
                key=_sort_key,
                reverse=True,
            )
            if after is not None:
                start = (after["created_at"], after["transaction_reference"])
                in_range = [tx for tx in in_range if _sort_key(tx) < start]
            read = in_range[:limit]
            kept = [
                copy.deepcopy(tx)
                for tx in read
                if (query.status_code is None or tx.status_code == query.status_code)
                and (query.terminal_id is None or tx.terminal_id == query.terminal_id)
            ]
        return kept, _position(read[-1]) if len(in_range) > limit else None


class FakeOrderDetails:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], OrderDetails] = {}
        self.lock = threading.Lock()

    def get(self, merchant_id: str, order_id: str) -> OrderDetails | None:
        with self.lock:
            return self.items.get((merchant_id, order_id))  # frozen: safe to share

    def put_if_newer(self, details: OrderDetails) -> bool:
        with self.lock:
            current = self.items.get((details.merchant_id, details.order_id))
            if current is not None and current.attempt >= details.attempt:
                return False
            self.items[(details.merchant_id, details.order_id)] = details
            return True


class FakeIpnInbox:
    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def store(self, reference: str, merchant_id: str, body_json: str, body_sha256: str, received_at_ms: int) -> bool:
        with self.lock:
            if reference in self.items:
                return False
            self.items[reference] = {
                "transaction_reference": reference,
                "merchant_id": merchant_id,
                "body_json": body_json,
                "body_sha256": body_sha256,
                "received_at_ms": received_at_ms,
            }
            return True

    def get(self, reference: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.items.get(reference)
            return dict(found) if found else None

    def mark_merged(self, reference: str, merged_at_ms: int) -> None:
        with self.lock:
            stored = self.items.get(reference)
            if stored is None:
                raise ConditionFailed(f"no IPN {reference} to mark merged")
            stored.setdefault("merged_at_ms", merged_at_ms)


class RecordingQueue:
    """A MessageQueue that keeps what was sent, with its delay; ``fail`` makes sending raise."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], int]] = []
        self.fail: Exception | None = None

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((copy.deepcopy(body), delay_s))

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for body, _ in self.sent]

    def take(self) -> list[dict[str, Any]]:
        """What was sent since the last take, as a consumer would receive it."""
        taken, self.sent = self.bodies, []
        return taken


class Post:
    def __init__(self, url: str, body: bytes, headers: dict[str, str], answered: int) -> None:
        self.url, self.body, self.headers, self.answered = url, body, headers, answered


class ScriptedPoster:
    """A FormPoster whose receiver answers ``status`` (0: nobody answered) and records every post."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posts: list[Post] = []

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        self.posts.append(Post(url, body, dict(headers), self.status))
        return self.status

    @property
    def delivered(self) -> list[Post]:
        return [post for post in self.posts if 200 <= post.answered < 300]


# -- merchants -------------------------------------------------------------------------------------


class FakeMerchants:
    """Items shaped like the merchants table's: ``pk`` included, absent (None) attributes left out."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def get_merchant(self, merchant_id: str) -> dict[str, Any] | None:
        found = self.items.get(f"MERCHANT#{merchant_id}")
        return dict(found) if found else None

    def get_login(self, login: str) -> dict[str, Any] | None:
        found = self.items.get(f"LOGIN#{login}")
        return dict(found) if found else None

    def delete_login(self, login: str) -> bool:
        return self.items.pop(f"LOGIN#{login}", None) is not None

    def put_merchant(
        self, merchant_id: str, notify_url: str | None, notify_passphrase: str, basket_policy: str = "lenient"
    ) -> None:
        self._put(
            {
                "pk": f"MERCHANT#{merchant_id}",
                "merchant_id": merchant_id,
                "notify_url": notify_url,
                "notify_passphrase": notify_passphrase,
                "basket_policy": basket_policy,
            }
        )

    def put_login(self, login: str, merchant_id: str, password_hash: str) -> None:
        self._put({"pk": f"LOGIN#{login}", "login": login, "merchant_id": merchant_id, "password_hash": password_hash})

    def _put(self, item: dict[str, Any]) -> None:
        self.items[item["pk"]] = {key: value for key, value in item.items() if value is not None}


# -- the whole application -------------------------------------------------------------------------


class MemoryLimitStore:
    """The limit store's semantics in memory: atomic counters, gauges taken under their limit."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.gauges: dict[str, tuple[int, int]] = {}
        # Each change is one atomic step, as one conditional statement or UpdateItem is.
        self._lock = threading.Lock()

    def increment(self, key: str, expires_at_s: int) -> int:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + 1
            return self.counters[key]

    def read(self, key: str) -> int:
        return self.counters.get(key, 0)

    def acquire(self, key: str, limit: int, now_ms: int, stale_after_ms: int) -> bool:
        with self._lock:
            taken, touched = self.gauges.get(key, (0, now_ms))
            if taken >= limit:
                if touched >= now_ms - stale_after_ms:
                    return False
                taken = 0
            self.gauges[key] = (taken + 1, now_ms)
            return True

    def release(self, key: str, now_ms: int) -> None:
        with self._lock:
            taken, _ = self.gauges.get(key, (0, now_ms))
            if taken > 0:
                self.gauges[key] = (taken - 1, now_ms)


def fake_components(
    settings: Settings | None = None, ipn_secret: str = "ipn-secret-for-tests", **overrides: Any
) -> Components:
    """``bootstrap.Components`` with a fake behind every port, for ``bootstrap.install``."""
    settings = settings or Settings(ipn_secret=ipn_secret)
    merchants = overrides.pop("merchants", None) or FakeMerchants()
    clock = overrides.pop("clock", None) or FakeClock()

    def secret() -> str:
        return ipn_secret

    parts = {
        "settings": settings,
        "clock": clock,
        "waker": ScriptedWaker(clock),
        "merchants": merchants,
        "authenticator": Authenticator(merchants, settings.credential_cache_ttl_s),
        "terminals": FakeTerminals(),
        "payments": FakePayments(),
        "channel": RecordingChannel(),
        "transactions": FakeTransactions(),
        "order_details": FakeOrderDetails(),
        "ipn_inbox": FakeIpnInbox(),
        "ipn_queue": RecordingQueue(),
        "notifications": RecordingQueue(),
        "dead_letters": RecordingQueue(),
        "poster": ScriptedPoster(),
        "ipn_secret": secret,
        "limits": MemoryLimitStore(),
        **overrides,
    }
    return Components(**parts)

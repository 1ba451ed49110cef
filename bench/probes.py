"""Counting instead of guessing: every AWS call, MQTT publish, handler invocation and poll wait made in
the stack's process, attributed to the component that made it.

The local stack runs in the bench's process (in-process store, broker, API threads, topic-rule
bridge, pollers), so wrapping a few functions sees it all:

- ``botocore.client.BaseClient._make_api_call``: AWS calls by component, service, operation and
  table, with DynamoDB read/write request units computed from item sizes (bench/cost.py);
- ``paho.mqtt.client.Client.publish`` and the broker's own Publish (``local/broker.py``, the API's
  channel): MQTT messages by topic kind (requests, events, status);
- the terminal-event handlers and the payment route: invocations and durations;
- the waker: how long the API spends sleeping between polls.

The simulated terminals run in processes of their own (bench/terminals.py), which install
``ResultClock`` (when each order's result left its terminal) and the publish counter
(``Probes.install_mqtt``) there and hand their readings to the bench.

Attribution: a thread-local set by the wrappers (the HTTP path for API threads, the handler for
topic-rule threads), else the thread's name (pollers are named ``stream:…``/``sqs:…``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench import cost

_context = threading.local()
PAYMENT_PATH = ("api.order", "terminal_events")


def current_component() -> str:
    component = getattr(_context, "component", None)
    if component:
        return str(component)
    name = threading.current_thread().name
    if "process_request_thread" in name:
        return "api.other"
    if name.startswith(("stream:", "sqs:")):
        return f"poller:{name}"
    if name.startswith("topic-rule"):
        return "topic_rule.other"
    return "other"


@contextmanager
def component(name: str) -> Iterator[None]:
    previous = getattr(_context, "component", None)
    _context.component = name
    try:
        yield
    finally:
        _context.component = previous


def api_component(path: str) -> str:
    path = path.split("?", 1)[0]
    if path == "/v1/connector/order":
        return "api.order"
    if path == "/v1/ipn/nepting":
        return "api.ipn"
    if path == "/v1/connector/healthcheck":
        return "api.healthcheck"
    return "api.other"


@dataclass
class CallStats:
    calls: int = 0
    errors: int = 0
    rru: float = 0.0
    wru: float = 0.0
    time_ms: float = 0.0
    poll_reads: int = 0


@dataclass
class Durations:
    count: int = 0
    total_ms: float = 0.0
    samples: list[float] = field(default_factory=list)

    def add(self, ms: float) -> None:
        self.count += 1
        self.total_ms += ms
        if len(self.samples) < 20_000:
            self.samples.append(ms)


class Probes:
    """Install once (``install()``), ``reset()`` before a scenario, ``snapshot()`` after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[tuple[str, str, str, str], CallStats] = defaultdict(CallStats)
        self.mqtt: dict[str, int] = defaultdict(int)
        self.mqtt_max_bytes = 0
        self.handlers: dict[str, Durations] = defaultdict(Durations)
        self.waits = Durations()
        self._undo: list[Callable[[], None]] = []

    # -- counters ----------------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.mqtt.clear()
            self.mqtt_max_bytes = 0
            self.handlers.clear()
            self.waits = Durations()

    def record_call(self, key: tuple[str, str, str, str], stats: CallStats) -> None:
        with self._lock:
            total = self.calls[key]
            total.calls += stats.calls
            total.errors += stats.errors
            total.rru += stats.rru
            total.wru += stats.wru
            total.time_ms += stats.time_ms
            total.poll_reads += stats.poll_reads

    def record_handler(self, name: str, ms: float) -> None:
        with self._lock:
            self.handlers[name].add(ms)

    def record_wait(self, ms: float) -> None:
        with self._lock:
            self.waits.add(ms)

    def record_publish(self, topic: str, size: int) -> None:
        kind = topic.rsplit("/", 1)[-1] if topic.startswith("nepting/") else "other"
        with self._lock:
            self.mqtt[kind] += 1
            self.mqtt_max_bytes = max(self.mqtt_max_bytes, size)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "aws_calls": [
                    {
                        "component": key[0],
                        "service": key[1],
                        "operation": key[2],
                        "table": key[3],
                        "calls": stats.calls,
                        "errors": stats.errors,
                        "rru": stats.rru,
                        "wru": stats.wru,
                        "time_ms": round(stats.time_ms, 3),
                        "poll_reads": stats.poll_reads,
                    }
                    for key, stats in sorted(self.calls.items())
                ],
                "mqtt_publishes": dict(self.mqtt),
                "mqtt_max_payload_bytes": self.mqtt_max_bytes,
                "handlers": {
                    name: {"count": d.count, "total_ms": round(d.total_ms, 3)} for name, d in self.handlers.items()
                },
                "handler_samples_ms": {name: list(d.samples) for name, d in self.handlers.items()},
                "waits": {"count": self.waits.count, "total_ms": round(self.waits.total_ms, 3)},
            }

    # -- installation ------------------------------------------------------------------------------

    def install(self) -> Probes:
        self._wrap_botocore()
        self._wrap_paho()
        self._wrap_broker_publish()
        self._wrap_handlers()
        return self

    def install_mqtt(self) -> Probes:
        """Only the MQTT publish counter: for a process that runs paho clients and nothing of the stack."""
        self._wrap_paho()
        return self

    def uninstall(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        original = getattr(owner, name)
        setattr(owner, name, replacement)
        self._undo.append(lambda: setattr(owner, name, original))

    def _wrap_botocore(self) -> None:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call
        probes = self

        def counted(client: Any, operation: str, params: dict[str, Any]) -> Any:
            service = client.meta.service_model.service_name
            before = _stored_sizes(client, operation, params) if service == "dynamodb" else []
            started = time.perf_counter()
            error = False
            response: Any = None
            try:
                response = original(client, operation, params)
                return response
            except Exception:
                error = True
                raise
            finally:
                stats = CallStats(calls=1, errors=int(error), time_ms=(time.perf_counter() - started) * 1000)
                table = str(params.get("TableName", "multi" if operation.startswith("Transact") else ""))
                if service == "dynamodb":
                    after = _stored_sizes(client, operation, params)
                    stats.rru, stats.wru = _request_units(operation, params, response, before, after)
                    key = params.get("Key") or {}
                    if operation == "GetItem" and str(key.get("pk", {}).get("S", "")).startswith("DISPATCH#"):
                        stats.poll_reads = 1
                probes.record_call((current_component(), service, operation, table), stats)

        self._patch(BaseClient, "_make_api_call", counted)

    def _wrap_paho(self) -> None:
        import paho.mqtt.client as mqtt

        original = mqtt.Client.publish
        probes = self

        def publish(client: Any, topic: str, payload: Any = None, *args: Any, **kwargs: Any) -> Any:
            size = len(payload) if isinstance(payload, bytes | bytearray | str) else 0
            probes.record_publish(topic, size)
            return original(client, topic, payload, *args, **kwargs)

        self._patch(mqtt.Client, "publish", publish)

    def _wrap_broker_publish(self) -> None:
        from local.broker import BrokerProcess, RunningBroker

        probes = self
        for owner in (BrokerProcess, RunningBroker):
            original = owner.publish

            def publish(
                broker: Any, topic: str, payload: bytes, *args: Any, _original: Any = original, **kwargs: Any
            ) -> None:
                probes.record_publish(topic, len(payload))
                _original(broker, topic, payload, *args, **kwargs)

            self._patch(owner, "publish", publish)

    def _wrap_handlers(self) -> None:
        from chalicelib.payments import service as payments
        from chalicelib.payments import terminal_events
        from local import api_server

        probes = self

        def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                with component(name if name != "api.order.payment" else "api.order"):
                    try:
                        return function(*args, **kwargs)
                    finally:
                        probes.record_handler(name, (time.perf_counter() - started) * 1000)

            return wrapper

        self._patch(terminal_events, "handle_event", timed("terminal_events", terminal_events.handle_event))
        self._patch(terminal_events, "handle_status", timed("terminal_status", terminal_events.handle_status))
        self._patch(payments, "request_payment", timed("api.order.payment", payments.request_payment))

        original_handle = api_server._Handler._handle

        def handle(handler: Any) -> None:
            name = api_component(handler.path)
            started = time.perf_counter()
            with component(name):
                try:
                    original_handle(handler)
                finally:
                    probes.record_handler(name, (time.perf_counter() - started) * 1000)

        for method in ("do_GET", "do_POST"):
            self._patch(api_server._Handler, method, handle)


class TimingWaker:
    """Delegates to a real waker and records how long each poll wait lasted."""

    def __init__(self, inner: Any, probes: Probes) -> None:
        self.inner = inner
        self._probes = probes

    def wait(self, request_id: str, timeout_s: float) -> None:
        started = time.perf_counter()
        try:
            self.inner.wait(request_id, timeout_s)
        finally:
            self._probes.record_wait((time.perf_counter() - started) * 1000)

    def wake(self, request_id: str) -> None:
        self.inner.wake(request_id)


class ResultClock:
    """When each order's result left its simulated terminal (``time.perf_counter``, seconds).

    Wraps ``SimulatedTerminal._complete`` (which knows the order) and ``_send_event`` (the publish):
    the stamp is taken as paho's ``publish`` returns, i.e. once the PUBLISH is on the socket.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.published: dict[str, float] = {}
        self._order = threading.local()
        self._undo: list[Callable[[], None]] = []

    def install(self) -> ResultClock:
        from local.simulator import SimulatedTerminal

        clock = self
        original_complete = SimulatedTerminal._complete
        original_send = SimulatedTerminal._send_event

        def complete(terminal: Any, payment: Any, body: dict[str, Any]) -> bool:
            clock._order.order_id = payment.request["body"]["order_id"]
            try:
                return bool(original_complete(terminal, payment, body))
            finally:
                clock._order.order_id = None

        def send_event(terminal: Any, message_type: str, request_id: str, body: dict[str, Any]) -> None:
            original_send(terminal, message_type, request_id, body)
            order_id = getattr(clock._order, "order_id", None)
            if message_type == "result" and order_id:
                with clock._lock:
                    clock.published[order_id] = time.perf_counter()

        SimulatedTerminal._complete = complete  # type: ignore[method-assign]
        SimulatedTerminal._send_event = send_event  # type: ignore[method-assign]
        self._undo = [
            lambda: setattr(SimulatedTerminal, "_complete", original_complete),
            lambda: setattr(SimulatedTerminal, "_send_event", original_send),
        ]
        return self

    def uninstall(self) -> None:
        for undo in self._undo:
            undo()

    def published_at(self, order_id: str) -> float | None:
        with self._lock:
            return self.published.get(order_id)

    def drain(self) -> dict[str, float]:
        """Every stamp taken since the last drain, forgotten here."""
        with self._lock:
            published, self.published = self.published, {}
        return published


# -- DynamoDB request units from item sizes -------------------------------------------------------


def _stored_item(client: Any, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The item as moto stores it (wire format), read behind the API so it is not counted."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    from local.moto_server import _write_lock

    # Under the lock that serializes moto's item operations: an item is read whole, never mid-update.
    with _write_lock:
        try:
            backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][client.meta.region_name]
            item = backend.get_item(table, key)
        except Exception:
            return None
        return item.to_json()["Attributes"] if item is not None else None


def _stored_sizes(client: Any, operation: str, params: dict[str, Any]) -> list[int]:
    """Sizes of the stored items a write touches (UpdateItem, DeleteItem, each transact item)."""
    if operation in ("UpdateItem", "DeleteItem", "PutItem"):
        return [cost.item_size(_stored_item(client, params["TableName"], params.get("Key") or _key_of(params)))]
    if operation == "TransactWriteItems":
        sizes = []
        for entry in params.get("TransactItems", []):
            (_kind, body), *_ = entry.items()
            sizes.append(cost.item_size(_stored_item(client, body["TableName"], body.get("Key") or _key_of(body))))
        return sizes
    return []


def _key_of(params: dict[str, Any]) -> dict[str, Any]:
    # A Put names no key: the item's own key attributes are in it; moto ignores the rest.
    item = params.get("Item") or {}
    return {name: value for name, value in item.items() if name in ("pk", "sk", "terminal_id")}


def _request_units(
    operation: str, params: dict[str, Any], response: Any, before: list[int], after: list[int]
) -> tuple[float, float]:
    """(RRU, WRU) of one DynamoDB call; a failed conditional write still costs its write units."""
    consistent = bool(params.get("ConsistentRead", False))
    if operation == "GetItem":
        item = (response or {}).get("Item")
        return cost.read_units(cost.item_size(item), consistent), 0.0
    if operation in ("Query", "Scan"):
        items = (response or {}).get("Items") or []
        return cost.read_units(sum(cost.item_size(i) for i in items), consistent), 0.0
    if operation == "TransactGetItems":
        responses = (response or {}).get("Responses") or []
        return sum(cost.read_units(cost.item_size(r.get("Item")), True, transactional=True) for r in responses), 0.0
    if operation == "PutItem":
        return 0.0, cost.write_units(max(cost.item_size(params.get("Item")), *before, 0))
    if operation in ("UpdateItem", "DeleteItem"):
        return 0.0, cost.write_units(max([0, *before, *after]))
    if operation == "TransactWriteItems":
        units = 0.0
        for index, entry in enumerate(params.get("TransactItems", [])):
            (_kind, body), *_ = entry.items()
            size = max(cost.item_size(body.get("Item")), before[index] if index < len(before) else 0)
            size = max(size, after[index] if index < len(after) else 0)
            units += cost.write_units(size, transactional=True)
        return 0.0, units
    if operation == "BatchWriteItem":
        requests = [r for rs in (params.get("RequestItems") or {}).values() for r in rs]
        return 0.0, sum(cost.write_units(cost.item_size((r.get("PutRequest") or {}).get("Item"))) for r in requests)
    return 0.0, 0.0


class ThreadCpu:
    """CPU time by thread group (the broker, the pollers, the API's request threads, the simulated
    terminals…): where a scenario's CPU went. Live threads are read from their own CPU clocks; a
    thread that ends (an API request thread, an ECR) adds its ``thread_time`` as it ends."""

    def __init__(self) -> None:
        self._ended: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._original_run: Any = None

    @staticmethod
    def group(name: str) -> str:
        if "process_request_thread" in name:
            return "api request threads"
        base = re.sub(r"\s*\(.*\)$", "", name)
        if base.startswith("paho-mqtt-client-"):
            client = base.removeprefix("paho-mqtt-client-")
            return "MQTT channel (paho)" if not client else "simulated terminals (paho)"
        if base == "mqtt-broker-events":
            return "broker relay (rules, presence)"
        if base.startswith("ecr-"):
            return "ECR threads (the load)"
        if base.startswith("Thread-"):
            return "other threads (timers…)"
        return re.sub(r"([-_]?\d+)+$", "", base) or name

    def install(self) -> ThreadCpu:
        original = threading.Thread.run
        probe = self

        def run(thread: threading.Thread) -> None:
            try:
                original(thread)
            finally:
                with probe._lock:
                    probe._ended[probe.group(thread.name)] += time.thread_time()

        self._original_run = original
        threading.Thread.run = run  # type: ignore[method-assign]
        return self

    def uninstall(self) -> None:
        if self._original_run is not None:
            threading.Thread.run = self._original_run  # type: ignore[method-assign]
            self._original_run = None

    def snapshot(self) -> dict[str, float]:
        """Seconds of CPU per group so far (ended threads included)."""
        with self._lock:
            totals = defaultdict(float, self._ended)
        for thread in threading.enumerate():
            if thread.ident is None:
                continue
            try:
                seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (OSError, AttributeError):
                continue  # ended meanwhile, or no per-thread clocks on this platform
            totals[self.group(thread.name)] += seconds
        return dict(totals)

    @staticmethod
    def per_payment(before: dict[str, float], after: dict[str, float], payments: int) -> dict[str, float]:
        """Milliseconds of CPU per payment by group, largest first, groups under 0.05 ms left out."""
        n = max(payments, 1)
        spent = {name: (after[name] - before.get(name, 0.0)) * 1000 / n for name in after}
        return {name: round(ms, 2) for name, ms in sorted(spent.items(), key=lambda kv: -kv[1]) if ms >= 0.05}

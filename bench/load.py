"""The load: an ECR's keep-alive HTTP client, the bare floors, sequential and concurrent payments.

These run in the ECRs' own process (``bench/ecr.py``), never in the stack's: a load thread in the
stack's process would take its share of the stack's GIL and count in its CPU. All traffic goes to
127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import paho.mqtt.client as mqtt

HTTP_TIMEOUT_S = 180.0


class EcrClient:
    """One keep-alive HTTP/1.1 connection with Nagle off, as a well-behaved ECR would hold."""

    def __init__(self, host: str, port: int, login: str = "", password: str = "") -> None:
        self.host, self.port = host, port
        token = base64.b64encode(f"{login}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self._conn: http.client.HTTPConnection | None = None
        self.connects = 0

    def connect(self) -> None:
        """Open the connection now (an ECR keeps one open), rather than with the first request."""
        self._connection()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT_S)
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            self.connects += 1
        return self._conn

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes, float]:
        """(status, body, perf_counter when the whole answer was read); raises on a transport error."""
        payload = json.dumps(body).encode() if body is not None else None
        conn = self._connection()
        try:
            conn.request(method, path, body=payload, headers=self.headers)
            response = conn.getresponse()
            data = response.read()
            received = time.perf_counter()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.getheader("connection", "").lower() == "close":
            self.close()
        return response.status, data, received

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# -- the floor -------------------------------------------------------------------------------------


def http_floor(host: str, port: int, samples: int) -> list[float]:
    """Round trips of GET /v1/connector/healthcheck on one keep-alive connection, in ms."""
    client = EcrClient(host, port)
    client.request("GET", "/v1/connector/healthcheck")  # connect and warm up outside the samples
    round_trips = []
    for _ in range(samples):
        started = time.perf_counter()
        status, _body, received = client.request("GET", "/v1/connector/healthcheck")
        if status != 200:
            raise RuntimeError(f"healthcheck answered {status}")
        round_trips.append((received - started) * 1000)
    client.close()
    return round_trips


def mqtt_floor(host: str, port: int, samples: int, timeout_s: float = 5.0) -> list[float]:
    """QoS 1 request → response between two paho clients through the broker (Nagle off), in ms."""
    tag = uuid.uuid4().hex[:8]
    request_topic, response_topic = f"bench/{tag}/request", f"bench/{tag}/response"
    answered = threading.Event()
    expected: list[bytes] = [b""]

    def nodelay(_c: Any, _u: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def client(name: str, topic: str, on_message: Callable[..., None]) -> mqtt.Client:
        subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{name}-{tag}", protocol=mqtt.MQTTv311)
        c.on_socket_open = nodelay
        c.on_connect = lambda cl, *_a: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *_a: subscribed.set()
        c.on_message = on_message
        c.connect(host, port, keepalive=30)
        c.loop_start()
        if not subscribed.wait(timeout_s):
            raise RuntimeError(f"bench MQTT client {name} could not subscribe")
        return c

    def on_response(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.payload == expected[0]:
            answered.set()

    responder = client("responder", request_topic, lambda cl, _u, m: cl.publish(response_topic, m.payload, qos=1))
    requester = client("requester", response_topic, on_response)
    round_trips = []
    try:
        for sample in range(samples + 10):  # the first ten warm up
            expected[0] = f"{sample}".encode()
            answered.clear()
            started = time.perf_counter()
            requester.publish(request_topic, expected[0], qos=1)
            if not answered.wait(timeout_s):
                raise RuntimeError("MQTT floor: no response")
            if sample >= 10:
                round_trips.append((time.perf_counter() - started) * 1000)
    finally:
        for c in (requester, responder):
            c.disconnect()
            c.loop_stop()
    return round_trips


# -- payments --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Terminal:
    manufacturer: str
    serial: str
    customer_ms: int


@dataclass
class Sample:
    """One payment as the ECR saw it; ``added_ms`` = answer received − result published."""

    scenario: str
    order_id: str
    terminal: str
    customer_ms: int
    latency_ms: float
    added_ms: float | None
    outcome: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Payment:
    """One payment as the ECR process records it: ``started`` and ``received`` are ``perf_counter``
    readings (seconds), joined with the terminal's publish time by the bench's process."""

    scenario: str
    order_id: str
    terminal: str
    customer_ms: int
    status: int
    outcome: str
    started: float
    received: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sample(self, published: float | None) -> Sample:
        return Sample(
            scenario=self.scenario,
            order_id=self.order_id,
            terminal=self.terminal,
            customer_ms=self.customer_ms,
            latency_ms=(self.received - self.started) * 1000,
            added_ms=(self.received - published) * 1000 if published is not None else None,
            outcome=self.outcome,
        )


def order_body(order_id: str, terminal: Terminal, amount: int = 1250) -> dict[str, Any]:
    return {
        "order": {"order_id": order_id, "price": {"amount": amount, "currency": "EUR"}},
        "pos_technical_info": {
            "device_information": {"serial_number": terminal.serial, "manufacturer": terminal.manufacturer},
            "terminal_transaction_display": {"protocol": "AppNepting"},
        },
    }


def outcome_of(status: int, body: bytes) -> str:
    """``ok``, or an error kind: ``http_504:terminal.result_timeout``, ``Failed:terminal_busy``…"""
    try:
        parsed = json.loads(body)
    except ValueError:
        return f"http_{status}:not_json"
    if status == 200:
        if parsed.get("paymentStatus") == "Success":
            return "ok"
        return f"Failed:{parsed.get('errorCode')}"
    return f"http_{status}:{(parsed.get('error') or {}).get('code')}"


def pay(client: EcrClient, scenario: str, terminal: Terminal) -> Payment:
    order_id = f"{scenario[:12]}-{uuid.uuid4().hex[:20]}"
    started = time.perf_counter()
    status = 0
    try:
        status, body, received = client.request("POST", "/v1/connector/order", order_body(order_id, terminal))
        outcome = outcome_of(status, body)
    except (OSError, http.client.HTTPException) as exc:
        received, outcome = time.perf_counter(), f"exception:{type(exc).__name__}"
    return Payment(
        scenario=scenario,
        order_id=order_id,
        terminal=f"{terminal.manufacturer}-{terminal.serial}",
        customer_ms=terminal.customer_ms,
        status=status,
        outcome=outcome,
        started=started,
        received=received,
    )


def sequential(
    host: str,
    port: int,
    credentials: tuple[str, str],
    scenario: str,
    terminal: Terminal,
    count: int,
    ready: Callable[[], None] = lambda: None,
) -> tuple[list[Payment], float]:
    """``count`` payments in a row on one connection, after a warm-up payment made before ``ready()``
    returns. Returns the payments and the wall time (s) from the first to the last answer."""
    client = EcrClient(host, port, *credentials)
    pay(client, f"{scenario}-warmup", terminal)
    ready()
    started = time.perf_counter()
    payments = [pay(client, scenario, terminal) for _ in range(count)]
    wall_s = time.perf_counter() - started
    client.close()
    return payments, wall_s


def concurrent(
    host: str,
    port: int,
    credentials: tuple[str, str],
    scenario: str,
    terminals: list[Terminal],
    per_terminal: int,
    offsets_s: list[float] | None = None,
    ready: Callable[[], None] = lambda: None,
) -> tuple[list[Payment], float]:
    """One ECR thread per terminal, each with its connection open before ``ready()`` returns, then
    paying ``per_terminal`` times in a row. ``offsets_s``: each ECR's delay before its first payment
    (``steady`` arrivals); None: all start together (``burst``).

    Returns the payments and the wall time (s) from the start to the last answer.
    """
    payments: list[Payment] = []
    lock = threading.Lock()
    connected = threading.Barrier(len(terminals) + 1)
    go = threading.Event()
    delays = offsets_s if offsets_s is not None else [0.0] * len(terminals)

    def ecr(terminal: Terminal, delay_s: float) -> None:
        client = EcrClient(host, port, *credentials)
        # On a failed connect the first payment connects again, and records a second failure as its outcome.
        with contextlib.suppress(OSError):
            client.connect()
        connected.wait()
        go.wait()
        if delay_s > 0:
            time.sleep(delay_s)
        mine = [pay(client, scenario, terminal) for _ in range(per_terminal)]
        client.close()
        with lock:
            payments.extend(mine)

    threads = [
        threading.Thread(target=ecr, args=(t, d), name=f"ecr-{t.serial}", daemon=True)
        for t, d in zip(terminals, delays, strict=True)
    ]
    for thread in threads:
        thread.start()
    connected.wait(HTTP_TIMEOUT_S)
    ready()
    started = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join(HTTP_TIMEOUT_S * per_terminal + max(delays, default=0.0))
    return payments, time.perf_counter() - started

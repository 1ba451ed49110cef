"""The local stack's broker as the terminals and the cloud use it: routing isolation, retained status
and last will, Nagle, presence, failures. The protocol's corners are in test_broker_protocol.py.

Run as a script to measure what TCP_NODELAY is worth (QoS 1 round trips through the broker):

    python -m tests.integration.test_broker
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from chalicelib.protocol import decode, encode, make_envelope, topic_for, verify_signature
from local.broker import (
    BrokerCrashedError,
    BrokerPortInUseError,
    Connection,
    RunningBroker,
    Subscriptions,
    start_broker,
)

TIMEOUT_S = 10.0
PASSPHRASE = "broker-test-passphrase"


class Recorder:
    """A paho client that records every message it receives, and can wait for one."""

    def __init__(self, broker: RunningBroker, client_id: str, nodelay: bool = True) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._arrived = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if nodelay:
            self.client.on_socket_open = _client_nodelay
        self.client.on_message = self._on_message
        self._broker = broker

    def start(self, *subscriptions: str) -> Recorder:
        self.client.connect(self._broker.host, self._broker.port)
        self.client.loop_start()
        for topic_filter in subscriptions:
            info = self.client.subscribe(topic_filter, qos=1)
            assert info[0] == mqtt.MQTT_ERR_SUCCESS
        # A round trip through our own topic proves the SUBSCRIBEs were processed.
        self.client.subscribe(f"sync/{self.client._client_id.decode()}", qos=1)
        self.sync()
        return self

    def sync(self) -> None:
        """Return once every message the broker sent us before this call has arrived."""
        topic = f"sync/{self.client._client_id.decode()}"
        marker = str(time.monotonic_ns()).encode()
        self.client.publish(topic, marker, qos=1)
        self.wait_for(lambda m: m.topic == topic and m.payload == marker)

    def wait_for(self, predicate: Any, timeout: float = TIMEOUT_S) -> mqtt.MQTTMessage:
        with self._arrived:
            found = self._arrived.wait_for(lambda: next((m for m in self.messages if predicate(m)), None), timeout)
        assert found is not None, f"no matching message within {timeout}s; got {self.topics()}"
        return found

    def topics(self) -> list[str]:
        with self._arrived:
            return [m.topic for m in self.messages if not m.topic.startswith("sync/")]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()


def _client_nodelay(_c: mqtt.Client, _u: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _status(terminal_id: str, state: str) -> bytes:
    return encode(make_envelope("status", f"status-{state}", terminal_id, {"state": state}, PASSPHRASE))


@pytest.fixture
def broker() -> Iterator[RunningBroker]:
    with start_broker() as running:
        yield running


def _terminals_after_cloud_wildcards(broker: RunningBroker) -> dict[str, list[str]]:
    """The cloud holds the wildcards; terminals then come and go the way real ones do."""
    cloud = Recorder(broker, "cloud").start(topic_for("+", "status"), topic_for("+", "events"))
    terminal_ids = ["PAX-0001", "PAX-0002", "PAX-0003", "PAX-0004"]
    terminals: dict[str, Recorder] = {}
    for terminal_id in terminal_ids:
        terminal = Recorder(broker, terminal_id).start(topic_for(terminal_id, "requests"))
        terminal.client.publish(topic_for(terminal_id, "status"), _status(terminal_id, "online"), 1, retain=True)
        cloud.wait_for(lambda m, tid=terminal_id: m.topic == topic_for(tid, "status"))
        terminals[terminal_id] = terminal
    for terminal_id in terminal_ids:
        cloud.client.publish(topic_for(terminal_id, "requests"), b"request", qos=1)
    for terminal_id, terminal in terminals.items():
        terminal.wait_for(lambda m, tid=terminal_id: m.topic == topic_for(tid, "requests"))
        terminal.sync()
    received = {terminal_id: terminal.topics() for terminal_id, terminal in terminals.items()}
    for recorder in [cloud, *terminals.values()]:
        recorder.stop()
    return received


def test_each_terminal_receives_only_its_own_topics_while_the_cloud_holds_wildcards(
    broker: RunningBroker,
) -> None:
    received = _terminals_after_cloud_wildcards(broker)

    assert received == {tid: [topic_for(tid, "requests")] for tid in received}


def test_a_terminal_connecting_while_the_cloud_holds_wildcards_gets_no_other_terminals_retained_status(
    broker: RunningBroker,
) -> None:
    # Connecting must not replay the retained messages of every filter the broker holds (the
    # cloud's ``+/status`` among them) to the new client: only its own subscriptions count.
    cloud = Recorder(broker, "cloud").start(topic_for("+", "status"))
    first = Recorder(broker, "PAX-0001").start()
    first.client.publish(topic_for("PAX-0001", "status"), _status("PAX-0001", "online"), 1, retain=True)
    cloud.wait_for(lambda m: m.topic == topic_for("PAX-0001", "status"))

    late = Recorder(broker, "PAX-0002").start(topic_for("PAX-0002", "requests"))
    watcher = Recorder(broker, "watcher").start(topic_for("+", "status"))

    assert late.topics() == []
    assert watcher.wait_for(lambda m: m.topic == topic_for("PAX-0001", "status")).retain
    for recorder in (cloud, first, late, watcher):
        recorder.stop()


def test_a_message_reaches_each_matching_subscription_once_exact_and_wildcard_alike(broker: RunningBroker) -> None:
    exact = Recorder(broker, "exact").start("shop/1/till")
    plus = Recorder(broker, "plus").start("shop/+/till")
    everything = Recorder(broker, "everything").start("#")
    both = Recorder(broker, "both").start("shop/1/till", "shop/#")
    other = Recorder(broker, "other").start("shop/2/till", "shop/1/till/x", "shop/+")
    publisher = Recorder(broker, "publisher").start()
    # Acknowledged: routed to every subscriber, so each one's sync below comes after it.
    publisher.client.publish("shop/1/till", b"paid", qos=1).wait_for_publish(TIMEOUT_S)
    for recorder in (exact, plus, everything, both, other):
        recorder.sync()
    assert exact.topics() == ["shop/1/till"]
    assert plus.topics() == ["shop/1/till"]
    assert everything.topics() == ["shop/1/till"]
    assert both.topics() == ["shop/1/till", "shop/1/till"]  # once per matching filter
    assert other.topics() == []
    for recorder in (exact, plus, everything, both, other, publisher):
        recorder.stop()


def test_dropped_terminal_connection_delivers_its_retained_offline_last_will(broker: RunningBroker) -> None:
    cloud = Recorder(broker, "cloud").start(topic_for("+", "status"))
    status_topic = topic_for("PAX-WILL1", "status")
    terminal = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="PAX-WILL1")
    terminal.will_set(status_topic, _status("PAX-WILL1", "offline"), qos=1, retain=True)
    terminal.connect(broker.host, broker.port)
    terminal.loop_start()
    terminal.publish(status_topic, _status("PAX-WILL1", "online"), qos=1, retain=True)
    cloud.wait_for(lambda m: m.topic == status_topic and decode(m.payload)["body"] == {"state": "online"})
    terminal.loop_stop()

    # No DISCONNECT packet: the broker only sees the TCP connection end.
    raw_socket = terminal.socket()
    assert isinstance(raw_socket, socket.socket)
    raw_socket.shutdown(socket.SHUT_RDWR)
    raw_socket.close()

    live = decode(
        cloud.wait_for(lambda m: m.topic == status_topic and decode(m.payload)["body"] == {"state": "offline"}).payload
    )
    assert verify_signature(live, PASSPHRASE)
    late = Recorder(broker, "late-subscriber").start(topic_for("+", "status"))
    retained = late.wait_for(lambda m: m.topic == status_topic)
    assert retained.retain
    assert decode(retained.payload)["body"] == {"state": "offline"}
    cloud.stop()
    late.stop()


@pytest.mark.parametrize("nodelay", [True, False])
def test_broker_sets_tcp_nodelay_on_each_accepted_connection(monkeypatch: pytest.MonkeyPatch, nodelay: bool) -> None:
    seen: list[int] = []
    upstream = Connection.connection_made

    def spy(self: Connection, transport: Any) -> None:
        upstream(self, transport)
        seen.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(Connection, "connection_made", spy)
    with start_broker(tcp_nodelay=nodelay) as running:
        Recorder(running, "client").start().stop()

    assert seen == [int(nodelay)]


def test_port_zero_binds_a_free_port_and_a_busy_port_is_named_in_the_error(broker: RunningBroker) -> None:
    assert broker.port > 0
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"

    with pytest.raises(BrokerPortInUseError, match=f"port {broker.port} "):
        start_broker(port=broker.port)


def test_crashed_broker_loop_surfaces_on_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_matching(_self: Subscriptions, topic: str) -> list[Any]:
        raise RuntimeError("routing table corrupted")

    running = start_broker()
    subscriber = Recorder(running, "subscriber").start("orders/#")
    monkeypatch.setattr(Subscriptions, "matching", broken_matching)
    subscriber.client.publish("orders/1", b"x", qos=1)
    deadline = time.monotonic() + TIMEOUT_S
    while not running.crashed and time.monotonic() < deadline:
        time.sleep(0.01)
    subscriber.client.loop_stop()

    with pytest.raises(BrokerCrashedError) as crash:
        running.stop()
    assert isinstance(crash.value.__cause__, RuntimeError)
    assert "routing table corrupted" in str(crash.value.__cause__)


def measure_round_trips(broker: RunningBroker, samples: int, client_nodelay: bool = True) -> list[float]:
    """QoS 1 ping → echo → pong through the broker; milliseconds per round trip."""
    pinger = Recorder(broker, "pinger", nodelay=client_nodelay).start("bench/pong")
    echo = Recorder(broker, "echo", nodelay=client_nodelay).start("bench/ping")
    echo.client.on_message = lambda client, _u, msg: client.publish("bench/pong", msg.payload, qos=1)
    round_trips = []
    for sample in range(samples):
        payload = f"{sample}".encode()
        started = time.perf_counter()
        pinger.client.publish("bench/ping", payload, qos=1)
        pinger.wait_for(lambda m, p=payload: m.topic == "bench/pong" and m.payload == p)
        round_trips.append((time.perf_counter() - started) * 1000)
    pinger.stop()
    echo.stop()
    return round_trips


def test_round_trip_measurement_echoes_every_sample(broker: RunningBroker) -> None:
    round_trips = measure_round_trips(broker, samples=20)

    assert len(round_trips) == 20
    assert all(rtt > 0 for rtt in round_trips)


def _report(samples: int = 300) -> None:
    for broker_nodelay in (True, False):
        for client_nodelay in (True, False):
            with start_broker(tcp_nodelay=broker_nodelay) as running:
                rtts = measure_round_trips(running, samples, client_nodelay)
            cuts = statistics.quantiles(rtts, n=100)
            print(
                f"broker NODELAY={broker_nodelay!s:5} client NODELAY={client_nodelay!s:5} "
                f"QoS1 round trip: p50 {cuts[49]:6.2f} ms  p99 {cuts[98]:6.2f} ms  (n={samples})"
            )


if __name__ == "__main__":
    _report()


class PresenceLog:
    """Collects the broker's lifecycle events (called on the broker's loop)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._arrived = threading.Condition()

    def __call__(self, event: dict[str, Any]) -> None:
        with self._arrived:
            self.events.append(event)
            self._arrived.notify_all()

    def wait_for(self, client_id: str, kind: str, count: int = 1) -> list[dict[str, Any]]:
        def matching() -> list[dict[str, Any]]:
            return [e for e in self.events if e["clientId"] == client_id and e["eventType"] == kind]

        with self._arrived:
            assert self._arrived.wait_for(lambda: len(matching()) >= count, TIMEOUT_S), self.events
            return matching()


def test_broker_reports_connects_and_disconnects_with_session_ids_and_its_own_clock() -> None:
    presence = PresenceLog()
    with start_broker(on_presence=presence) as broker:
        before = time.time_ns() // 1_000_000
        first = Recorder(broker, "PAX-1").start()
        (connected,) = presence.wait_for("PAX-1", "connected")
        first.client.loop_stop()
        first.client.socket().close()  # dropped, not a clean disconnect
        (dropped,) = presence.wait_for("PAX-1", "disconnected")
        second = Recorder(broker, "PAX-1").start()
        connects = presence.wait_for("PAX-1", "connected", 2)
        second.stop()
        presence.wait_for("PAX-1", "disconnected", 2)
    assert dropped["sessionIdentifier"] == connected["sessionIdentifier"]
    assert connects[1]["sessionIdentifier"] != connected["sessionIdentifier"]
    assert before <= connected["timestamp"] <= dropped["timestamp"] <= connects[1]["timestamp"]
    assert set(connected) >= {"clientId", "timestamp", "eventType", "sessionIdentifier"}


def test_restart_keeps_the_port_reports_every_drop_and_clients_reconnect() -> None:
    presence = PresenceLog()
    with start_broker(on_presence=presence) as broker:
        port = broker.port
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="PAX-2")
        client.reconnect_delay_set(min_delay=1, max_delay=1)
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            presence.wait_for("PAX-2", "connected")
            broker.restart()
            assert broker.port == port
            presence.wait_for("PAX-2", "disconnected")
            # paho reconnects on its own, as terminals and the cloud's clients do
            reconnected = presence.wait_for("PAX-2", "connected", 2)
        finally:
            client.disconnect()
            client.loop_stop()
    assert reconnected[0]["sessionIdentifier"] != reconnected[1]["sessionIdentifier"]

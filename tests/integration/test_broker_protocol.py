"""The local broker's MQTT 3.1.1 as IoT Core documents it: sessions, QoS, subscriptions, retained
messages and wills, keep-alive, take-over, IoT Core's limits, and malformed input that ends one
connection and nothing else. Raw sockets where the bytes matter, paho where a client's view does."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from local.broker import IOT_CORE_LIMITS, RunningBroker, start_broker
from tests.integration.test_broker import TIMEOUT_S, PresenceLog, Recorder

# -- packets, as a client writes them ------------------------------------------------------------


def _length(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def packet(header: int, body: bytes) -> bytes:
    return bytes((header,)) + _length(len(body)) + body


def connect(
    client_id: str | bytes,
    *,
    clean: bool = True,
    keep_alive: int = 60,
    will: tuple[str, bytes, int, bool] | None = None,
    level: int = 4,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _string(topic) + _string(message)
    return packet(0x10, _string("MQTT") + bytes((level, flags)) + keep_alive.to_bytes(2, "big") + payload)


def publish(topic: str | bytes, payload: bytes, qos: int = 0, packet_id: int = 1, retain: bool = False) -> bytes:
    body = _string(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return packet(0x30 | (qos << 1) | int(retain), body)


def subscribe(packet_id: int, *filters: tuple[str | bytes, int]) -> bytes:
    return packet(0x82, packet_id.to_bytes(2, "big") + b"".join(_string(f) + bytes((q,)) for f, q in filters))


def unsubscribe(packet_id: int, *filters: str) -> bytes:
    return packet(0xA2, packet_id.to_bytes(2, "big") + b"".join(_string(f) for f in filters))


def puback(packet_id: int) -> bytes:
    return packet(0x40, packet_id.to_bytes(2, "big"))


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


class Raw:
    """A client speaking bytes: it writes packets and reads the broker's, one at a time."""

    def __init__(self, broker: RunningBroker) -> None:
        self.sock = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""

    def send(self, data: bytes) -> Raw:
        self.sock.sendall(data)
        return self

    def _read(self, count: int) -> bytes | None:
        while len(self._buffer) < count:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def read(self) -> tuple[int, bytes]:
        """The next packet: (first byte, body). Fails if the broker closed the connection instead."""
        found = self.read_or_closed()
        assert found is not None, "the broker closed the connection"
        return found

    def read_or_closed(self) -> tuple[int, bytes] | None:
        head = self._read(1)
        if head is None:
            return None
        length, shift = 0, 0
        while True:
            digit = self._read(1)
            if digit is None:
                return None
            length |= (digit[0] & 0x7F) << shift
            shift += 7
            if not digit[0] & 0x80:
                break
        body = self._read(length) if length else b""
        return None if body is None else (head[0], body)

    def connected(self, client_id: str, **options: Any) -> Raw:
        self.send(connect(client_id, **options))
        assert self.read() == (0x20, b"\x00\x00")
        return self

    def closed(self) -> bool:
        """True once the broker closed the connection; packets it sent before are skipped."""
        while self.read_or_closed() is not None:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def received_publish(packet_read: tuple[int, bytes]) -> tuple[int, str, int, bytes]:
    """(flags, topic, packet id or 0, payload) of a PUBLISH the broker sent."""
    header, body = packet_read
    assert header >> 4 == 3, f"not a PUBLISH: {header:#x}"
    size = int.from_bytes(body[:2], "big")
    topic, rest = body[2 : 2 + size].decode(), body[2 + size :]
    if header & 0x06:
        return header & 0x0F, topic, int.from_bytes(rest[:2], "big"), rest[2:]
    return header & 0x0F, topic, 0, rest


@pytest.fixture
def presence() -> PresenceLog:
    return PresenceLog()


@pytest.fixture
def broker(presence: PresenceLog) -> Iterator[RunningBroker]:
    with start_broker(on_presence=presence) as running:
        yield running


def assert_broker_still_serves(broker: RunningBroker, client_id: str = "bystander") -> None:
    probe = Recorder(broker, client_id).start("probe/#")
    probe.client.publish("probe/1", b"still here", qos=1)
    assert probe.wait_for(lambda m: m.topic == "probe/1").payload == b"still here"
    probe.stop()
    assert not broker.crashed


def disconnect_reason(presence: PresenceLog, client_id: str, count: int = 1) -> str:
    return str(presence.wait_for(client_id, "disconnected", count)[count - 1]["disconnectReason"])


# -- CONNECT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [3, 5])
def test_a_protocol_level_other_than_4_gets_connack_0x01_and_the_connection_closes(
    broker: RunningBroker, level: int
) -> None:
    raw = Raw(broker).send(connect("PAX-OLD", level=level))

    assert raw.read() == (0x20, b"\x00\x01")
    assert raw.closed()


def test_a_persistent_session_without_a_client_id_gets_connack_0x02(broker: RunningBroker) -> None:
    raw = Raw(broker).send(connect("", clean=False))

    assert raw.read() == (0x20, b"\x00\x02")
    assert raw.closed()


def test_a_client_id_over_iot_cores_128_bytes_gets_connack_0x02(broker: RunningBroker) -> None:
    accepted = Raw(broker).connected("P" * 128)
    refused = Raw(broker).send(connect("P" * 129))

    assert refused.read() == (0x20, b"\x00\x02")
    assert refused.closed()
    accepted.send(PINGREQ)
    assert accepted.read() == (0xD0, b"")


def test_an_empty_client_id_with_a_clean_session_is_given_one(broker: RunningBroker) -> None:
    raw = Raw(broker).connected("")
    raw.send(subscribe(1, ("anon/1", 1)))
    assert raw.read() == (0x90, b"\x00\x01\x01")
    raw.send(publish("anon/1", b"hello", qos=1, packet_id=7))

    replies = [raw.read(), raw.read()]

    assert (0x40, b"\x00\x07") in replies
    (delivered,) = [received_publish(p) for p in replies if p[0] >> 4 == 3]
    assert delivered[1:] == ("anon/1", delivered[2], b"hello")


@pytest.mark.parametrize("first", [subscribe(1, ("a", 0)), PINGREQ, publish("a", b"x"), DISCONNECT])
def test_a_first_packet_that_is_not_connect_closes_the_connection(broker: RunningBroker, first: bytes) -> None:
    raw = Raw(broker).send(first)

    assert raw.closed()
    assert_broker_still_serves(broker)


def test_a_second_connect_on_one_connection_closes_it_with_its_will(
    broker: RunningBroker, presence: PresenceLog
) -> None:
    watcher = Recorder(broker, "watcher").start("wills/#")
    raw = Raw(broker).connected("PAX-TWICE", will=("wills/PAX-TWICE", b"gone", 1, False))

    raw.send(connect("PAX-TWICE"))

    assert raw.closed()
    assert disconnect_reason(presence, "PAX-TWICE") == "CLIENT_ERROR"
    assert watcher.wait_for(lambda m: m.topic == "wills/PAX-TWICE").payload == b"gone"
    watcher.stop()


# -- sessions ------------------------------------------------------------------------------------


def test_a_persistent_session_keeps_its_subscriptions_and_queues_qos1_messages_while_away(
    broker: RunningBroker,
) -> None:
    away = Raw(broker).connected("PAX-AWAY", clean=False)
    away.send(subscribe(1, ("orders/#", 1)))
    assert away.read() == (0x90, b"\x00\x01\x01")
    away.send(DISCONNECT)
    assert away.closed()
    publisher = Recorder(broker, "publisher").start()
    publisher.client.publish("orders/1", b"kept", qos=1)
    publisher.client.publish("orders/2", b"not kept: QoS 0", qos=0)
    publisher.sync()

    back = Raw(broker).send(connect("PAX-AWAY", clean=False))

    assert back.read() == (0x20, b"\x01\x00")  # session present
    flags, topic, packet_id, payload = received_publish(back.read())
    assert (flags, topic, payload) == (0x02, "orders/1", b"kept")
    back.send(puback(packet_id))
    publisher.client.publish("orders/3", b"live", qos=1)
    assert received_publish(back.read())[1:4:2] == ("orders/3", b"live")
    publisher.stop()


def test_a_clean_session_ends_the_persistent_one_before_it(broker: RunningBroker) -> None:
    away = Raw(broker).connected("PAX-RESET", clean=False)
    away.send(subscribe(1, ("orders/#", 1)))
    away.read()
    away.send(DISCONNECT)
    assert away.closed()
    publisher = Recorder(broker, "publisher").start()
    publisher.client.publish("orders/1", b"queued", qos=1)
    publisher.sync()

    clean = Raw(broker).send(connect("PAX-RESET", clean=True))
    assert clean.read() == (0x20, b"\x00\x00")
    clean.send(DISCONNECT)
    assert clean.closed()
    again = Raw(broker).send(connect("PAX-RESET", clean=False))

    assert again.read() == (0x20, b"\x00\x00")  # nothing left: no session, no queued message
    again.send(PINGREQ)
    assert again.read() == (0xD0, b"")
    publisher.stop()


def test_a_persistent_session_not_resumed_within_its_expiry_is_gone() -> None:
    short = replace(IOT_CORE_LIMITS, persistent_session_expiry_s=0.05)
    with start_broker(limits=short) as broker:
        away = Raw(broker).connected("PAX-GONE", clean=False)
        away.send(subscribe(1, ("orders/#", 1)))
        away.read()
        away.send(DISCONNECT)
        assert away.closed()
        time.sleep(1.0)  # twenty expiries: the broker's timer has fired

        back = Raw(broker).send(connect("PAX-GONE", clean=False))

        assert back.read() == (0x20, b"\x00\x00")  # a new session: the old one and its subscription expired


def test_an_unacknowledged_qos1_message_is_sent_again_with_dup_on_reconnect(broker: RunningBroker) -> None:
    first = Raw(broker).connected("PAX-DUP", clean=False)
    first.send(subscribe(1, ("req/PAX-DUP", 1)))
    first.read()
    publisher = Recorder(broker, "publisher").start()
    publisher.client.publish("req/PAX-DUP", b"pay 7.00", qos=1)
    flags, _topic, packet_id, _payload = received_publish(first.read())
    assert flags == 0x02
    first.close()  # gone before its PUBACK

    second = Raw(broker).send(connect("PAX-DUP", clean=False))

    assert second.read() == (0x20, b"\x01\x00")
    again = received_publish(second.read())
    assert again == (0x0A, "req/PAX-DUP", packet_id, b"pay 7.00")  # DUP, QoS 1, the same packet id
    publisher.stop()


def test_a_second_connection_with_the_same_client_id_takes_over_and_the_first_is_closed(
    broker: RunningBroker, presence: PresenceLog
) -> None:
    watcher = Recorder(broker, "watcher").start("wills/#")
    first = Raw(broker).connected("PAX-TWIN", will=("wills/PAX-TWIN", b"first gone", 1, False))
    (first_connect,) = presence.wait_for("PAX-TWIN", "connected")

    second = Raw(broker).connected("PAX-TWIN")

    assert first.closed()
    (dropped,) = presence.wait_for("PAX-TWIN", "disconnected")
    assert (dropped["sessionIdentifier"], dropped["disconnectReason"]) == (
        first_connect["sessionIdentifier"],
        "DUPLICATE_CLIENTID",
    )
    events = [e["eventType"] for e in presence.events if e["clientId"] == "PAX-TWIN"]
    assert events == ["connected", "disconnected", "connected"]
    assert watcher.wait_for(lambda m: m.topic == "wills/PAX-TWIN").payload == b"first gone"
    second.send(PINGREQ)
    assert second.read() == (0xD0, b"")
    watcher.stop()


# -- QoS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "qos2",
    [
        publish("orders/1", b"x", qos=2, packet_id=3),
        subscribe(1, ("orders/#", 2)),
        packet(0x62, b"\x00\x01"),  # PUBREL
    ],
    ids=["publish", "subscribe", "pubrel"],
)
def test_qos2_is_not_supported_and_closes_the_connection_unacknowledged(
    broker: RunningBroker, presence: PresenceLog, qos2: bytes
) -> None:
    raw = Raw(broker).connected("PAX-QOS2")

    raw.send(qos2)

    assert raw.read_or_closed() is None  # no PUBACK, no SUBACK: closed
    assert disconnect_reason(presence, "PAX-QOS2") == "CLIENT_ERROR"


def test_a_will_with_qos2_is_refused_at_connect(broker: RunningBroker) -> None:
    raw = Raw(broker).send(connect("PAX-W2", will=("wills/x", b"x", 2, False)))

    assert raw.read_or_closed() is None


def test_a_message_is_delivered_at_the_lower_of_the_published_and_granted_qos(broker: RunningBroker) -> None:
    low = Raw(broker).connected("low")
    low.send(subscribe(1, ("m/1", 0)))
    low.read()
    high = Raw(broker).connected("high")
    high.send(subscribe(1, ("m/1", 1)))
    high.read()
    publisher = Raw(broker).connected("pub")

    publisher.send(publish("m/1", b"a", qos=1, packet_id=5) + publish("m/1", b"b", qos=0))

    assert publisher.read() == (0x40, b"\x00\x05")
    assert [received_publish(low.read())[0] for _ in range(2)] == [0x00, 0x00]
    assert [received_publish(high.read())[0] for _ in range(2)] == [0x02, 0x00]


def test_past_100_unacknowledged_messages_the_next_waits_for_a_puback(broker: RunningBroker) -> None:
    slow = Raw(broker).connected("PAX-SLOW")
    slow.send(subscribe(1, ("q/#", 1)))
    slow.read()
    publisher = Raw(broker).connected("pub")
    for n in range(101):
        publisher.send(publish("q/1", str(n).encode(), qos=1, packet_id=n + 1))
    publisher.send(publish("q/marker", b"m", qos=0))  # QoS 0 is not held by the window

    first = [received_publish(slow.read()) for _ in range(100)]
    marker = received_publish(slow.read())
    assert [p[3] for p in first] == [str(n).encode() for n in range(100)]
    assert marker[1] == "q/marker"  # the 101st did not go out before it

    slow.send(puback(first[0][2]))
    assert received_publish(slow.read())[3] == b"100"


# -- subscriptions -------------------------------------------------------------------------------


def test_invalid_filters_are_refused_with_0x80_and_valid_ones_granted_in_the_same_suback(
    broker: RunningBroker,
) -> None:
    raw = Raw(broker).connected("PAX-FILTERS")

    raw.send(subscribe(9, ("a/#/b", 1), ("a+", 0), ("ok/+", 1), ("", 1), ("ok/#", 0), ("a/b#", 1)))

    assert raw.read() == (0x90, b"\x00\x09" + bytes((0x80, 0x80, 0x01, 0x80, 0x00, 0x80)))


def test_wildcards_match_levels_and_leading_wildcards_skip_dollar_topics() -> None:
    from local.broker import filter_matches

    def matches(topic_filter: str, topic: str) -> bool:
        return filter_matches(topic_filter.split("/"), topic.split("/"))

    assert matches("sport/#", "sport")
    assert matches("sport/+/player", "sport/tennis/player")
    assert matches("+/+", "/finance")
    assert not matches("sport/+", "sport/tennis/player")
    assert not matches("#", "$aws/events")
    assert not matches("+/events", "$aws/events")
    assert matches("$aws/#", "$aws/events")


def test_unsubscribe_stops_delivery_on_that_filter_only(broker: RunningBroker) -> None:
    raw = Raw(broker).connected("PAX-UNSUB")
    raw.send(subscribe(1, ("a/1", 1), ("b/1", 1)))
    raw.read()

    raw.send(unsubscribe(2, "a/1"))
    assert raw.read() == (0xB0, b"\x00\x02")
    raw.send(publish("a/1", b"gone") + publish("b/1", b"kept"))

    assert received_publish(raw.read())[1] == "b/1"


def test_a_connection_holds_at_most_50_subscriptions_the_next_is_refused_with_0x80(broker: RunningBroker) -> None:
    raw = Raw(broker).connected("PAX-MANY")
    for batch in range(7):
        filters = [(f"t/{batch * 8 + n}", 1) for n in range(8) if batch * 8 + n < 50]
        raw.send(subscribe(batch + 1, *filters))
        assert raw.read()[1][2:] == bytes([1] * len(filters))

    raw.send(subscribe(100, ("t/50", 1), ("t/0", 0)))

    assert raw.read() == (0x90, b"\x00\x64\x80\x00")  # a new filter refused; an existing one re-granted


def test_pingreq_gets_pingresp(broker: RunningBroker) -> None:
    raw = Raw(broker).connected("PAX-PING")

    raw.send(PINGREQ)

    assert raw.read() == (0xD0, b"")


# -- retained messages and wills -----------------------------------------------------------------


def test_a_retained_message_goes_live_without_retain_and_to_a_later_subscriber_with_it(
    broker: RunningBroker,
) -> None:
    live = Raw(broker).connected("live")
    live.send(subscribe(1, ("status/+", 1)))
    live.read()
    publisher = Raw(broker).connected("pub")
    publisher.send(publish("status/PAX-1", b"online", qos=1, packet_id=1, retain=True))
    publisher.read()

    later = Raw(broker).connected("later")
    later.send(subscribe(1, ("status/#", 0)))
    assert later.read()[0] == 0x90

    assert received_publish(live.read())[0] == 0x02  # no retain flag on the live copy
    assert received_publish(later.read()) == (0x01, "status/PAX-1", 0, b"online")  # retain, at the granted QoS 0


def test_a_retained_message_with_an_empty_payload_deletes_the_topics_retained_message(
    broker: RunningBroker,
) -> None:
    publisher = Raw(broker).connected("pub")
    publisher.send(publish("status/PAX-2", b"online", qos=1, packet_id=1, retain=True))
    publisher.read()
    publisher.send(publish("status/PAX-2", b"", qos=1, packet_id=2, retain=True))
    publisher.read()

    later = Raw(broker).connected("later")
    later.send(subscribe(1, ("status/+", 1), ("sync/later", 1)))
    later.read()
    later.send(publish("sync/later", b"sync"))

    assert received_publish(later.read())[1] == "sync/later"


@pytest.mark.parametrize("retain", [True, False])
def test_a_dropped_connections_will_is_published_and_retained_only_if_asked(
    broker: RunningBroker, presence: PresenceLog, retain: bool
) -> None:
    watcher = Recorder(broker, "watcher").start("wills/#")
    raw = Raw(broker).connected("PAX-WILL", will=("wills/PAX-WILL", b"offline", 1, retain))

    raw.close()

    assert watcher.wait_for(lambda m: m.topic == "wills/PAX-WILL").payload == b"offline"
    assert disconnect_reason(presence, "PAX-WILL") == "CONNECTION_LOST"
    late = Recorder(broker, "late").start("wills/#")
    assert late.topics() == (["wills/PAX-WILL"] if retain else [])
    watcher.stop()
    late.stop()


def test_disconnect_publishes_no_will_and_is_reported_as_client_initiated(
    broker: RunningBroker, presence: PresenceLog
) -> None:
    watcher = Recorder(broker, "watcher").start("wills/#")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="PAX-BYE")
    client.will_set("wills/PAX-BYE", b"offline", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    presence.wait_for("PAX-BYE", "connected")

    client.disconnect()
    client.loop_stop()

    (gone,) = presence.wait_for("PAX-BYE", "disconnected")
    assert (gone["disconnectReason"], gone["clientInitiatedDisconnect"]) == ("CLIENT_INITIATED_DISCONNECT", True)
    watcher.sync()
    assert watcher.topics() == []
    watcher.stop()


def test_a_client_silent_for_one_and_a_half_keep_alives_is_disconnected_with_its_will() -> None:
    presence = PresenceLog()
    quick = replace(IOT_CORE_LIMITS, min_keep_alive_s=1.0)
    with start_broker(on_presence=presence, limits=quick) as broker:
        watcher = Recorder(broker, "watcher").start("wills/#")
        mute = Raw(broker).connected("PAX-MUTE", keep_alive=1, will=("wills/PAX-MUTE", b"timed out", 1, False))

        assert watcher.wait_for(lambda m: m.topic == "wills/PAX-MUTE").payload == b"timed out"
        assert disconnect_reason(presence, "PAX-MUTE") == "MQTT_KEEP_ALIVE_TIMEOUT"
        assert mute.closed()
        watcher.stop()


class _Transport:
    """What a connection needs of its transport, to feed it bytes without a socket."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def get_extra_info(self, _name: str) -> None:
        return None

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("requested", "kept"), [(0, 1200.0), (10, 30.0), (30, 30.0), (60, 60.0), (5000, 1200.0)])
def test_the_keep_alive_is_bounded_as_iot_core_bounds_it(requested: int, kept: float) -> None:
    from local.broker import Connection, MqttBroker

    loop = asyncio.new_event_loop()
    try:
        connection = Connection(MqttBroker(loop, lambda exc: None))
        transport = _Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        data = connect("PAX-KA", keep_alive=requested)
        connection.get_buffer(-1)[: len(data)] = data
        connection.buffer_updated(len(data))

        assert transport.written == b"\x20\x02\x00\x00"
        assert connection.keep_alive_s == kept
        connection.connection_lost(None)
    finally:
        loop.close()


def test_presence_events_are_reported_for_neither_wildcard_client_ids_nor_refused_connects(
    broker: RunningBroker, presence: PresenceLog
) -> None:
    Raw(broker).connected("odd+id").send(DISCONNECT).closed()
    Raw(broker).send(connect("PAX-V3", level=3)).closed()
    Raw(broker).connected("PAX-AFTER").send(DISCONNECT).closed()

    presence.wait_for("PAX-AFTER", "disconnected")
    assert {e["clientId"] for e in presence.events} == {"PAX-AFTER"}


# -- IoT Core's limits ---------------------------------------------------------------------------

LIMIT = IOT_CORE_LIMITS


@pytest.mark.parametrize(
    ("within", "over"),
    [
        (publish("big/1", b"x" * LIMIT.max_payload_bytes), publish("big/1", b"x" * (LIMIT.max_payload_bytes + 1))),
        (publish("t/" + "x" * 254, b"x"), publish("t/" + "x" * 255, b"x")),
        (publish("a/b/c/d/e/f/g/h", b"x"), publish("a/b/c/d/e/f/g/h/i", b"x")),
        (subscribe(1, *[(f"s/{n}", 0) for n in range(8)]), subscribe(1, *[(f"s/{n}", 0) for n in range(9)])),
        (subscribe(1, ("a/b/c/d/e/f/g/#", 0)), subscribe(1, ("a/b/c/d/e/f/g/h/#", 0))),
    ],
    ids=["payload 128 KB", "topic 256 bytes", "topic 7 slashes", "8 filters per SUBSCRIBE", "filter 7 slashes"],
)
def test_exceeding_an_iot_core_limit_closes_the_connection_and_reaching_it_does_not(
    broker: RunningBroker, presence: PresenceLog, within: bytes, over: bytes
) -> None:
    fine = Raw(broker).connected("PAX-FINE")
    fine.send(within + PINGREQ)
    replies = []
    while (reply := fine.read())[0] != 0xD0:
        replies.append(reply)
    # Still connected (the PINGRESP came), and a SUBSCRIBE within the limits was granted whole.
    assert all(header == 0x90 and 0x80 not in body[2:] for header, body in replies)

    bad = Raw(broker).connected("PAX-OVER")
    bad.send(over)

    assert bad.closed()
    assert disconnect_reason(presence, "PAX-OVER") == "CLIENT_ERROR"


def test_a_payload_of_128_kb_is_delivered_whole(broker: RunningBroker) -> None:
    receiver = Recorder(broker, "receiver").start("big/#")
    payload = bytes(range(256)) * (LIMIT.max_payload_bytes // 256)

    receiver.client.publish("big/1", payload, qos=1)

    assert receiver.wait_for(lambda m: m.topic == "big/1").payload == payload
    receiver.stop()


@pytest.mark.parametrize("topic", ["$aws/things/PAX-1/shadow/update", "$SYS/load"])
def test_publishing_on_a_dollar_topic_closes_the_connection_and_reaches_nobody(
    broker: RunningBroker, presence: PresenceLog, topic: str
) -> None:
    everything = Recorder(broker, "everything").start("#", "$aws/#", "$SYS/#")
    raw = Raw(broker).connected("PAX-DOLLAR")

    raw.send(publish(topic, b"forged", qos=1, packet_id=1))

    assert raw.read_or_closed() is None  # no PUBACK
    assert disconnect_reason(presence, "PAX-DOLLAR") == "AUTH_ERROR"
    everything.sync()
    assert everything.topics() == []
    everything.stop()


# -- malformed input -----------------------------------------------------------------------------

MALFORMED = {
    "remaining length over four bytes": b"\x30\xff\xff\xff\xff\x01",
    "packet type 0": b"\x00\x00",
    "packet type 15": b"\xf0\x00",
    "CONNACK from a client": b"\x20\x02\x00\x00",
    "SUBACK from a client": b"\x90\x03\x00\x01\x00",
    "SUBSCRIBE with flags 0": b"\x80" + subscribe(1, ("a", 0))[1:],
    "PINGREQ with flags": b"\xc1\x00",
    "PINGREQ with a body": b"\xc0\x01\x00",
    "DISCONNECT with flags": b"\xe2\x00",
    "PUBLISH with QoS 3": b"\x36" + publish("a", b"x", qos=1)[1:],
    "DUP on QoS 0": b"\x38" + publish("a", b"x")[1:],
    "PUBLISH truncated topic": b"\x30\x01\x00",
    "PUBLISH topic longer than the packet": b"\x30\x04\x00\x09ab",
    "PUBLISH QoS 1 without packet id": b"\x32\x03\x00\x01a",
    "PUBLISH packet id 0": publish("a", b"x", qos=1, packet_id=0),
    "PUBLISH invalid UTF-8 topic": publish(b"\xff\xfe", b"x"),
    "PUBLISH topic with U+0000": publish(b"a\x00b", b"x"),
    "PUBLISH wildcard topic": publish("a/+", b"x"),
    "PUBLISH empty topic": publish("", b"x"),
    "SUBSCRIBE without filters": packet(0x82, b"\x00\x01"),
    "SUBSCRIBE packet id 0": subscribe(0, ("a", 0)),
    "SUBSCRIBE reserved QoS bits": subscribe(1, ("a", 0x40)),
    "SUBSCRIBE filter without QoS": packet(0x82, b"\x00\x01" + _string("a")),
    "SUBSCRIBE invalid UTF-8 filter": subscribe(1, (b"\xc3\x28", 0)),
    "UNSUBSCRIBE without filters": packet(0xA2, b"\x00\x01"),
    "PUBACK of the wrong length": packet(0x40, b"\x00\x01\x00"),
    "second CONNECT": connect("again"),
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_packet_closes_that_connection_only(
    broker: RunningBroker, presence: PresenceLog, data: bytes
) -> None:
    bystander = Recorder(broker, "bystander").start("probe/#")
    raw = Raw(broker).connected("PAX-BAD", will=("probe/will", b"bad client gone", 1, False))

    raw.send(data)

    assert raw.closed()
    assert disconnect_reason(presence, "PAX-BAD") == "CLIENT_ERROR"
    assert bystander.wait_for(lambda m: m.topic == "probe/will").payload == b"bad client gone"
    bystander.client.publish("probe/1", b"still here", qos=1)
    assert bystander.wait_for(lambda m: m.topic == "probe/1").payload == b"still here"
    bystander.stop()
    assert not broker.crashed


@pytest.mark.parametrize(
    "data",
    [
        packet(0x10, _string("MQTT")),  # ends inside its variable header
        packet(0x10, _string("MQTX") + b"\x04\x02\x00\x3c" + _string("x")),  # unknown protocol name
        packet(0x10, _string("MQTT") + b"\x04\x03\x00\x3c" + _string("x")),  # reserved flag
        packet(0x10, _string("MQTT") + b"\x04\x12\x00\x3c" + _string("x")),  # will QoS without a will
        packet(0x10, _string("MQTT") + b"\x04\x42\x00\x3c" + _string("x") + _string("pw")),  # password, no user
        packet(0x10, _string("MQTT") + b"\x04\x02\x00\x3c" + _string(b"\xff")),  # invalid UTF-8 client id
        packet(0x10, _string("MQTT") + b"\x04\x02\x00\x3c" + _string("x") + b"extra"),  # trailing bytes
        connect("PAX-W", will=("$aws/forged", b"x", 1, False)),  # will on a reserved topic
        packet(0x11, connect("PAX-F")[2:]),  # CONNECT with flags
    ],
)
def test_a_malformed_connect_closes_the_connection_without_connack(broker: RunningBroker, data: bytes) -> None:
    raw = Raw(broker).send(data)

    assert raw.read_or_closed() is None
    assert_broker_still_serves(broker)


def test_a_truncated_packet_then_a_dropped_connection_hurts_nobody(broker: RunningBroker) -> None:
    raw = Raw(broker).connected("PAX-CUT")
    raw.send(publish("a/b", b"x" * 100, qos=1)[:20])
    raw.close()

    assert_broker_still_serves(broker)


def test_a_packet_split_across_many_writes_is_reassembled(broker: RunningBroker) -> None:
    raw = Raw(broker).connected("PAX-SLOWLY")
    raw.send(subscribe(1, ("drip/1", 1)))
    raw.read()

    for byte in publish("drip/1", b"one byte at a time", qos=1, packet_id=4):
        raw.send(bytes((byte,)))

    replies = {p[0] >> 4: p for p in (raw.read(), raw.read())}
    assert replies[4] == (0x40, b"\x00\x04")
    assert received_publish(replies[3])[3] == b"one byte at a time"


# -- fuzzing: whatever a client sends, the broker serves the others --------------------------------

_TOPIC_LEVELS = st.sampled_from(["a", "b", "+", "#", "$x", "", "é", "\x00"])
_NAMES = st.lists(_TOPIC_LEVELS, min_size=1, max_size=4).map("/".join)
_PACKETS = st.one_of(
    st.builds(
        publish,
        _NAMES,
        st.binary(max_size=64),
        st.integers(0, 3),
        st.integers(0, 3),
        st.booleans(),
    ),
    st.builds(
        lambda pid, filters: subscribe(pid, *filters),
        st.integers(0, 3),
        st.lists(st.tuples(_NAMES, st.integers(0, 3)), max_size=10),
    ),
    st.builds(lambda pid, filters: unsubscribe(pid, *filters), st.integers(0, 3), st.lists(_NAMES, max_size=3)),
    st.builds(puback, st.integers(0, 3)),
    st.just(PINGREQ),
    st.just(DISCONNECT),
    st.builds(lambda cid, clean: connect(cid, clean=clean), st.sampled_from(["fz-1", "fz-2", ""]), st.booleans()),
    st.binary(min_size=1, max_size=16),
)


@pytest.fixture(scope="module")
def shared_broker() -> Iterator[RunningBroker]:
    with start_broker() as running:
        yield running


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    client_id=st.sampled_from(["fz-1", "fz-2", "fz-3"]),
    clean=st.booleans(),
    stream=st.one_of(st.binary(max_size=300), st.lists(_PACKETS, max_size=12).map(b"".join)),
    chunk=st.integers(1, 64),
)
def test_random_byte_streams_and_packet_sequences_never_hurt_the_broker_or_other_clients(
    shared_broker: RunningBroker, client_id: str, clean: bool, stream: bytes, chunk: int
) -> None:
    raw = Raw(shared_broker).send(connect(client_id, clean=clean))
    try:
        for start in range(0, len(stream), chunk):
            raw.send(stream[start : start + chunk])
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed by the broker before the stream ended: as it should for a broken client
    raw.close()

    assert_broker_still_serves(shared_broker, "fz-probe")


def test_many_clients_publishing_at_once_each_get_every_acknowledgement(broker: RunningBroker) -> None:
    received: list[str] = []
    done = threading.Event()
    receiver = Recorder(broker, "sink").start("load/#")
    receiver.client.on_message = lambda _c, _u, m: (received.append(m.topic), len(received) == 200 and done.set())
    publishers = [Recorder(broker, f"load-{n}").start() for n in range(4)]

    infos = [p.client.publish(f"load/{n}/{i}", b"x", qos=1) for i in range(50) for n, p in enumerate(publishers)]

    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()
    assert done.wait(TIMEOUT_S)
    assert sorted(received) == sorted(f"load/{n}/{i}" for i in range(50) for n in range(4))
    for recorder in (receiver, *publishers):
        recorder.stop()

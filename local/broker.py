"""The local stack's MQTT 3.1.1 broker, standing in for AWS IoT Core's message broker (docs/architecture.md).

Two ways to run it, with the same surface (``host``, ``port``, ``url``, ``stop()``, ``restart()``,
``crashed``, ``raise_if_crashed()``, a context manager):

- ``start_broker()``: in this process, in its own thread with its own asyncio loop, so synchronous
  code (paho clients, pytest) can start one, talk to it and stop it. Tests that patch the broker
  use this one.
- ``start_broker_process()``: in a child process (``python -m local.broker``), which the local
  stack uses: the broker gets its own GIL and a core of its own, as IoT Core is a service of its
  own on AWS. The child relays its presence events to the parent over a pipe, its logs go to the
  parent's stderr, and it exits by itself when its parent dies; ``pid`` names it.

    >>> with start_broker() as broker:                     # port 0: a free port is picked
    ...     client.connect(broker.host, broker.port)       # doctest: +SKIP

The broker is written on asyncio's low-level protocol callbacks (``BufferedProtocol``): the socket
is read into each connection's own buffer, cut into packets there and each handled there and then
(no task, no coroutine, no stream per packet), and a message's subscribers are found with one dict
lookup for the exact filters and a match only against the wildcard filters. A QoS 1 message routed
costs tens of microseconds of CPU (``python -m bench.broker_bench``).

What it models, as IoT Core documents it for MQTT 3.1.1 (where IoT Core says nothing, MQTT 3.1.1):

- CONNECT first, once: protocol level 4 only (another level gets CONNACK 0x01, an empty client id
  with a persistent session or one over 128 bytes CONNACK 0x02); anything else before CONNECT, or a
  second CONNECT, closes the connection. The keep-alive is bounded as IoT Core bounds it (0 or over
  1200 s: 1200 s; under 30 s: 30 s) and a client silent for 1.5 times it is disconnected.
- Clean and persistent sessions: a ``clean_session=0`` client keeps its subscriptions, its QoS 1
  messages not yet acknowledged and those published while it was away, for an hour; on reconnect
  CONNACK says the session is present, the unacknowledged ones are sent again with DUP set, then
  the queued ones.
- QoS 0 and 1. IoT Core does not support QoS 2 and sends no PUBACK or SUBACK for it: here a QoS 2
  PUBLISH, SUBSCRIBE or will, or any QoS 2 packet (PUBREC, PUBREL, PUBCOMP), closes the connection,
  so the client sees the refusal instead of waiting for an acknowledgement that never comes.
  At most 100 QoS 1 messages are in flight to a client; the next ones wait for its PUBACKs.
- SUBSCRIBE with ``+`` and ``#``; an invalid filter is refused with 0x80 in the SUBACK, as is a
  subscription over the 50 a connection may hold. A client gets a message once per filter of its
  own that matches it, and a wildcard at the first level does not match ``$`` topics.
- Retained messages, sent to a new subscription of the filters that match them (and only to that
  subscription's client); a retained PUBLISH with an empty payload deletes the topic's.
- The last will, published (retained if asked) when a connection ends any way but DISCONNECT.
- A second connection with a client id already connected takes over: the first is closed
  (``DUPLICATE_CLIENTID``) and its will published.
- IoT Core's limits, enforced by closing the connection as IoT Core does: a payload over 128 KB, a
  topic or filter over 256 bytes or with more than 7 slashes, more than 8 filters in one
  SUBSCRIBE. Clients may not publish on ``$`` topics (IoT Core's reserved topics): the connection
  is closed (``AUTH_ERROR``).
- A malformed packet (remaining length over four bytes, truncated fields, an unknown or
  server-only type, wrong fixed-header flags, invalid UTF-8 or U+0000 in a string) closes that one
  connection with its will; the broker and the other clients carry on.

Presence: like IoT Core's lifecycle events (``$aws/events/presence/…``), the broker reports each
client's connect and disconnect from its own connection tracking, with a session id and its own
timestamp, to ``on_presence`` (the local stack hands them to the same presence handler). A
disconnect says why, with IoT Core's ``disconnectReason`` (``CLIENT_INITIATED_DISCONNECT``,
``DUPLICATE_CLIENTID``, ``MQTT_KEEP_ALIVE_TIMEOUT``, ``CONNECTION_LOST``, ``CLIENT_ERROR``,
``AUTH_ERROR``, ``SERVER_INITIATED_DISCONNECT``, ``SERVER_ERROR``) and ``clientInitiatedDisconnect``.
Only the broker produces them, so a terminal cannot forge or replay them. Client ids holding ``#``
or ``+`` get none, as on IoT Core. ``stop()`` returns once the disconnects of the shutdown have
been reported too.

Deliberate differences from IoT Core: no TLS, no authentication and no policies (anyone may
connect with any client id; only ``$`` topics are refused); lifecycle events go to ``on_presence``,
not to ``$aws/events/…`` topics; no MQTT 5, no shared subscriptions, no rate limits (connects per
second, publishes per second, the 10 messages per second of a resumed session's backlog); queued
messages of a persistent session are not capped; retained messages and sessions live as long as
the broker's process. Stopping the broker (``stop()``, ``restart()``) is the service going away:
every client is disconnected (``SERVER_INITIATED_DISCONNECT``) and no will is published.

``restart()`` stops and starts the broker on the same port, as a broker outage would: clients
(terminals, the cloud) reconnect on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from local.children import channel_to_parent, exit_status

# Named, not __name__: run as ``python -m local.broker`` the module is ``__main__``.
log = logging.getLogger("local.broker")

_STARTUP_TIMEOUT_S = 10.0
_SHUTDOWN_TIMEOUT_S = 10.0
# The broker's process starts a fresh interpreter before it listens.
_PROCESS_STARTUP_TIMEOUT_S = 30.0
# How much of what the broker's process printed last a crash report quotes.
_STDERR_TAIL_LINES = 30
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


PresenceHook = Callable[[dict[str, Any]], None]
# A topic rule's name and its event (``topic``, ``payload`` in base64, ``received_at``).
RuleHook = Callable[[str, dict[str, Any]], None]


class BrokerStartError(RuntimeError):
    """The broker could not start listening."""


class BrokerPortInUseError(BrokerStartError):
    """Another process already listens on the requested port."""


class BrokerCrashedError(RuntimeError):
    """The broker's loop failed while running; ``__cause__`` is the original exception."""


class BrokerPublishError(RuntimeError):
    """A message the service's ``publish`` refused (a bad topic, a payload too large) or could not
    hand to the broker (stopped, crashed)."""


@dataclass(frozen=True)
class BrokerLimits:
    """IoT Core's message broker quotas for MQTT 3.1.1 clients (the defaults), and our own timeouts."""

    max_payload_bytes: int = 128 * 1024
    max_topic_bytes: int = 256
    max_topic_slashes: int = 7
    max_client_id_bytes: int = 128
    max_filters_per_subscribe: int = 8
    max_subscriptions_per_connection: int = 50
    max_inflight_to_client: int = 100
    min_keep_alive_s: float = 30.0
    max_keep_alive_s: float = 1200.0
    persistent_session_expiry_s: float = 3600.0
    # Ours (IoT Core does not say): how long a new connection may take to send its CONNECT.
    connect_timeout_s: float = 10.0

    @property
    def max_packet_bytes(self) -> int:
        # The largest payload plus room for a CONNECT's strings (client id, will topic, username,
        # password): a longer packet is refused before it is buffered.
        return self.max_payload_bytes + 4 * 65_537


IOT_CORE_LIMITS = BrokerLimits()

# Packet types (MQTT 3.1.1 section 2.2.1).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# CONNACK return codes.
_UNACCEPTABLE_PROTOCOL_VERSION = 1
_IDENTIFIER_REJECTED = 2
_SUBSCRIPTION_FAILURE = 0x80

# IoT Core's disconnect reasons (lifecycle events).
CLIENT_INITIATED_DISCONNECT = "CLIENT_INITIATED_DISCONNECT"
CLIENT_ERROR = "CLIENT_ERROR"
CONNECTION_LOST = "CONNECTION_LOST"
DUPLICATE_CLIENTID = "DUPLICATE_CLIENTID"
MQTT_KEEP_ALIVE_TIMEOUT = "MQTT_KEEP_ALIVE_TIMEOUT"
AUTH_ERROR = "AUTH_ERROR"
SERVER_INITIATED_DISCONNECT = "SERVER_INITIATED_DISCONNECT"
SERVER_ERROR = "SERVER_ERROR"

_PINGRESP = b"\xd0\x00"
# A connection's read buffer, and the least room a read is given before the buffer doubles.
_READ_BUFFER_BYTES = 16 * 1024
_MIN_READ_BYTES = 4 * 1024


class ProtocolViolation(Exception):
    """What a client did that ends its connection: ``reason`` is IoT Core's disconnect reason."""

    def __init__(self, detail: str, reason: str = CLIENT_ERROR) -> None:
        super().__init__(detail)
        self.reason = reason


def _remaining_length(value: int) -> bytes:
    if value < 128:
        return bytes((value,))
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | 0x80 if value else digit)
        if not value:
            return bytes(out)


def _utf8(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation(f"{what} is not valid UTF-8") from None
    if "\x00" in text:
        raise ProtocolViolation(f"{what} holds U+0000")
    return text


def _field(body: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """A length-prefixed field at ``pos``: its bytes and the position after it."""
    end = pos + 2
    if end > len(body):
        raise ProtocolViolation(f"packet ends inside the length of its {what}")
    end += (body[pos] << 8) | body[pos + 1]
    if end > len(body):
        raise ProtocolViolation(f"packet ends inside its {what}")
    return body[pos + 2 : end], end


def _check_size(name: str, limits: BrokerLimits, what: str) -> None:
    if len(name.encode("utf-8")) > limits.max_topic_bytes:
        raise ProtocolViolation(f"{what} over {limits.max_topic_bytes} bytes")
    if name.count("/") > limits.max_topic_slashes:
        raise ProtocolViolation(f"{what} with more than {limits.max_topic_slashes} slashes")


def _check_topic_name(topic: str, limits: BrokerLimits) -> None:
    """A topic a client publishes on (or names for its will)."""
    if not topic:
        raise ProtocolViolation("empty topic name")
    if "+" in topic or "#" in topic:
        raise ProtocolViolation("wildcard in a topic name")
    _check_size(topic, limits, "topic")
    if topic.startswith("$"):
        raise ProtocolViolation(f"publish on the reserved topic {topic!r}", AUTH_ERROR)


def valid_filter(topic_filter: str) -> bool:
    """MQTT 3.1.1 section 4.7: ``#`` alone as the last level, ``+`` alone in a level."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def filter_matches(levels: list[str], topic_levels: list[str]) -> bool:
    """Whether a valid filter (split on ``/``) matches a topic (split on ``/``)."""
    if topic_levels[0].startswith("$") and levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(levels) == len(topic_levels)


def _rule_filters(rules: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Topic rules as (name, filter split on ``/``); a rule with an invalid filter is a bug of ours."""
    checked = []
    for name, topic_filter in rules:
        if not valid_filter(topic_filter):
            raise ValueError(f"topic rule {name!r}: invalid topic filter {topic_filter!r}")
        checked.append((name, topic_filter.split("/")))
    return checked


def check_service_publish(topic: str, payload: bytes, limits: BrokerLimits = IOT_CORE_LIMITS) -> None:
    """What the data plane's Publish refuses, as ``BrokerPublishError``: the topics and sizes a
    client could not publish either."""
    try:
        _check_topic_name(topic, limits)
    except ProtocolViolation as exc:
        raise BrokerPublishError(str(exc)) from None
    if len(payload) > limits.max_payload_bytes:
        raise BrokerPublishError(f"payload over {limits.max_payload_bytes} bytes")


class Session:
    """What the broker keeps of a client id: its subscriptions and its QoS 1 messages to deliver.

    ``inflight`` holds the messages sent and not yet acknowledged (by packet id), ``queued`` those
    waiting for room in the in-flight window or for the client to come back. A message is
    ``(topic field, payload, retain)``, the topic field being the topic as it goes on the wire.
    """

    __slots__ = ("clean", "client_id", "connection", "expiry", "inflight", "next_packet_id", "queued", "subscriptions")

    def __init__(self, client_id: str, clean: bool) -> None:
        self.client_id = client_id
        self.clean = clean
        self.subscriptions: dict[str, int] = {}
        self.connection: Connection | None = None
        self.inflight: dict[int, tuple[bytes, bytes, bool]] = {}
        self.queued: deque[tuple[bytes, bytes, bool]] = deque()
        self.next_packet_id = 1
        self.expiry: asyncio.TimerHandle | None = None

    def take_packet_id(self) -> int:
        packet_id = self.next_packet_id
        while packet_id in self.inflight:
            packet_id = packet_id % 65535 + 1
        self.next_packet_id = packet_id % 65535 + 1
        return packet_id


class Subscriptions:
    """Every session's filters, indexed: an exact filter is a dict lookup, only wildcards are matched."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[Session, int]] = {}
        self._wildcard: dict[str, tuple[list[str], dict[Session, int]]] = {}

    def add(self, session: Session, topic_filter: str, qos: int) -> None:
        if "+" in topic_filter or "#" in topic_filter:
            self._wildcard.setdefault(topic_filter, (topic_filter.split("/"), {}))[1][session] = qos
        else:
            self._exact.setdefault(topic_filter, {})[session] = qos

    def remove(self, session: Session, topic_filter: str) -> None:
        if topic_filter in self._exact:
            holders = self._exact[topic_filter]
            holders.pop(session, None)
            if not holders:
                del self._exact[topic_filter]
        elif topic_filter in self._wildcard:
            holders = self._wildcard[topic_filter][1]
            holders.pop(session, None)
            if not holders:
                del self._wildcard[topic_filter]

    def matching(self, topic: str) -> list[tuple[Session, int]]:
        """``(session, granted QoS)`` once for each filter matching ``topic``."""
        exact = self._exact.get(topic)
        found = list(exact.items()) if exact else []
        if self._wildcard:
            topic_levels = topic.split("/")
            for levels, holders in self._wildcard.values():
                if filter_matches(levels, topic_levels):
                    found.extend(holders.items())
        return found


class Connection(asyncio.BufferedProtocol):
    """One client's TCP connection: its bytes are cut into packets and handled as they arrive.

    A ``BufferedProtocol``: the socket is read straight into this connection's buffer. (A plain
    ``Protocol`` gets a new ``bytes`` per read, which asyncio's selector loop allocates at 256 KiB
    and shrinks: an mmap and munmap per read, about 20 µs, as much as handling the packet.)
    """

    def __init__(self, broker: MqttBroker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray(_READ_BUFFER_BYTES)
        self.filled = 0
        self.session: Session | None = None
        self.session_id = ""
        self.will: tuple[str, bytes, bytes, int, bool] | None = None
        self.keep_alive_s = 0.0
        self.last_heard = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport (a TCP server's)
        # Every MQTT exchange here is a small packet followed by a wait for the peer (PUBLISH, then
        # PUBACK); with Nagle on, a second small write behind an unacknowledged one waits for the
        # peer's delayed ACK, ~40 ms on Linux. asyncio already disables Nagle on its transports;
        # doing it here makes the guarantee ours, and lets the benchmark turn it back on.
        sock = self.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.broker.tcp_nodelay))
        self.broker.accepted(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        # Grown here only: while the loop holds the view it reads into, the buffer cannot change size.
        # A packet is at most ``max_packet_bytes`` (longer ones are refused before they are read), so
        # neither can the buffer grow past about twice that.
        if len(self.buffer) - self.filled < _MIN_READ_BYTES:
            self.buffer.extend(bytes(len(self.buffer)))
        return memoryview(self.buffer)[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.ended:
            return
        self.last_heard = self.broker.loop.time()
        buffer = self.buffer
        size = self.filled = self.filled + nbytes
        start = 0
        try:
            while size - start >= 2:
                # The remaining length: up to four bytes of 7 bits each, low digit first.
                pos, length, shift = start + 1, 0, 0
                while True:
                    if pos >= size:
                        return
                    digit = buffer[pos]
                    pos += 1
                    length |= (digit & 0x7F) << shift
                    if not digit & 0x80:
                        break
                    shift += 7
                    if shift == 28:
                        raise ProtocolViolation("remaining length over four bytes")
                if length > self.broker.limits.max_packet_bytes:
                    raise ProtocolViolation(f"packet of {length} bytes")
                end = pos + length
                if end > size:
                    return
                header = buffer[start]
                body = bytes(buffer[pos:end])
                start = end
                self.broker.packets_received += 1
                self.handle(header, body)
                if self.ended:
                    return
        except ProtocolViolation as violation:
            self.broker.end(self, violation.reason, str(violation))
        except Exception as exc:  # a bug of the broker, not the client's doing: the broker stops loudly
            self.broker.fatal(exc)
        finally:
            if start:
                # The unread rest moves to the front, in place (a same-length slice assignment).
                rest = size - start
                buffer[:rest] = buffer[start:size]
                self.filled = rest

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost says the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.end(self, CONNECTION_LOST, str(exc) if exc else "")

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def handle(self, header: int, body: bytes) -> None:
        kind, flags = header >> 4, header & 0x0F
        session = self.session
        if kind == PUBLISH and session is not None:
            self.broker.received_publish(self, session, flags, body)
            return
        if kind == PUBACK and session is not None:
            if flags or len(body) != 2:
                raise ProtocolViolation("malformed PUBACK")
            self.broker.acknowledged(session, (body[0] << 8) | body[1])
            return
        if session is None and kind != CONNECT:
            raise ProtocolViolation(f"packet type {kind} before CONNECT")
        expected_flags = 0x02 if kind in (SUBSCRIBE, UNSUBSCRIBE, PUBREL) else 0
        if flags != expected_flags:
            raise ProtocolViolation(f"packet type {kind} with fixed-header flags {flags:#x}")
        if kind == CONNECT:
            if session is not None:
                raise ProtocolViolation("second CONNECT on one connection")
            self.broker.received_connect(self, body)
        elif kind == SUBSCRIBE and session is not None:
            self.broker.received_subscribe(self, session, body)
        elif kind == UNSUBSCRIBE and session is not None:
            self.broker.received_unsubscribe(self, session, body)
        elif kind == PINGREQ:
            if body:
                raise ProtocolViolation("PINGREQ with a body")
            self.write(_PINGRESP)
        elif kind == DISCONNECT:
            if body:
                raise ProtocolViolation("DISCONNECT with a body")
            self.broker.end(self, CLIENT_INITIATED_DISCONNECT)
        elif kind in (PUBREC, PUBREL, PUBCOMP):
            raise ProtocolViolation("QoS 2 is not supported")
        else:
            raise ProtocolViolation(f"packet type {kind} is not one a client sends")


class MqttBroker:
    """The broker's state and rules, driven by its connections, on one asyncio loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_fatal: Callable[[BaseException], None],
        *,
        tcp_nodelay: bool = True,
        on_presence: PresenceHook | None = None,
        limits: BrokerLimits = IOT_CORE_LIMITS,
        rules: Sequence[tuple[str, str]] = (),
        on_rule: RuleHook | None = None,
    ) -> None:
        self.loop = loop
        self.limits = limits
        self.tcp_nodelay = tcp_nodelay
        self._on_fatal = on_fatal
        self._on_presence = on_presence
        self._rules = _rule_filters(rules) if on_rule is not None else []
        self._on_rule = on_rule
        self.sessions: dict[str, Session] = {}
        self.subscriptions = Subscriptions()
        # topic -> (topic field, payload, QoS)
        self.retained: dict[str, tuple[bytes, bytes, int]] = {}
        self.connections: set[Connection] = set()
        self.stopping = False
        # Counted for the log line of a stop: what the broker did, to read beside its CPU time.
        self.packets_received = 0
        self.messages_published = 0
        self.messages_delivered = 0

    def connection(self) -> Connection:
        """The protocol factory for ``loop.create_server``."""
        return Connection(self)

    # -- connections -------------------------------------------------------------------------

    def accepted(self, connection: Connection) -> None:
        if self.stopping:
            connection.ended = True
            assert connection.transport is not None
            connection.transport.abort()
            return
        self.connections.add(connection)
        connection.timer = self.loop.call_later(self.limits.connect_timeout_s, self._connect_timed_out, connection)

    def _connect_timed_out(self, connection: Connection) -> None:
        if connection.session is None:
            self.end(connection, CLIENT_ERROR, f"no CONNECT within {self.limits.connect_timeout_s}s")

    def received_connect(self, connection: Connection, body: bytes) -> None:
        limits = self.limits
        raw_name, pos = _field(body, 0, "protocol name")
        if pos + 4 > len(body):
            raise ProtocolViolation("CONNECT ends inside its variable header")
        level, flags = body[pos], body[pos + 1]
        keep_alive = (body[pos + 2] << 8) | body[pos + 3]
        pos += 4
        if raw_name not in (b"MQTT", b"MQIsdp"):
            raise ProtocolViolation(f"unknown protocol name {raw_name[:20]!r}")
        if level != 4:
            self._refuse_connect(connection, _UNACCEPTABLE_PROTOCOL_VERSION, f"protocol level {level}")
            return
        if flags & 0x01:
            raise ProtocolViolation("CONNECT reserved flag set")
        clean = bool(flags & 0x02)
        will_flag, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 0x03, bool(flags & 0x20)
        if not will_flag and (will_qos or will_retain):
            raise ProtocolViolation("will QoS or retain without a will")
        if will_qos == 3:
            raise ProtocolViolation("will QoS 3")
        if will_qos == 2:
            raise ProtocolViolation("QoS 2 is not supported (will)")
        if flags & 0x40 and not flags & 0x80:
            raise ProtocolViolation("password without a username")
        raw_id, pos = _field(body, pos, "client id")
        client_id = _utf8(raw_id, "client id")
        will = None
        if will_flag:
            raw_topic, pos = _field(body, pos, "will topic")
            will_payload, pos = _field(body, pos, "will message")
            will_topic = _utf8(raw_topic, "will topic")
            _check_topic_name(will_topic, limits)
            if len(will_payload) > limits.max_payload_bytes:
                raise ProtocolViolation(f"will message over {limits.max_payload_bytes} bytes")
            topic_field = len(raw_topic).to_bytes(2, "big") + raw_topic
            will = (will_topic, topic_field, will_payload, will_qos, will_retain)
        if flags & 0x80:
            raw_user, pos = _field(body, pos, "username")
            _utf8(raw_user, "username")
        if flags & 0x40:
            _password, pos = _field(body, pos, "password")
        if pos != len(body):
            raise ProtocolViolation("bytes after the CONNECT payload")
        if not client_id:
            if not clean:
                self._refuse_connect(connection, _IDENTIFIER_REJECTED, "empty client id with a persistent session")
                return
            client_id = f"auto-{uuid.uuid4().hex}"
        if len(raw_id) > limits.max_client_id_bytes:
            self._refuse_connect(connection, _IDENTIFIER_REJECTED, f"client id over {limits.max_client_id_bytes} bytes")
            return
        if keep_alive == 0 or keep_alive > limits.max_keep_alive_s:
            connection.keep_alive_s = limits.max_keep_alive_s
        else:
            connection.keep_alive_s = max(float(keep_alive), limits.min_keep_alive_s)
        self._open_session(connection, client_id, clean, will)

    def _refuse_connect(self, connection: Connection, code: int, detail: str) -> None:
        connection.write(bytes((CONNACK << 4, 2, 0, code)))
        self.end(connection, CLIENT_ERROR, detail)

    def _open_session(
        self, connection: Connection, client_id: str, clean: bool, will: tuple[str, bytes, bytes, int, bool] | None
    ) -> None:
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            self.end(session.connection, DUPLICATE_CLIENTID, "the client id connected again")
            session = self.sessions.get(client_id)
        if session is not None and clean:
            self._discard(session)
            session = None
        present = session is not None
        if session is None:
            session = self.sessions[client_id] = Session(client_id, clean)
        session.clean = clean
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        session.connection = connection
        connection.session = session
        connection.session_id = uuid.uuid4().hex
        connection.will = will
        if connection.timer is not None:
            connection.timer.cancel()
        connection.timer = self.loop.call_later(connection.keep_alive_s * 1.5, self._check_keep_alive, connection)
        connection.write(bytes((CONNACK << 4, 2, int(present), 0)))
        log.debug("mqtt_client_connected", extra={"client_id": client_id, "session_present": present})
        self._report(client_id, connection.session_id, None)
        if present:
            for packet_id, (topic_field, payload, retain) in session.inflight.items():
                connection.write(_publish_packet(topic_field, payload, 1, retain, packet_id, dup=True))
            self._drain(session)

    def _check_keep_alive(self, connection: Connection) -> None:
        allowed = connection.keep_alive_s * 1.5
        idle = self.loop.time() - connection.last_heard
        if idle >= allowed:
            self.end(connection, MQTT_KEEP_ALIVE_TIMEOUT, f"silent for {idle:.1f}s")
        else:
            connection.timer = self.loop.call_later(allowed - idle, self._check_keep_alive, connection)

    def end(self, connection: Connection, reason: str, detail: str = "") -> None:
        """End a connection once: report it, publish its will unless it said DISCONNECT, close it."""
        if connection.ended:
            return
        connection.ended = True
        self.connections.discard(connection)
        if connection.timer is not None:
            connection.timer.cancel()
        if connection.transport is not None:
            connection.transport.close()
        session = connection.session
        if session is None or session.connection is not connection:
            if reason not in (CONNECTION_LOST, SERVER_INITIATED_DISCONNECT):
                log.warning("mqtt_connection_refused", extra={"reason": reason, "detail": detail})
            return
        session.connection = None
        level = logging.WARNING if reason in (CLIENT_ERROR, AUTH_ERROR) else logging.DEBUG
        log.log(
            level,
            "mqtt_client_disconnected",
            extra={"client_id": session.client_id, "reason": reason, "detail": detail},
        )
        self._report(session.client_id, connection.session_id, reason)
        if session.clean:
            self._discard(session)
        elif not self.stopping:
            session.expiry = self.loop.call_later(self.limits.persistent_session_expiry_s, self._expire, session)
        will = connection.will
        if will is not None and reason != CLIENT_INITIATED_DISCONNECT and not self.stopping:
            topic, topic_field, payload, qos, retain = will
            self.publish(topic, topic_field, payload, qos, retain)

    def _expire(self, session: Session) -> None:
        if session.connection is None and self.sessions.get(session.client_id) is session:
            self._discard(session)

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.subscriptions.remove(session, topic_filter)
        session.subscriptions.clear()
        session.inflight.clear()
        session.queued.clear()
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def shutdown(self, reason: str = SERVER_INITIATED_DISCONNECT) -> None:
        """Disconnect every client (reported, no will): the broker is going away."""
        self.stopping = True
        for connection in list(self.connections):
            self.end(connection, reason)
        for session in self.sessions.values():
            if session.expiry is not None:
                session.expiry.cancel()

    def fatal(self, exc: BaseException) -> None:
        self._on_fatal(exc)

    # -- messages ----------------------------------------------------------------------------

    def received_publish(self, connection: Connection, session: Session, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise ProtocolViolation("PUBLISH with QoS 3")
        if qos == 2:
            raise ProtocolViolation("QoS 2 is not supported")
        if qos == 0 and flags & 0x08:
            raise ProtocolViolation("DUP set on a QoS 0 PUBLISH")
        raw_topic, pos = _field(body, 0, "topic")
        topic = _utf8(raw_topic, "topic")
        _check_topic_name(topic, self.limits)
        packet_id = 0
        if qos:
            if pos + 2 > len(body):
                raise ProtocolViolation("PUBLISH ends inside its packet id")
            packet_id = (body[pos] << 8) | body[pos + 1]
            if not packet_id:
                raise ProtocolViolation("PUBLISH with packet id 0")
            pos += 2
        payload = body[pos:]
        if len(payload) > self.limits.max_payload_bytes:
            raise ProtocolViolation(f"payload over {self.limits.max_payload_bytes} bytes")
        self.publish(topic, body[: 2 + len(raw_topic)], payload, qos, bool(flags & 0x01))
        if qos:
            connection.write(bytes((PUBACK << 4, 2, packet_id >> 8, packet_id & 0xFF)))

    def publish(self, topic: str, topic_field: bytes, payload: bytes, qos: int, retain: bool) -> None:
        """Route one message to every matching subscription (and keep it if it is retained)."""
        if retain:
            if payload:
                self.retained[topic] = (topic_field, payload, qos)
            else:
                self.retained.pop(topic, None)
        self.messages_published += 1
        for session, granted in self.subscriptions.matching(topic):
            self.deliver(session, topic_field, payload, min(qos, granted), False)
        if self._rules:
            self._fire_rules(topic, payload)

    def publish_from_service(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """The data plane's Publish (the cloud's side, no MQTT connection), once its caller checked
        it with ``check_service_publish``."""
        raw = topic.encode("utf-8")
        self.publish(topic, len(raw).to_bytes(2, "big") + raw, payload, 1 if qos else 0, retain)

    def _fire_rules(self, topic: str, payload: bytes) -> None:
        """Every topic rule whose filter matches gets the message as IoT Core's rules engine hands it
        to a Lambda action with ``SELECT encode(*, 'base64') AS payload, topic() AS topic,
        timestamp() AS received_at``."""
        assert self._on_rule is not None
        levels = topic.split("/")
        for name, filter_levels in self._rules:
            if not filter_matches(filter_levels, levels):
                continue
            event = {
                "topic": topic,
                "payload": base64.b64encode(payload).decode("ascii"),
                "received_at": time.time_ns() // 1_000_000,
            }
            try:
                self._on_rule(name, event)
            except Exception:  # as a presence hook's: logged loudly, the broker carries on
                log.exception("rule_hook_failed", extra={"rule": name, "topic": topic})

    def deliver(self, session: Session, topic_field: bytes, payload: bytes, qos: int, retain: bool) -> None:
        self.messages_delivered += 1
        connection = session.connection
        if not qos:
            if connection is not None:
                connection.write(_publish_packet(topic_field, payload, 0, retain, 0))
            return
        if connection is None or session.queued or len(session.inflight) >= self.limits.max_inflight_to_client:
            session.queued.append((topic_field, payload, retain))
            return
        packet_id = session.take_packet_id()
        session.inflight[packet_id] = (topic_field, payload, retain)
        connection.write(_publish_packet(topic_field, payload, 1, retain, packet_id))

    def acknowledged(self, session: Session, packet_id: int) -> None:
        session.inflight.pop(packet_id, None)
        if session.queued:
            self._drain(session)

    def _drain(self, session: Session) -> None:
        connection, queued, inflight = session.connection, session.queued, session.inflight
        window = self.limits.max_inflight_to_client
        while connection is not None and queued and len(inflight) < window:
            topic_field, payload, retain = queued.popleft()
            packet_id = session.take_packet_id()
            inflight[packet_id] = (topic_field, payload, retain)
            connection.write(_publish_packet(topic_field, payload, 1, retain, packet_id))

    # -- subscriptions -----------------------------------------------------------------------

    def received_subscribe(self, connection: Connection, session: Session, body: bytes) -> None:
        limits = self.limits
        self._packet_id(body, "SUBSCRIBE")
        requested: list[tuple[str, int]] = []
        pos = 2
        while pos < len(body):
            raw_filter, pos = _field(body, pos, "topic filter")
            if pos >= len(body):
                raise ProtocolViolation("SUBSCRIBE ends before a filter's QoS")
            options = body[pos]
            pos += 1
            if options & 0xFC:
                raise ProtocolViolation("SUBSCRIBE QoS byte with reserved bits set")
            requested.append((_utf8(raw_filter, "topic filter"), options))
        if not requested:
            raise ProtocolViolation("SUBSCRIBE without a topic filter")
        if len(requested) > limits.max_filters_per_subscribe:
            raise ProtocolViolation(f"more than {limits.max_filters_per_subscribe} filters in one SUBSCRIBE")
        codes = bytearray()
        granted: list[tuple[str, int]] = []
        for topic_filter, qos in requested:
            if qos == 3:
                raise ProtocolViolation("SUBSCRIBE with QoS 3")
            if qos == 2:
                raise ProtocolViolation("QoS 2 is not supported (SUBSCRIBE)")
            _check_size(topic_filter, limits, "topic filter")
            held = session.subscriptions
            if not valid_filter(topic_filter) or (
                topic_filter not in held and len(held) >= limits.max_subscriptions_per_connection
            ):
                codes.append(_SUBSCRIPTION_FAILURE)
                continue
            held[topic_filter] = qos
            self.subscriptions.add(session, topic_filter, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        connection.write(bytes((SUBACK << 4,)) + _remaining_length(2 + len(codes)) + body[:2] + bytes(codes))
        for topic_filter, qos in granted:
            self._send_retained(session, topic_filter, qos)

    def _send_retained(self, session: Session, topic_filter: str, granted: int) -> None:
        if "+" not in topic_filter and "#" not in topic_filter:
            found = self.retained.get(topic_filter)
            matches = [found] if found is not None else []
        else:
            levels = topic_filter.split("/")
            matches = [kept for topic, kept in self.retained.items() if filter_matches(levels, topic.split("/"))]
        for topic_field, payload, qos in matches:
            self.deliver(session, topic_field, payload, min(qos, granted), True)

    def received_unsubscribe(self, connection: Connection, session: Session, body: bytes) -> None:
        self._packet_id(body, "UNSUBSCRIBE")
        filters: list[str] = []
        pos = 2
        while pos < len(body):
            raw_filter, pos = _field(body, pos, "topic filter")
            filters.append(_utf8(raw_filter, "topic filter"))
        if not filters:
            raise ProtocolViolation("UNSUBSCRIBE without a topic filter")
        for topic_filter in filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self.subscriptions.remove(session, topic_filter)
        connection.write(bytes((UNSUBACK << 4, 2)) + body[:2])

    @staticmethod
    def _packet_id(body: bytes, what: str) -> int:
        if len(body) < 2:
            raise ProtocolViolation(f"{what} ends inside its packet id")
        packet_id = (body[0] << 8) | body[1]
        if not packet_id:
            raise ProtocolViolation(f"{what} with packet id 0")
        return packet_id

    # -- presence ----------------------------------------------------------------------------

    def _report(self, client_id: str, session_id: str, disconnect_reason: str | None) -> None:
        if self._on_presence is None or "#" in client_id or "+" in client_id:
            return
        event: dict[str, Any] = {
            "clientId": client_id,
            "timestamp": time.time_ns() // 1_000_000,
            "eventType": "connected" if disconnect_reason is None else "disconnected",
            "sessionIdentifier": session_id,
            "versionNumber": 0,
        }
        if disconnect_reason is not None:
            event["clientInitiatedDisconnect"] = disconnect_reason == CLIENT_INITIATED_DISCONNECT
            event["disconnectReason"] = disconnect_reason
        try:
            self._on_presence(event)
        except Exception:  # the hook's failure must not take the broker down; it is logged loudly
            log.exception("presence_hook_failed", extra={"client_id": client_id})


def _publish_packet(
    topic_field: bytes, payload: bytes, qos: int, retain: bool, packet_id: int, dup: bool = False
) -> bytes:
    header = (PUBLISH << 4) | (qos << 1) | int(retain) | (0x08 if dup else 0)
    if qos:
        length = len(topic_field) + 2 + len(payload)
        return b"".join(
            (bytes((header,)), _remaining_length(length), topic_field, packet_id.to_bytes(2, "big"), payload)
        )
    return b"".join((bytes((header,)), _remaining_length(len(topic_field) + len(payload)), topic_field, payload))


class RunningBroker:
    """A started broker: ``host``, ``port``, ``url``; ``stop()`` or use it as a context manager."""

    def __init__(
        self,
        host: str,
        requested_port: int,
        tcp_nodelay: bool,
        on_presence: PresenceHook | None = None,
        limits: BrokerLimits = IOT_CORE_LIMITS,
        rules: Sequence[tuple[str, str]] = (),
        on_rule: RuleHook | None = None,
    ) -> None:
        self.host = host
        self.port = requested_port
        self._tcp_nodelay = tcp_nodelay
        self._on_presence = on_presence
        self._limits = limits
        self._rules = tuple(rules)
        self._on_rule = on_rule
        _rule_filters(self._rules)  # an invalid rule fails here, in the caller's thread
        self._reset()

    def _reset(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: MqttBroker | None = None
        self._stop_requested: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"mqtt-broker-{self.port}", daemon=True)

    def restart(self) -> None:
        """Stop, then start again on the same port: every client is disconnected and must reconnect."""
        self.stop()
        self._reset()
        self._start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def crashed(self) -> bool:
        return self._failure is not None

    def raise_if_crashed(self) -> None:
        if self._failure is not None:
            raise BrokerCrashedError(f"MQTT broker on port {self.port} crashed: {self._failure!r}") from (self._failure)

    def stop(self) -> None:
        """Disconnect every client, stop listening; raises ``BrokerCrashedError`` if the loop failed."""
        self._request_stop()
        self._thread.join(_SHUTDOWN_TIMEOUT_S)
        if self._thread.is_alive():
            raise BrokerCrashedError(f"MQTT broker on port {self.port} still running after {_SHUTDOWN_TIMEOUT_S}s")
        self.raise_if_crashed()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """The data plane's Publish, from any thread: the message is routed (and the topic rules
        run) on the broker's loop. ``BrokerPublishError`` if it is refused or the broker is not
        running."""
        check_service_publish(topic, payload, self._limits)
        loop, broker = self._loop, self._broker
        if loop is None or broker is None or not self._thread.is_alive() or self._failure is not None:
            raise BrokerPublishError(f"MQTT broker on port {self.port} is not running")
        try:
            loop.call_soon_threadsafe(broker.publish_from_service, topic, payload, qos, retain)
        except RuntimeError:  # the loop closed meanwhile
            raise BrokerPublishError(f"MQTT broker on port {self.port} is not running") from None

    def _request_stop(self) -> None:
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: it is stopping anyway
                loop.call_soon_threadsafe(stop_requested.set)

    def __enter__(self) -> RunningBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT_S):
            raise BrokerStartError(f"MQTT broker on port {self.port} did not start in {_STARTUP_TIMEOUT_S}s")
        if self._start_error is not None:
            self._thread.join(_SHUTDOWN_TIMEOUT_S)
            raise self._start_error
        self.raise_if_crashed()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # recorded, then re-raised by stop() in the owning thread
            self._record_failure(exc)
        finally:
            self._ready.set()

    def _record_failure(self, exc: BaseException) -> None:
        if self._failure is None and self._start_error is None:
            log.error("mqtt_broker_crashed", exc_info=exc, extra={"port": self.port})
            self._failure = exc

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_requested = asyncio.Event()
        fatal: asyncio.Future[None] = loop.create_future()

        def on_fatal(exc: BaseException) -> None:
            if not fatal.done():
                fatal.set_exception(exc)

        def on_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # An exception raised in a callback of the loop (a timer of the broker's): a bug of ours.
            exc = context.get("exception") or RuntimeError(str(context.get("message")))
            on_fatal(exc)

        loop.set_exception_handler(on_loop_error)
        broker = MqttBroker(
            loop,
            on_fatal,
            tcp_nodelay=self._tcp_nodelay,
            on_presence=self._on_presence,
            limits=self._limits,
            rules=self._rules,
            on_rule=self._on_rule,
        )
        self._broker = broker
        try:
            server = await loop.create_server(broker.connection, self.host, self.port, reuse_address=True, backlog=1024)
        except OSError as exc:
            self._start_error = self._explain_start_failure(exc)
            return
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("mqtt_broker_started", extra={"host": self.host, "port": self.port})
        self._ready.set()

        stop_waiter: asyncio.Future[Any] = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([stop_waiter, fatal], return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        server.close()
        broker.shutdown(SERVER_ERROR if fatal.done() else SERVER_INITIATED_DISCONNECT)
        await asyncio.sleep(0)  # the closed transports' connection_lost callbacks run
        log.info(
            "mqtt_broker_stopped",
            extra={
                "port": self.port,
                "packets_received": broker.packets_received,
                "messages_published": broker.messages_published,
                "messages_delivered": broker.messages_delivered,
            },
        )
        if fatal.done():
            fatal.result()

    def _explain_start_failure(self, exc: OSError) -> BaseException:
        if exc.errno == errno.EADDRINUSE:
            error: BrokerStartError = BrokerPortInUseError(
                f"cannot start the MQTT broker: port {self.port} on {self.host} is already in use"
            )
        else:
            error = BrokerStartError(f"cannot start the MQTT broker on {self.host}:{self.port}: {exc}")
        error.__cause__ = exc
        return error


def start_broker(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tcp_nodelay: bool = True,
    on_presence: PresenceHook | None = None,
    limits: BrokerLimits = IOT_CORE_LIMITS,
    rules: Sequence[tuple[str, str]] = (),
    on_rule: RuleHook | None = None,
) -> RunningBroker:
    """Start a broker in a background thread and return once it accepts connections.

    ``port=0`` binds a free port (read it from ``.port``). A port already in use raises
    ``BrokerPortInUseError``. ``on_presence`` gets each lifecycle event (called on the broker's loop:
    it must not block). ``rules`` are topic rules, (name, topic filter): each message published on a
    topic a rule's filter matches goes to ``on_rule(name, event)`` (on the broker's loop too).
    ``tcp_nodelay=False`` exists only to measure what Nagle costs. ``limits`` are IoT Core's unless a
    test needs others (a keep-alive of a second).
    """
    running = RunningBroker(host, port, tcp_nodelay, on_presence, limits, rules, on_rule)
    running._start()
    return running


class BrokerProcess:
    """A broker in a child process (``python -m local.broker``), with ``RunningBroker``'s surface.

    ``host``, ``port``, ``url``, ``stop()``, ``restart()``, ``crashed``, ``raise_if_crashed()``, a
    context manager; and ``pid``, the child's process id (it changes on ``restart()``).

    The child speaks JSON lines on its stdout: ``{"ready": port}`` or ``{"error": kind, "message": …}``
    once, then ``{"presence": event}`` for each lifecycle event and ``{"rule": name, "event": event}``
    for each message a topic rule took, and last ``{"stopped": true}`` or ``{"crashed": traceback}``.
    One reader thread here hands them to ``on_presence`` and ``on_rule`` in the order the broker
    emitted them. The child's stderr (its JSON-lines logs) is copied to this process's stderr, and its
    last lines are kept for the crash report. On its stdin the child reads
    ``{"publish": {"topic", "payload" (base64), "qos", "retain"}}`` lines (``publish()``, the data
    plane's Publish); it stops when it reads ``stop``, and exits at once when its stdin ends without
    one: its parent is gone.
    """

    def __init__(
        self,
        host: str,
        requested_port: int,
        tcp_nodelay: bool,
        on_presence: PresenceHook | None = None,
        module: str = "local.broker",
        rules: Sequence[tuple[str, str]] = (),
        on_rule: RuleHook | None = None,
    ) -> None:
        self.host = host
        self.port = requested_port
        self._tcp_nodelay = tcp_nodelay
        self._on_presence = on_presence
        self._module = module
        self._rules = tuple(rules) if on_rule is not None else ()
        _rule_filters(self._rules)
        self._on_rule = on_rule
        self._process: subprocess.Popen[bytes] | None = None
        self._writing = threading.Lock()
        self._readers: list[threading.Thread] = []
        self._stopping = False
        self._failure: str | None = None
        self._ready = threading.Event()
        self._reply: dict[str, Any] | None = None
        self._outcome: dict[str, Any] | None = None
        self._tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BrokerStartError("the MQTT broker's process was never started")
        return self._process.pid

    @property
    def crashed(self) -> bool:
        process = self._process
        if self._failure is None and process is not None and not self._stopping and process.poll() is not None:
            self._failure = self._describe_exit(process)
        return self._failure is not None

    def raise_if_crashed(self) -> None:
        if self.crashed:
            raise BrokerCrashedError(self._failure)

    def restart(self) -> None:
        """Stop, then start again on the same port: every client is disconnected and must reconnect."""
        self.stop()
        self._start()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """The data plane's Publish, from any thread: handed to the broker's process, which routes it
        (and runs the topic rules) in the order the calls were made. ``BrokerPublishError`` if it is
        refused or the process is not there to take it."""
        check_service_publish(topic, payload)
        line = json.dumps(
            {
                "publish": {
                    "topic": topic,
                    "payload": base64.b64encode(payload).decode("ascii"),
                    "qos": 1 if qos else 0,
                    "retain": retain,
                }
            },
            separators=(",", ":"),
        ).encode("utf-8")
        with self._writing:
            process = self._process
            if process is None or self._stopping or process.stdin is None:
                raise BrokerPublishError(f"MQTT broker on port {self.port} is not running")
            try:
                process.stdin.write(line + b"\n")
                process.stdin.flush()
            except (OSError, ValueError) as exc:  # its process is gone, or its stdin already closed
                raise BrokerPublishError(f"MQTT broker on port {self.port} is not running: {exc}") from None

    def stop(self) -> None:
        """Stop the broker and its process; every presence event it emitted, down to the disconnects
        of the shutdown, has been handed to ``on_presence`` when this returns. Raises
        ``BrokerCrashedError`` if the process failed. Calling it again does nothing more."""
        process = self._process
        if process is not None and not self._stopping:
            assert process.stdin is not None
            with self._writing:  # after any publish under way: it was accepted, it is routed
                self._stopping = True
                with contextlib.suppress(OSError):  # already gone: its exit is reported below
                    process.stdin.write(b"stop\n")
                    process.stdin.flush()
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(_SHUTDOWN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self._failure = f"MQTT broker on port {self.port} still running after {_SHUTDOWN_TIMEOUT_S}s"
            if not self._join_readers(_SHUTDOWN_TIMEOUT_S) and self._failure is None:
                self._failure = (
                    f"MQTT broker on port {self.port}: its presence events were still being delivered "
                    f"after {_SHUTDOWN_TIMEOUT_S}s (a blocked presence hook?)"
                )
            if self._failure is None and (process.returncode != 0 or self._outcome != {"stopped": True}):
                self._failure = self._describe_exit(process)
        self.raise_if_crashed()

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self) -> None:
        self._stopping = False
        self._failure = None
        self._ready = threading.Event()
        self._reply = None
        self._outcome = None
        self._tail = deque(maxlen=_STDERR_TAIL_LINES)
        command = [sys.executable, "-m", self._module, "--host", self.host, "--port", str(self.port)]
        command += ["--log-level", str(log.getEffectiveLevel())]
        for name, topic_filter in self._rules:
            command += ["--rule", f"{name}={topic_filter}"]
        if not self._tcp_nodelay:
            command.append("--no-tcp-nodelay")
        process = subprocess.Popen(  # noqa: S603 -- our own interpreter and module, no shell
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=_PROJECT_ROOT,  # ``-m`` finds this package from the project's directory, wherever we run
        )
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            threading.Thread(
                target=self._read_messages, args=(process.stdout,), name="mqtt-broker-events", daemon=True
            ),
            threading.Thread(target=self._relay_stderr, args=(process.stderr,), name="mqtt-broker-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if not self._ready.wait(_PROCESS_STARTUP_TIMEOUT_S):
            self._abandon(process)
            raise BrokerStartError(
                f"MQTT broker on port {self.port} did not start in {_PROCESS_STARTUP_TIMEOUT_S}s{self._tail_text()}"
            )
        reply = self._reply
        if reply is not None and "ready" in reply:
            self.port = int(reply["ready"])
            return
        self._abandon(process)
        if reply is not None and reply.get("error") == "port_in_use":
            raise BrokerPortInUseError(reply["message"])
        if reply is not None:
            raise BrokerStartError(f"{reply['message']}{self._tail_text()}")
        raise BrokerStartError(
            f"the MQTT broker's process ended before listening on port {self.port} "
            f"({exit_status(process.returncode)}){self._tail_text()}"
        )

    def _abandon(self, process: subprocess.Popen[bytes]) -> None:
        """A start that failed: the process is made to end and its output read to the end."""
        self._stopping = True
        with contextlib.suppress(OSError):
            process.kill()
        process.wait()
        self._join_readers(_SHUTDOWN_TIMEOUT_S)

    def _read_messages(self, stream: Any) -> None:
        for raw in stream:
            try:
                message = json.loads(raw)
            except ValueError:
                log.error("mqtt_broker_unreadable_message", extra={"line": raw[:200]})
                continue
            if "rule" in message:
                self._take_rule(message["rule"], message["event"])
            elif "presence" in message:
                self._deliver(message["presence"])
            elif "ready" in message or "error" in message:
                self._reply = message
                self._ready.set()
            else:
                self._outcome = message
        self._ready.set()

    def _deliver(self, event: dict[str, Any]) -> None:
        if self._on_presence is None:
            return
        try:
            self._on_presence(event)
        except Exception:  # as in the broker itself: logged loudly, the next events still flow
            log.exception("presence_hook_failed", extra={"client_id": event.get("clientId")})

    def _take_rule(self, name: str, event: dict[str, Any]) -> None:
        if self._on_rule is None:
            return
        try:
            self._on_rule(name, event)
        except Exception:  # as in the broker itself: logged loudly, the next messages still flow
            log.exception("rule_hook_failed", extra={"rule": name, "topic": event.get("topic")})

    def _relay_stderr(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace")
            self._tail.append(line.rstrip("\n"))
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):  # our stderr is gone or closed: the tail is still kept
                pass

    def _join_readers(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        return not any(reader.is_alive() for reader in self._readers)

    def _describe_exit(self, process: subprocess.Popen[bytes]) -> str:
        self._join_readers(2.0)  # its last words: the crash message and the end of its stderr
        code = process.returncode
        outcome = self._outcome or {}
        why = outcome.get("crashed") or exit_status(code)
        return f"MQTT broker process {process.pid} on port {self.port} crashed: {why}{self._tail_text()}"

    def _tail_text(self) -> str:
        if not self._tail:
            return ""
        return "\nlast output of the broker's process:\n" + "\n".join(self._tail)


def start_broker_process(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tcp_nodelay: bool = True,
    on_presence: PresenceHook | None = None,
    module: str = "local.broker",
    rules: Sequence[tuple[str, str]] = (),
    on_rule: RuleHook | None = None,
) -> BrokerProcess:
    """Start a broker in its own process and return once it accepts connections.

    As ``start_broker``: ``port=0`` binds a free port, a busy port raises ``BrokerPortInUseError``.
    ``on_presence`` and ``on_rule`` are called on one reader thread of this process, in the broker's
    order. The broker gets its own interpreter, so its own GIL and a core of its own. ``module`` is
    the child's entry point (tests run one that breaks the broker on purpose).
    """
    running = BrokerProcess(host, port, tcp_nodelay, on_presence, module, rules, on_rule)
    running._start()
    return running


def _watch_parent(running: RunningBroker) -> None:
    for line in sys.stdin.buffer:
        if line.strip() == b"stop":
            running._request_stop()
            return
        _publish_for_parent(running, line)
    # Our stdin ended without a stop: the parent is gone (kill -9). Nobody is left to take the
    # presence events, and the port must be free for the next start.
    os._exit(0)


def _publish_for_parent(running: RunningBroker, line: bytes) -> None:
    try:
        message = json.loads(line)["publish"]
        topic, payload = message["topic"], base64.b64decode(message["payload"], validate=True)
        running.publish(topic, payload, int(message["qos"]), bool(message["retain"]))
    except (ValueError, KeyError, TypeError, BrokerPublishError) as exc:
        # The parent checks what it sends: a line refused here is a bug of ours, said loudly.
        log.error(
            "mqtt_broker_unreadable_command", extra={"line": line[:200].decode("utf-8", "replace"), "error": repr(exc)}
        )


def _rule_argument(raw: str) -> tuple[str, str]:
    name, sep, topic_filter = raw.partition("=")
    if not sep or not name or not valid_filter(topic_filter):
        raise argparse.ArgumentTypeError(f"a topic rule is name=filter, got {raw!r}")
    return name, topic_filter


def main(argv: list[str] | None = None) -> int:
    """``python -m local.broker``: the broker of ``start_broker_process``, driven by its parent."""
    parser = argparse.ArgumentParser(prog="python -m local.broker", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log-level", type=int, default=logging.WARNING, help="a number: 20 INFO, 30 WARNING")
    parser.add_argument("--no-tcp-nodelay", action="store_true", help="leave Nagle on (to measure it)")
    parser.add_argument(
        "--rule", action="append", type=_rule_argument, default=[], help="a topic rule: name=topic filter"
    )
    args = parser.parse_args(argv)
    # The parent stops the broker itself, after which the shutdown's presence events still have
    # somewhere to go.
    send = channel_to_parent()
    from local.jsonlog import log_json_lines

    log_json_lines(args.log_level)

    try:
        running = start_broker(
            args.host,
            args.port,
            tcp_nodelay=not args.no_tcp_nodelay,
            on_presence=lambda event: send({"presence": event}),
            rules=args.rule,
            on_rule=lambda name, event: send({"rule": name, "event": event}),
        )
    except BrokerPortInUseError as exc:
        send({"error": "port_in_use", "message": str(exc)})
        return 3
    except BrokerStartError as exc:
        send({"error": "start", "message": str(exc)})
        return 3
    send({"ready": running.port})
    threading.Thread(target=_watch_parent, args=(running,), name="parent-watch", daemon=True).start()
    running._thread.join()
    if running._failure is not None:
        send({"crashed": "".join(traceback.format_exception(running._failure)).rstrip()})
        return 1
    send({"stopped": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())

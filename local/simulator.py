"""Simulated payment terminals: the reference implementation of the terminal protocol (docs/terminal-protocol.md).

As a library (the local stack, the tests):

    >>> terminal = SimulatedTerminal("PAX-1850320198", "secret", "approve", port=1883)  # doctest: +SKIP
    >>> terminal.start(); ...; terminal.stop()                                          # doctest: +SKIP

As a command, ``python -m local.simulator --help`` (see ``local.simulator_cli``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from chalicelib.adapters.channels import disable_nagle
from chalicelib.protocol import (
    EnvelopeError,
    decode,
    encode,
    make_envelope,
    new_request_id,
    parse_timestamp_ms,
    parse_topic,
    topic_for,
    verify_signature,
)
from local.simulated_payment import approved_result, check_request, declined_result, failed_result

log = logging.getLogger(__name__)

BEHAVIORS = ("approve", "decline", "no_ack", "ack_then_silent", "offline", "slow", "busy")
ResultHook = Callable[[str, dict[str, Any], dict[str, Any]], None]

_SLOW_DEFAULT_DELAY_MS = 5_000
_CONNECT_TIMEOUT_S = 10.0
_OFFLINE_PUBLISH_TIMEOUT_S = 5.0
_KEEPALIVE_S = 30
_BUSY_ACK = {"accepted": False, "reason": "busy"}


@dataclass(frozen=True)
class TlsFiles:
    """The device certificate from enrollment, for AWS IoT Core (port 8883)."""

    ca_certs: str
    certfile: str
    keyfile: str


@dataclass(frozen=True)
class TerminalSpec:
    terminal_id: str
    passphrase: str
    behavior: str = "approve"
    delay_ms: int | None = None


@dataclass
class _Payment:
    request: dict[str, Any]
    timer: threading.Timer | None = None

    @property
    def request_id(self) -> str:
        return str(self.request["request_id"])


class TerminalConnectError(RuntimeError):
    """The simulated terminal could not connect to the broker."""


class SimulatedTerminal:
    """One terminal: connects as its terminal id, answers payment and cancel requests per ``behavior``.

    ``counters`` tells what it did (``received``, ``rejected``, ``rejected.<reason>``, ``acks_sent``,
    ``busy_acks_sent``, ``results_sent``, ``cancels_honoured``, ``cancels_ignored``, ``results_resent``,
    ``duplicates``, ``payments_expired``). A cancel_request aborts the payment while the customer has
    not paid (result ``Failed``, ``cancelled``); after the payment's result, it is answered with that
    result again. A payment still open at its ``expires_at`` ends: result ``timeout``
    (``ack_then_silent``: silently), so the terminal takes payments again.
    ``on_result(terminal_id, request_envelope, result_body)`` is called after each result is sent.
    """

    def __init__(
        self,
        terminal_id: str,
        passphrase: str,
        behavior: str = "approve",
        delay_ms: int | None = None,
        host: str = "127.0.0.1",
        port: int = 1883,
        tls: TlsFiles | None = None,
        on_result: ResultHook | None = None,
    ) -> None:
        if behavior not in BEHAVIORS:
            raise ValueError(f"unknown simulator behavior {behavior!r}; expected one of {BEHAVIORS}")
        self.terminal_id = terminal_id
        self.behavior = behavior
        self.delay_ms = delay_ms if delay_ms is not None else (_SLOW_DEFAULT_DELAY_MS if behavior == "slow" else 0)
        self.host, self.port = host, port
        self._passphrase = passphrase
        self._on_result = on_result
        self._lock = threading.Condition()
        self._counters: Counter[str] = Counter()
        self._current: _Payment | None = None
        self._seen_request_ids: dict[str, None] = {}  # insertion-ordered, bounded below
        # The result sent for each recent request: a cancel_request after it gets it again (docs/terminal-protocol.md).
        self._results: dict[str, dict[str, Any]] = {}
        self._connected = threading.Event()
        self._client = self._make_client(tls)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, wait: bool = True) -> None:
        """Connect (unless ``offline``); with ``wait``, return once subscribed and ``online``."""
        if self.behavior == "offline":
            log.info("terminal_stays_offline", extra={"terminal_id": self.terminal_id})
            return
        self._client.connect_async(self.host, self.port, keepalive=_KEEPALIVE_S)
        self._client.loop_start()
        if wait:
            self.wait_connected()

    def wait_connected(self, timeout: float = _CONNECT_TIMEOUT_S) -> None:
        if self.behavior != "offline" and not self._connected.wait(timeout):
            self._client.loop_stop()
            raise TerminalConnectError(f"{self.terminal_id} could not connect to {self.host}:{self.port}")

    def stop(self) -> None:
        """Publish the retained ``offline`` status, then disconnect (no last will on a clean stop)."""
        with self._lock:
            payment, self._current = self._current, None
        if payment is not None and payment.timer is not None:
            payment.timer.cancel()
        if self.behavior == "offline":
            return
        if self._connected.is_set():
            info = self._publish_status("offline")
            info.wait_for_publish(_OFFLINE_PUBLISH_TIMEOUT_S)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def wait_for_counter(self, name: str, at_least: int = 1, timeout: float = 10.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._counters[name] >= at_least, timeout)

    # -- MQTT ------------------------------------------------------------------------------------

    def _make_client(self, tls: TlsFiles | None) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.terminal_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if tls is not None:
            client.tls_set(ca_certs=tls.ca_certs, certfile=tls.certfile, keyfile=tls.keyfile)
        # A broker outage drops every terminal: reconnect quickly, as a real terminal app would.
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_pre_connect = self._sign_last_will
        client.on_socket_open = disable_nagle
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _sign_last_will(self, client: mqtt.Client, _userdata: Any) -> None:
        # Signed at each (re)connect, so the will's sent_at is that connection's start.
        will = make_envelope("status", new_request_id(), self.terminal_id, {"state": "offline"}, self._passphrase)
        client.will_set(topic_for(self.terminal_id, "status"), encode(will), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            log.warning("terminal_connect_refused", extra={"terminal_id": self.terminal_id, "reason": str(reason)})
            return
        client.subscribe(topic_for(self.terminal_id, "requests"), qos=1)

    def _on_subscribe(self, client: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any = None) -> None:
        # "online" only once the broker holds our subscription: the cloud dispatches on seeing it,
        # and a request published before the SUBACK would be routed to nobody.
        if any(reason.is_failure for reason in reasons):
            log.error("terminal_subscribe_refused", extra={"terminal_id": self.terminal_id})
            client.disconnect()
            return
        self._publish_status("online")
        log.info("terminal_online", extra={"terminal_id": self.terminal_id, "behavior": self.behavior})
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        self._connected.clear()
        log.info("terminal_disconnected", extra={"terminal_id": self.terminal_id, "reason": str(reason)})

    def _publish_status(self, state: str) -> mqtt.MQTTMessageInfo:
        envelope = make_envelope("status", new_request_id(), self.terminal_id, {"state": state}, self._passphrase)
        return self._client.publish(topic_for(self.terminal_id, "status"), encode(envelope), qos=1, retain=True)

    def _send_event(self, message_type: str, request_id: str, body: dict[str, Any]) -> None:
        envelope = make_envelope(message_type, request_id, self.terminal_id, body, self._passphrase)
        self._client.publish(topic_for(self.terminal_id, "events"), encode(envelope), qos=1)

    def _count(self, *names: str) -> None:
        with self._lock:
            self._counters.update(names)
            self._lock.notify_all()

    # -- protocol --------------------------------------------------------------------------------

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            envelope = self._verified(message.topic, bytes(message.payload))
        except EnvelopeError as exc:
            self._count("rejected", f"rejected.{exc.reason}")
            log.warning("terminal_request_rejected", extra={"terminal_id": self.terminal_id, "reason": exc.reason})
            return
        if self._is_duplicate(envelope["request_id"]):
            self._count("duplicates")
            return
        self._count("received", f"received.{envelope['type']}")
        if envelope["type"] == "payment_request":
            self._on_payment_request(envelope)
        else:
            self._on_cancel_request(envelope)

    def _verified(self, topic: str, payload: bytes) -> dict[str, Any]:
        if parse_topic(topic) != (self.terminal_id, "requests"):
            raise EnvelopeError("wrong_topic", f"not this terminal's requests topic: {topic}")
        envelope = decode(payload)
        if not verify_signature(envelope, self._passphrase):
            raise EnvelopeError("bad_signature", "signature does not match the terminal's passphrase")
        if envelope["terminal_id"] != self.terminal_id:
            raise EnvelopeError("terminal_mismatch", "envelope is addressed to another terminal")
        check_request(envelope["type"], envelope["body"])
        return envelope

    def _is_duplicate(self, request_id: str) -> bool:
        # QoS 1 may deliver a request twice; it must not start a second payment or a busy answer.
        with self._lock:
            if request_id in self._seen_request_ids:
                return True
            self._seen_request_ids[request_id] = None
            if len(self._seen_request_ids) > 1000:
                del self._seen_request_ids[next(iter(self._seen_request_ids))]
            return False

    def _on_payment_request(self, request: dict[str, Any]) -> None:
        fields = _log_fields(self.terminal_id, request)
        if self.behavior == "no_ack":
            log.info("payment_request_unanswered", extra=fields)
            return
        payment = _Payment(request)
        with self._lock:
            busy = self.behavior == "busy" or self._current is not None
            if not busy:
                self._current = payment
        if busy:
            self._send_event("ack", request["request_id"], dict(_BUSY_ACK))
            self._count("busy_acks_sent")
            log.info("payment_refused_busy", extra=fields)
            return
        self._send_event("ack", request["request_id"], {})
        self._count("acks_sent")
        log.info("payment_acknowledged", extra=fields)
        self._schedule_outcome(payment)

    def _schedule_outcome(self, payment: _Payment) -> None:
        expires_in_s = (parse_timestamp_ms(payment.request["body"]["expires_at"]) - time.time() * 1000) / 1000
        result_in_s = None if self.behavior == "ack_then_silent" else self.delay_ms / 1000
        if result_in_s is not None and result_in_s < expires_in_s:
            if result_in_s <= 0:
                self._complete(payment, self._outcome(payment.request))
                return
            delay_s, expired = result_in_s, False
        else:
            # A real terminal gives up on its payment screen when the payment expires.
            delay_s, expired = max(0.0, expires_in_s), True
        timer = threading.Timer(delay_s, self._on_timer, args=(payment, expired))
        timer.daemon = True
        payment.timer = timer
        timer.start()

    def _on_timer(self, payment: _Payment, expired: bool) -> None:
        if not expired:
            self._complete(payment, self._outcome(payment.request))
            return
        log.info("payment_expired", extra=_log_fields(self.terminal_id, payment.request))
        if self.behavior != "ack_then_silent":
            self._complete(payment, failed_result("timeout"))
        with self._lock:
            if self._current is payment:
                self._current = None
        self._count("payments_expired")

    def _outcome(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.behavior == "decline":
            return declined_result(self.terminal_id, request)
        return approved_result(self.terminal_id, request)

    def _on_cancel_request(self, cancel: dict[str, Any]) -> None:
        target = cancel["body"]["target_request_id"]
        with self._lock:
            payment = self._current
        honoured = (
            payment is not None
            and payment.request_id == target
            and payment.request["body"]["order_id"] == cancel["body"]["order_id"]
            and self.behavior != "ack_then_silent"  # silent means silent, cancel included
        )
        if not honoured or payment is None:
            with self._lock:
                sent = self._results.get(target)
            if sent is not None and self.behavior != "ack_then_silent":
                # Too late to abort: the customer has paid (or the payment ended). Say so again.
                self._send_event("result", target, dict(sent))
                self._count("results_resent")
                log.info("cancel_answered_with_result", extra=_log_fields(self.terminal_id, cancel))
                return
            self._count("cancels_ignored")
            log.info("cancel_ignored", extra=_log_fields(self.terminal_id, cancel))
            return
        if payment.timer is not None:
            payment.timer.cancel()
        if self._complete(payment, failed_result("cancelled")):
            self._count("cancels_honoured")

    def _complete(self, payment: _Payment, body: dict[str, Any]) -> bool:
        """Send the payment's one result; False if a cancel or the timer already finished it."""
        with self._lock:
            if self._current is not payment:
                return False
            self._current = None
            self._results[payment.request_id] = dict(body)
            if len(self._results) > 1000:
                del self._results[next(iter(self._results))]
        self._send_event("result", payment.request_id, dict(body))
        self._count("results_sent")
        log.info(
            "payment_result_sent",
            extra={
                **_log_fields(self.terminal_id, payment.request),
                "payment_status": body["payment_status"],
            },
        )
        if self._on_result is not None:
            try:
                self._on_result(self.terminal_id, payment.request, body)
            except Exception:
                # Raising here would kill paho's network thread; the hook's failure is logged loudly.
                self._count("result_hook_errors")
                log.exception("result_hook_failed", extra=_log_fields(self.terminal_id, payment.request))
        return True


def _log_fields(terminal_id: str, envelope: dict[str, Any]) -> dict[str, Any]:
    return {
        "terminal_id": terminal_id,
        "request_id": envelope["request_id"],
        "order_id": envelope["body"]["order_id"],
    }


# -- many terminals ------------------------------------------------------------------------------


@dataclass
class TerminalFleet:
    """Started terminals; ``stop()`` (or leaving the ``with`` block) takes them all offline."""

    terminals: list[SimulatedTerminal] = field(default_factory=list)

    def __iter__(self) -> Iterator[SimulatedTerminal]:
        return iter(self.terminals)

    def __getitem__(self, terminal_id: str) -> SimulatedTerminal:
        return next(t for t in self.terminals if t.terminal_id == terminal_id)

    def stop(self) -> None:
        for terminal in self.terminals:
            terminal.stop()

    def __enter__(self) -> TerminalFleet:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_terminals(
    specs: Iterable[TerminalSpec],
    host: str = "127.0.0.1",
    port: int = 1883,
    tls: TlsFiles | None = None,
    on_result: ResultHook | None = None,
) -> TerminalFleet:
    """Start every terminal, connecting them in parallel; return once all are online."""
    fleet = TerminalFleet(
        [
            SimulatedTerminal(s.terminal_id, s.passphrase, s.behavior, s.delay_ms, host, port, tls, on_result)
            for s in specs
        ]
    )
    try:
        for terminal in fleet:
            terminal.start(wait=False)
        for terminal in fleet:
            terminal.wait_connected()
    except BaseException:
        fleet.stop()
        raise
    return fleet


if __name__ == "__main__":
    from local.simulator_cli import main

    sys.exit(main())

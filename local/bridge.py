"""Stands in for the IoT topic rules: terminal messages from the broker go to the very same
Lambda handlers, with the very same event shape (``SELECT encode(*, 'base64') AS payload,
topic() AS topic, timestamp() AS received_at``), and the broker's lifecycle events go to the status
handler as the presence rule (``SELECT * FROM '$aws/events/presence/+/+'``) hands them over.

A handler that raises is a bug, not a refused message (those are answered and counted inside the
handler): the bridge records the crash and the stack stops with its traceback.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as mqtt

from chalicelib.adapters.channels import disable_nagle
from chalicelib.protocol import TOPIC_PREFIX

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any], Any], Any]


class TopicRuleBridge:
    def __init__(
        self, host: str, port: int, events_handler: Handler, status_handler: Handler, workers: int = 16
    ) -> None:
        self._handlers = {"events": events_handler, "status": status_handler}
        # One single-thread lane per terminal (by hash): a terminal's ack is handled before its result,
        # as it was sent, while different terminals are handled in parallel.
        self._lanes = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"topic-rule-{index}") for index in range(workers)
        ]
        self._subscribed = threading.Event()
        self.crash: str | None = None
        self.delivered = 0
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id="nepting-cloud-topic-rules",
            protocol=mqtt.MQTTv311,
        )
        self._client.on_socket_open = disable_nagle
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        # A broker restart drops every client: come back quickly (paho retries with this backoff).
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        if not self._subscribed.wait(timeout_s):
            raise RuntimeError("the topic-rule bridge could not subscribe to the broker")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        client.subscribe([(f"{TOPIC_PREFIX}/+/events", 1), (f"{TOPIC_PREFIX}/+/status", 1)])

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        # An exception here would end paho's network loop, and with it every terminal's events.
        try:
            self._route(message)
        except Exception:
            log.exception("topic rule could not route a message")

    def _route(self, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        handler = self._handlers.get(kind)
        if handler is None:
            return
        event = {
            "topic": message.topic,
            "payload": base64.b64encode(message.payload).decode("ascii"),
            "received_at": time.time_ns() // 1_000_000,
        }
        terminal = message.topic.rsplit("/", 2)[-2]
        self._lane(terminal).submit(self._invoke, handler, event)

    def presence(self, event: dict[str, Any]) -> None:
        """A lifecycle event from the broker: handled in its terminal's lane, in order with its messages."""
        self._lane(str(event.get("clientId"))).submit(self._invoke, self._handlers["status"], event)

    def _lane(self, terminal: str) -> ThreadPoolExecutor:
        return self._lanes[zlib.crc32(terminal.encode()) % len(self._lanes)]

    def _invoke(self, handler: Handler, event: dict[str, Any]) -> None:
        try:
            handler(event, None)
            self.delivered += 1
        except Exception:
            self.crash = traceback.format_exc()
            log.error("topic rule handler crashed:\n%s", self.crash)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        for lane in self._lanes:
            lane.shutdown(wait=True, cancel_futures=False)

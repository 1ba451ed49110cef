"""What IoT Core does for the cloud besides brokering, in the local stack: the topic rules that hand
terminal messages and lifecycle events to the Lambda handlers, and the data plane's Publish.

- Topic rules: the broker runs them itself, as IoT Core's rules engine does (no MQTT subscription
  of ours): each message on a terminal's ``events`` or ``status`` topic reaches the very same
  handler with the very same event shape (``SELECT encode(*, 'base64') AS payload, topic() AS
  topic, timestamp() AS received_at``), and the broker's lifecycle events reach the status handler
  as the presence rule (``SELECT * FROM '$aws/events/presence/+/+'``) hands them over.
- ``BrokerChannel``: the API's ``TerminalChannel`` through the broker's Publish, as ``iot-data``
  Publish is on AWS: accepted by the broker, not yet delivered, when it returns.

A handler that raises is a bug, not a refused message (those are answered and counted inside the
handler): the bridge records the crash and the stack stops with its traceback.
"""

from __future__ import annotations

import logging
import traceback
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from chalicelib import protocol
from chalicelib.exceptions import ChannelError
from chalicelib.protocol import TOPIC_PREFIX
from local.broker import BrokerPublishError

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any], Any], Any]

# The topic rules the stack gives its broker: (rule name, topic filter).
RULES = (("events", f"{TOPIC_PREFIX}/+/events"), ("status", f"{TOPIC_PREFIX}/+/status"))


class TopicRuleBridge:
    def __init__(self, events_handler: Handler, status_handler: Handler, workers: int = 16) -> None:
        self._handlers = {"events": events_handler, "status": status_handler}
        # One single-thread lane per terminal (by hash): a terminal's ack is handled before its result,
        # as it was sent, while different terminals are handled in parallel.
        self._lanes = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"topic-rule-{index}") for index in range(workers)
        ]
        self.crash: str | None = None
        self.delivered = 0

    def rule(self, name: str, event: dict[str, Any]) -> None:
        """A message a topic rule took: handled in its terminal's lane, in the broker's order."""
        handler = self._handlers.get(name)
        if handler is None:
            log.error("topic_rule_unknown", extra={"rule": name, "topic": event.get("topic")})
            return
        # The rule's filter matched: the topic is ``…/<terminal>/<kind>``.
        terminal = str(event["topic"]).rsplit("/", 2)[-2]
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
        for lane in self._lanes:
            lane.shutdown(wait=True, cancel_futures=False)


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...


class BrokerChannel:
    """The API's channel to the terminals through the local broker's Publish (``local/broker.py``)."""

    def __init__(self, broker: Publisher) -> None:
        self._broker = broker

    def publish(self, terminal_id: str, envelope: dict[str, Any]) -> None:
        try:
            self._broker.publish(protocol.topic_for(terminal_id, "requests"), protocol.encode(envelope), qos=1)
        except BrokerPublishError as exc:
            raise ChannelError(f"publish to {terminal_id} failed: {exc}") from exc

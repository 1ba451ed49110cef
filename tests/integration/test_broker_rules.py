"""The broker's topic rules and its data-plane Publish, as the local stack uses them in place of an
MQTT client of its own (``local/bridge.py``): in this process and in the broker's own, alike.

- A rule gets every message on a topic its filter matches, with the event shape of IoT Core's
  ``SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_at``, in the
  order the broker routed them; subscribers get the message as before.
- ``publish()`` routes a message as a client's PUBLISH would (to subscribers, and to the rules),
  refuses what a client could not publish, and says so when the broker is not there to take it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chalicelib import protocol
from chalicelib.exceptions import ChannelError
from local.bridge import RULES, BrokerChannel
from local.broker import (
    BrokerProcess,
    BrokerPublishError,
    RunningBroker,
    start_broker,
    start_broker_process,
)
from tests.integration.test_broker import TIMEOUT_S, PresenceLog, Recorder

Broker = RunningBroker | BrokerProcess
MODES: dict[str, Callable[..., Broker]] = {"in-process": start_broker, "own process": start_broker_process}


class RuleLog:
    """What the rules took: (rule name, event), in the order they came."""

    def __init__(self) -> None:
        self.taken: list[tuple[str, dict[str, Any]]] = []
        self._arrived = threading.Condition()

    def __call__(self, name: str, event: dict[str, Any]) -> None:
        with self._arrived:
            self.taken.append((name, event))
            self._arrived.notify_all()

    def wait_for_count(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.taken) >= count, TIMEOUT_S), self.taken
            return list(self.taken)


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rules() -> RuleLog:
    return RuleLog()


@pytest.fixture
def broker(mode: str, rules: RuleLog) -> Iterator[Broker]:
    with MODES[mode](rules=RULES, on_rule=rules) as running:
        yield running


def topic(terminal: str, kind: str) -> str:
    return protocol.topic_for(terminal, kind)


def test_a_rule_takes_each_message_on_its_topics_in_order_with_iot_cores_event_shape(
    broker: Broker, rules: RuleLog
) -> None:
    terminal = Recorder(broker, "PAX-1").start()
    before = time.time_ns() // 1_000_000
    payloads = [b'{"n":1}', b"\x00\xffnot json", b'{"n":3}']
    for payload in payloads:
        terminal.client.publish(topic("PAX-1", "events"), payload, qos=1)
    terminal.client.publish(topic("PAX-1", "status"), b'{"s":1}', qos=0)
    taken = rules.wait_for_count(4)
    after = time.time_ns() // 1_000_000
    assert [name for name, _ in taken] == ["events", "events", "events", "status"]
    assert [base64.b64decode(event["payload"]) for _, event in taken] == [*payloads, b'{"s":1}']
    for name, event in taken:
        assert set(event) == {"topic", "payload", "received_at"}
        assert event["topic"] == topic("PAX-1", name)
        assert before <= event["received_at"] <= after
    terminal.stop()


def test_messages_outside_every_rule_reach_subscribers_only(broker: Broker, rules: RuleLog) -> None:
    listener = Recorder(broker, "listener").start("#")
    terminal = Recorder(broker, "PAX-2").start()
    for other in (topic("PAX-2", "requests"), topic("PAX-2", "events/extra"), "elsewhere/events", "a/b"):
        terminal.client.publish(other, b"x", qos=1)
    terminal.client.publish(topic("PAX-2", "events"), b"last", qos=1)
    rules.wait_for_count(1)
    listener.wait_for(lambda m: m.payload == b"last")
    # The last message was routed after the others: had a rule taken one of them, it would be here.
    assert [event["topic"] for _, event in rules.taken] == [topic("PAX-2", "events")]
    assert listener.topics().count(topic("PAX-2", "events")) == 1
    assert len(listener.topics()) == 5
    listener.stop()
    terminal.stop()


def test_service_publish_reaches_subscribers_and_the_rules(broker: Broker, rules: RuleLog) -> None:
    terminal = Recorder(broker, "PAX-3").start(topic("PAX-3", "requests"))
    broker.publish(topic("PAX-3", "requests"), b'{"order":"A"}', qos=1)
    broker.publish(topic("PAX-3", "requests"), b'{"order":"B"}', qos=1)
    arrived = terminal.wait_for(lambda m: m.payload == b'{"order":"B"}')
    assert [m.payload for m in terminal.messages if m.topic.endswith("/requests")] == [
        b'{"order":"A"}',
        b'{"order":"B"}',
    ]
    assert arrived.qos == 1
    broker.publish(topic("PAX-3", "events"), b"from the service", qos=0)
    [(name, event)] = rules.wait_for_count(1)
    assert (name, base64.b64decode(event["payload"])) == ("events", b"from the service")
    terminal.stop()


def test_service_publish_refuses_what_a_client_could_not_publish(broker: Broker) -> None:
    for bad_topic in ("", "a/+/b", "a/#", "$aws/things/x", "/".join("x" * 9), "t" * 257):
        with pytest.raises(BrokerPublishError):
            broker.publish(bad_topic, b"x")
    with pytest.raises(BrokerPublishError, match="payload over"):
        broker.publish("fine/topic", b"x" * (128 * 1024 + 1))
    # Still serving after the refusals.
    listener = Recorder(broker, "still-there").start("fine/topic")
    broker.publish("fine/topic", b"ok")
    listener.wait_for(lambda m: m.payload == b"ok")
    listener.stop()


@pytest.mark.parametrize("mode", list(MODES))
def test_service_publish_after_stop_says_the_broker_is_not_running(mode: str) -> None:
    running = MODES[mode]()
    running.stop()
    with pytest.raises(BrokerPublishError, match="not running"):
        running.publish("a/b", b"x")


def test_rules_and_presence_come_in_the_brokers_order_in_its_own_process() -> None:
    order: list[str] = []
    presence = PresenceLog()

    def on_presence(event: dict[str, Any]) -> None:
        order.append(f"{event['eventType']}:{event['clientId']}")
        presence(event)

    def on_rule(name: str, event: dict[str, Any]) -> None:
        order.append(f"{name}:{base64.b64decode(event['payload']).decode()}")

    with start_broker_process(on_presence=on_presence, rules=RULES, on_rule=on_rule) as running:
        terminal = Recorder(running, "PAX-4").start()
        terminal.client.publish(topic("PAX-4", "events"), b"first", qos=1).wait_for_publish(TIMEOUT_S)
        terminal.stop()
        presence.wait_for("PAX-4", "disconnected")
    assert order == ["connected:PAX-4", "events:first", "disconnected:PAX-4"]


@pytest.mark.parametrize("mode", list(MODES))
def test_a_failing_rule_hook_is_logged_and_the_next_messages_still_flow(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    rules = RuleLog()

    def hook(name: str, event: dict[str, Any]) -> None:
        if base64.b64decode(event["payload"]) == b"boom":
            raise RuntimeError("hook failed")
        rules(name, event)

    with MODES[mode](rules=RULES, on_rule=hook) as running:
        terminal = Recorder(running, "PAX-5").start()
        terminal.client.publish(topic("PAX-5", "events"), b"boom", qos=1)
        terminal.client.publish(topic("PAX-5", "events"), b"after", qos=1)
        [(_, event)] = rules.wait_for_count(1)
        assert base64.b64decode(event["payload"]) == b"after"
        assert not running.crashed
        terminal.stop()
    assert "rule_hook_failed" in caplog.text


@pytest.mark.parametrize("mode", list(MODES))
def test_a_rule_with_an_invalid_filter_is_refused_at_start(mode: str) -> None:
    with pytest.raises(ValueError, match="invalid topic filter"):
        MODES[mode](rules=[("bad", "a/#/b")], on_rule=RuleLog())


def test_the_api_channel_publishes_the_signed_envelope_on_the_terminals_requests_topic(broker: Broker) -> None:
    terminal = Recorder(broker, "PAX-6").start(topic("PAX-6", "requests"))
    envelope = {"type": "payment", "order_id": "O-1", "amount": 1234}
    BrokerChannel(broker).publish("PAX-6", envelope)
    arrived = terminal.wait_for(lambda m: m.topic == topic("PAX-6", "requests"))
    assert arrived.payload == protocol.encode(envelope)
    assert arrived.qos == 1
    terminal.stop()


def test_the_api_channel_turns_a_broker_that_is_gone_into_a_channel_error() -> None:
    running = start_broker_process()
    running.stop()
    with pytest.raises(ChannelError, match="publish to PAX-7 failed"):
        BrokerChannel(running).publish("PAX-7", {"type": "payment"})


def test_an_unreadable_command_on_the_brokers_stdin_is_logged_and_the_next_publish_still_routed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with start_broker_process() as running:
        listener = Recorder(running, "listener").start("after/garbage")
        process = running._process
        assert process is not None and process.stdin is not None
        for garbage in (
            b"not json",
            b'{"publish": {"topic": "a/b"}}',
            b'{"publish": {"topic": "$x", "payload": "", "qos": 1, "retain": false}}',
            b'{"publish": {"topic": "a", "payload": "@@", "qos": 1, "retain": false}}',
        ):
            process.stdin.write(garbage + b"\n")
        process.stdin.flush()
        running.publish("after/garbage", b"still routed")
        listener.wait_for(lambda m: m.payload == b"still routed")
        listener.stop()
        assert not running.crashed
    refused = [
        json.loads(line)
        for line in capfd.readouterr().err.splitlines()
        if line.startswith("{") and "mqtt_broker_unreadable_command" in line
    ]
    assert len(refused) == 4

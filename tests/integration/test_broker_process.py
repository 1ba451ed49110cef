"""The broker in its own process (``start_broker_process``), as the local stack runs it: presence
relayed in order and complete at stop, ports, restart, a crash seen from the parent, and no broker
left behind when its parent is killed.

Run as a script to compare QoS 1 round trips through the broker in this process and in its own:

    python -m tests.integration.test_broker_process
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from local.broker import (
    BrokerCrashedError,
    BrokerPortInUseError,
    BrokerProcess,
    start_broker,
    start_broker_process,
)
from local.stack import RunningStack, StackConfig
from tests.integration.test_broker import TIMEOUT_S, PresenceLog, Recorder, measure_round_trips

ROOT = Path(__file__).resolve().parents[2]


def eventually(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {TIMEOUT_S}s"
        time.sleep(0.02)
    return found


def paho_client(broker: BrokerProcess, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def process_gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody reaped yet (it holds no socket any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def presence() -> PresenceLog:
    return PresenceLog()


@pytest.fixture
def broker(presence: PresenceLog) -> Iterator[BrokerProcess]:
    with start_broker_process(on_presence=presence) as running:
        yield running


def test_runs_in_a_child_process_on_a_free_port(broker: BrokerProcess) -> None:
    assert broker.pid != os.getpid()
    assert not process_gone(broker.pid)
    assert broker.port > 0
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    recorder = Recorder(broker, "client").start("orders/#")
    recorder.client.publish("orders/1", b"x", qos=1)
    assert recorder.wait_for(lambda m: m.topic == "orders/1").payload == b"x"
    recorder.stop()


def test_busy_port_is_named_in_the_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        with pytest.raises(BrokerPortInUseError, match=f"port {port} "):
            start_broker_process(port=port)


def test_presence_events_reach_the_parent_in_the_order_the_broker_emitted_them(
    broker: BrokerProcess, presence: PresenceLog
) -> None:
    before = time.time_ns() // 1_000_000
    first = Recorder(broker, "PAX-1").start()
    presence.wait_for("PAX-1", "connected")
    first.client.loop_stop()
    first.client.socket().close()  # dropped, not a clean disconnect
    presence.wait_for("PAX-1", "disconnected")
    second = Recorder(broker, "PAX-1").start()
    presence.wait_for("PAX-1", "connected", 2)
    second.stop()
    presence.wait_for("PAX-1", "disconnected", 2)

    events = [e for e in presence.events if e["clientId"] == "PAX-1"]
    assert [e["eventType"] for e in events] == ["connected", "disconnected", "connected", "disconnected"]
    sessions = [e["sessionIdentifier"] for e in events]
    assert sessions[0] == sessions[1] != sessions[2] == sessions[3]
    stamps = [e["timestamp"] for e in events]
    assert before <= stamps[0] and stamps == sorted(stamps)


def test_stop_returns_after_every_shutdown_disconnect_was_delivered() -> None:
    delivered: list[dict[str, Any]] = []

    def slow_hook(event: dict[str, Any]) -> None:
        time.sleep(0.05)  # a busy consumer: the events of the shutdown are still queued when the child exits
        delivered.append(event)

    running = start_broker_process(on_presence=slow_hook)
    client_ids = [f"PAX-{n}" for n in range(5)]
    clients = [paho_client(running, client_id) for client_id in client_ids]
    eventually(lambda: len(delivered) == len(client_ids), "every connect relayed")
    for client in clients:
        client.loop_stop()  # they stay connected until the broker goes

    running.stop()

    disconnected = sorted(e["clientId"] for e in delivered if e["eventType"] == "disconnected")
    assert disconnected == client_ids
    running.stop()  # a second stop changes nothing
    assert len(delivered) == 2 * len(client_ids)


def test_a_failing_presence_hook_is_logged_and_later_events_still_arrive(caplog: pytest.LogCaptureFixture) -> None:
    received: list[dict[str, Any]] = []

    def hook(event: dict[str, Any]) -> None:
        if event["clientId"] == "PAX-BAD":
            raise RuntimeError("handler down")
        received.append(event)

    with start_broker_process(on_presence=hook) as running:
        Recorder(running, "PAX-BAD").start().stop()
        Recorder(running, "PAX-OK").start().stop()
        eventually(lambda: len(received) == 2, "PAX-OK's events after PAX-BAD's failed")

    assert [(e["clientId"], e["eventType"]) for e in received] == [("PAX-OK", "connected"), ("PAX-OK", "disconnected")]
    failures = [r for r in caplog.records if r.getMessage() == "presence_hook_failed"]
    assert [getattr(r, "client_id", None) for r in failures] == ["PAX-BAD", "PAX-BAD"]


def test_restart_keeps_the_port_in_a_new_process_and_clients_reconnect(
    broker: BrokerProcess, presence: PresenceLog
) -> None:
    port, pid = broker.port, broker.pid
    client = paho_client(broker, "PAX-2")
    try:
        presence.wait_for("PAX-2", "connected")
        broker.restart()
        assert (broker.port, broker.pid != pid) == (port, True)
        assert process_gone(pid)
        presence.wait_for("PAX-2", "disconnected")
        reconnected = presence.wait_for("PAX-2", "connected", 2)
    finally:
        client.disconnect()
        client.loop_stop()
    assert reconnected[0]["sessionIdentifier"] != reconnected[1]["sessionIdentifier"]


def test_a_killed_broker_process_is_reported_as_crashed() -> None:
    broker = start_broker_process()
    assert not broker.crashed
    os.kill(broker.pid, signal.SIGKILL)

    eventually(lambda: broker.crashed, "the parent noticed")
    with pytest.raises(BrokerCrashedError, match="killed by SIGKILL"):
        broker.raise_if_crashed()
    with pytest.raises(BrokerCrashedError, match="killed by SIGKILL"):
        broker.stop()


def test_a_crashed_broker_loop_is_reported_with_what_the_process_printed() -> None:
    presence = PresenceLog()
    running = start_broker_process(on_presence=presence, module="tests.integration.broker_that_breaks")
    subscriber = Recorder(running, "subscriber").start("break/#")
    subscriber.client.publish("break/1", b"x", qos=1)

    eventually(lambda: running.crashed, "the parent noticed")
    subscriber.client.loop_stop()
    with pytest.raises(BrokerCrashedError) as crash:
        running.raise_if_crashed()
    report = str(crash.value)
    assert "RuntimeError: routing table corrupted" in report  # the child's traceback
    assert "mqtt_broker_crashed" in report  # the tail of its stderr: its own log line
    # The sessions the crash ended were reported too.
    presence.wait_for("subscriber", "disconnected")
    stack = RunningStack(StackConfig(), None, None, "", running.port, "", broker=running)
    assert "routing table corrupted" in (stack.crash_report() or "")
    with pytest.raises(BrokerCrashedError):
        running.stop()


def test_the_broker_process_logs_json_lines_to_the_parents_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="local.broker")  # the child follows the parent's level
    with start_broker_process() as running:
        port = running.port

    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    assert {"logger": "local.broker", "event": "mqtt_broker_started", "port": port}.items() <= next(
        line for line in lines if line["event"] == "mqtt_broker_started"
    ).items()
    assert any(line["event"] == "mqtt_broker_stopped" and line["level"] == "INFO" for line in lines)


ORPHAN_PARENT = """
import time
from local.broker import start_broker_process
broker = start_broker_process()
print(broker.pid, broker.port, flush=True)
time.sleep(600)
"""


def test_the_broker_process_exits_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_PARENT], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert parent.stdout is not None
        pid, port = (int(field) for field in parent.stdout.readline().split())
        assert not process_gone(pid) and not port_free(port)
    finally:
        parent.kill()
        parent.wait()

    eventually(lambda: process_gone(pid), f"broker process {pid} gone")
    eventually(lambda: port_free(port), f"port {port} free")


def _report(samples: int = 300) -> None:
    for mode, start in (("in-process", start_broker), ("own process", start_broker_process)):
        with start() as running:
            rtts = measure_round_trips(running, samples)
        cuts = statistics.quantiles(rtts, n=100)
        print(f"broker {mode:11} QoS1 round trip: p50 {cuts[49]:6.2f} ms  p99 {cuts[98]:6.2f} ms  (n={samples})")


if __name__ == "__main__":
    _report()

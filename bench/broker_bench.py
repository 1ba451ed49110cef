"""The broker's own cost: CPU per message routed by the local stack's MQTT broker, in its own process.

``python -m bench.broker_bench [--round-trips N] [--in-flight K]``

A "cloud" paho client publishes QoS 1 requests on ``bench/<k>/requests``; a "terminal" paho client
subscribed to ``bench/+/requests`` answers each with a QoS 1 response on ``bench/<k>/responses``,
which the cloud holds. ``--in-flight`` requests are outstanding at any time (200 in the stack's
bench). Each round trip is two messages routed, each with its PUBACK in and its PUBACK out; the
broker's CPU (utime + stime of its process, from ``/proc/<pid>/stat``) over the round trips is
divided by the messages routed. The clients run in this process, so their CPU is not the broker's.

Linux only (``/proc``). A figure for comparison, not an assertion: bench/README.md ("The broker").
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from local.broker import start_broker_process

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_TIMEOUT_S = 120.0


def process_cpu_s(pid: int) -> float:
    """utime + stime of a live process, in seconds (``/proc/<pid>/stat`` fields 14 and 15)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def _nodelay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Pair:
    """The cloud and one terminal, echoing through the broker; ``run`` keeps ``in_flight`` outstanding."""

    def __init__(self, host: str, port: int) -> None:
        self.terminal = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-terminal")
        self.cloud = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-cloud")
        self.terminal.on_message = self._answer
        self.cloud.on_message = self._answered
        self._done = threading.Condition()
        self._answered_count = 0
        for client in (self.terminal, self.cloud):
            client.max_inflight_messages_set(1000)  # the in-flight window is the bench's, not paho's
            # Nagle off, as the bench's MQTT floor does: paho writes a response's PUBLISH and then the
            # request's PUBACK, and with Nagle on the PUBACK waits for the broker's delayed ACK.
            client.on_socket_open = _nodelay
            client.connect(host, port)
            client.loop_start()
        self._subscribe(self.terminal, "bench/+/requests")
        self._subscribe(self.cloud, "bench/+/responses")

    @staticmethod
    def _subscribe(client: mqtt.Client, topic: str) -> None:
        granted = threading.Event()
        client.on_subscribe = lambda *_args: granted.set()
        client.subscribe(topic, qos=1)
        if not granted.wait(_TIMEOUT_S):
            raise RuntimeError(f"no SUBACK for {topic}")

    def _answer(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        slot = message.topic.split("/")[1]
        client.publish(f"bench/{slot}/responses", message.payload, qos=1)

    def _answered(self, _c: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
        with self._done:
            self._answered_count += 1
            self._done.notify_all()

    def run(self, round_trips: int, in_flight: int) -> None:
        sent = 0
        with self._done:
            self._answered_count = 0
        while True:
            with self._done:
                answered = self._answered_count
                if answered >= round_trips:
                    return
                while sent < round_trips and sent - answered < in_flight:
                    self.cloud.publish(f"bench/{sent % in_flight}/requests", b"x" * 200, qos=1)
                    sent += 1
                if not self._done.wait_for(lambda a=answered: self._answered_count > a, _TIMEOUT_S):
                    raise RuntimeError(f"stalled after {self._answered_count} of {round_trips} round trips")

    def close(self) -> None:
        for client in (self.cloud, self.terminal):
            client.disconnect()
            client.loop_stop()


def measure(round_trips: int, in_flight: int) -> dict[str, float]:
    """Broker CPU per message routed over ``round_trips`` QoS 1 round trips (after a warm-up)."""
    with start_broker_process() as broker:
        pair = _Pair(broker.host, broker.port)
        try:
            pair.run(min(200, round_trips), in_flight)  # warm-up: connections, caches
            before_cpu, before_wall = process_cpu_s(broker.pid), time.perf_counter()
            pair.run(round_trips, in_flight)
            cpu_s, wall_s = process_cpu_s(broker.pid) - before_cpu, time.perf_counter() - before_wall
        finally:
            pair.close()
    messages = 2 * round_trips
    return {
        "round_trips": round_trips,
        "in_flight": in_flight,
        "broker_cpu_s": cpu_s,
        "wall_s": wall_s,
        "cpu_us_per_message": cpu_s / messages * 1e6,
        "messages_per_s": messages / wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broker_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="runs; each figure's median is printed last")
    args = parser.parse_args(argv)
    results = []
    for run in range(args.repeat):
        result = measure(args.round_trips, args.in_flight)
        results.append(result)
        print(
            f"run {run + 1}: {result['round_trips']} round trips, {result['in_flight']} in flight: "
            f"broker CPU {result['cpu_us_per_message']:.0f} µs per message routed, "
            f"{result['messages_per_s']:.0f} messages/s",
            flush=True,
        )
    per_message = sorted(r["cpu_us_per_message"] for r in results)[len(results) // 2]
    print(f"median: broker CPU {per_message:.0f} µs per message routed (with its PUBACKs in and out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

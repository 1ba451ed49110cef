"""The simulated terminals' processes: ``python -m bench.terminals`` runs a share of the seed's
simulated terminals (``local.simulator.run_terminals``) outside the stack's process, which the bench
starts with ``StackConfig(simulate=False)``.

Each process runs at most ``PER_PROCESS`` terminals: a paho client watches its socket and a socket
pair of its own with ``select()``, which cannot watch a descriptor numbered 1024 or more, so one
process holds about 3 descriptors per terminal and stays well under that.

The bench's process talks to each in JSON lines: it writes the job (broker address, terminals) on
stdin, the terminal process answers ``{"ready": n}`` once every terminal is online; then ``drain``
answers when each order's result was published since the last ``drain`` (``ResultClock``, inside
this process) and the MQTT messages its terminals published; ``stop`` takes the terminals offline.
Nothing else may go to stdout, so the process sends whatever a library prints to stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from local.children import take_every_core

ROOT = Path(__file__).resolve().parents[1]
PER_PROCESS = 200
START_TIMEOUT_S = 120.0
ANSWER_TIMEOUT_S = 60.0


def _send(stream: IO[str], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def main() -> int:
    take_every_core()  # not only the core the stack's process keeps to
    protocol, sys.stdout = sys.stdout, sys.stderr
    from bench.probes import Probes, ResultClock
    from local.simulator import TerminalSpec, run_terminals

    job = json.loads(sys.stdin.readline())
    # The publish stamps are taken here and compared with the ECRs' answer times in another process:
    # time.perf_counter is CLOCK_MONOTONIC on Linux, one clock for every process on the machine.
    clock = ResultClock().install()
    publishes = Probes().install_mqtt()
    specs = [TerminalSpec(**spec) for spec in job["terminals"]]
    try:
        fleet = run_terminals(specs, job["host"], job["port"])
    except Exception:
        _send(protocol, {"error": traceback.format_exc()})
        return 1
    _send(protocol, {"ready": len(specs)})
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "drain":
                counts = publishes.snapshot()
                publishes.reset()
                _send(
                    protocol,
                    {
                        "published": clock.drain(),
                        "mqtt_publishes": counts["mqtt_publishes"],
                        "mqtt_max_payload_bytes": counts["mqtt_max_payload_bytes"],
                    },
                )
            elif command == "stop":
                break
    finally:
        fleet.stop()
    _send(protocol, {"stopped": True})
    return 0


# -- the bench's side ------------------------------------------------------------------------------


class TerminalProcessError(RuntimeError):
    pass


class _TerminalProcess:
    def __init__(self, host: str, port: int, terminals: list[dict[str, Any]]) -> None:
        self.terminal_ids = [t["terminal_id"] for t in terminals]
        self.process = subprocess.Popen(  # this interpreter, a module of this repository
            [sys.executable, "-m", "bench.terminals"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self._write(json.dumps({"host": host, "port": port, "terminals": terminals}))

    def _write(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def read(self, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        watchdog = threading.Timer(timeout_s, self.process.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            line = self.process.stdout.readline()
        finally:
            watchdog.cancel()
        if not line:
            code = self.process.wait()
            raise TerminalProcessError(f"a simulated terminals' process ended with code {code} and no answer")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise TerminalProcessError(f"a simulated terminals' process failed:\n{message['error']}")
        return message

    def ask(self, command: str, timeout_s: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        self._write(command)
        return self.read(timeout_s)

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.ask("stop")
                self.process.wait(ANSWER_TIMEOUT_S)
        except (OSError, ValueError, TerminalProcessError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()


class TerminalProcesses:
    """The seed's simulated terminals, ``PER_PROCESS`` to a process, each process started the first
    time one of its terminals is needed (``ensure``): a run that stops stepping early starts fewer."""

    def __init__(self, host: str, port: int, terminals: Iterable[dict[str, Any]], per_process: int = PER_PROCESS):
        self.host, self.port = host, port
        listed = list(terminals)
        self._chunks = [listed[i : i + per_process] for i in range(0, len(listed), per_process)]
        self._running: dict[int, _TerminalProcess] = {}

    def ensure(self, terminal_ids: Iterable[str]) -> list[str]:
        """Start the processes holding these terminals; returns the ids of the terminals just started."""
        wanted = set(terminal_ids)
        starting = {
            index: _TerminalProcess(self.host, self.port, chunk)
            for index, chunk in enumerate(self._chunks)
            if index not in self._running and wanted & {t["terminal_id"] for t in chunk}
        }
        self._running.update(starting)
        for process in starting.values():
            process.read(START_TIMEOUT_S)  # {"ready": n}: every terminal online
        return [terminal_id for process in starting.values() for terminal_id in process.terminal_ids]

    @property
    def pids(self) -> list[int]:
        return [process.process.pid for process in self._running.values()]

    @property
    def count(self) -> int:
        return len(self._running)

    def drain(self) -> dict[str, Any]:
        """Every result published since the last drain ({order id: perf_counter}), and the MQTT
        messages the terminals published, by kind."""
        published: dict[str, float] = {}
        kinds: dict[str, int] = {}
        largest = 0
        for process in self._running.values():
            answer = process.ask("drain")
            published.update(answer["published"])
            for kind, count in answer["mqtt_publishes"].items():
                kinds[kind] = kinds.get(kind, 0) + count
            largest = max(largest, answer["mqtt_max_payload_bytes"])
        return {"published": published, "mqtt_publishes": kinds, "mqtt_max_payload_bytes": largest}

    def stop(self) -> None:
        for process in self._running.values():
            process.stop()
        self._running.clear()


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's load runs outside the process it measures: the ECRs' process (bench/ecr.py), the
simulated terminals' processes (bench/terminals.py), and the CPU accounting that tells them from the
stack (bench/cpu.py). Against a stub API and a real broker; no stack is started here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench import ecr
from bench.cpu import STACK, ProcessCpu
from bench.load import Payment, Terminal
from bench.terminals import TerminalProcesses
from local.broker import RunningBroker, start_broker
from tests.integration.test_simulator import PASSPHRASE, ScriptedCloud

TIMEOUT_S = 60.0


class _StubApi(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.connections = 0
        self.orders: list[str] = []
        self.lock = threading.Lock()


class _StubHandler(BaseHTTPRequestHandler):
    """Answers every order at once with a success, on a keep-alive connection."""

    protocol_version = "HTTP/1.1"
    server: _StubApi

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.orders.append(body["order"]["order_id"])
        answer = json.dumps({"paymentStatus": "Success"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


@pytest.fixture
def stub_api() -> Iterator[_StubApi]:
    server = _StubApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_ecrs_pay_from_their_own_process_one_connection_each_and_steady_ones_start_after_their_offset(
    stub_api: _StubApi,
) -> None:
    offsets = [0.0, 0.2, 0.4]
    terminals = [Terminal("BENCH", f"C{i}", 0) for i in range(3)]
    job = {
        "kind": "concurrent",
        "host": "127.0.0.1",
        "port": stub_api.server_address[1],
        "login": "bench",
        "password": "pw",
        "scenario": "steady_3",
        "terminals": [vars(t) for t in terminals],
        "per_terminal": 2,
        "offsets_s": offsets,
    }
    seen: dict[str, Any] = {}

    def before_go(pid: int) -> None:
        seen["pid"] = pid
        seen["go"] = time.perf_counter()

    answer = ecr.run(job, TIMEOUT_S, before_go)

    assert seen["pid"] != os.getpid()
    assert stub_api.connections == 3, "one keep-alive connection per ECR, for all its payments"
    payments = [Payment(**row) for row in answer["payments"]]
    assert sorted(p.order_id for p in payments) == sorted(stub_api.orders)
    assert {p.outcome for p in payments} == {"ok"} and len(payments) == 6
    assert answer["cpu_s"] > 0 and answer["wall_s"] > 0
    # perf_counter readings of the ECRs' process and of this one are on one clock: no ECR started
    # its first payment before its offset had passed since the go.
    for terminal, offset in zip(terminals, offsets, strict=True):
        first = min(p.started for p in payments if p.terminal == f"BENCH-{terminal.serial}")
        assert first - seen["go"] >= offset
        assert all(p.received >= p.started for p in payments)


def test_an_ecr_job_that_fails_raises_with_the_ecr_process_traceback() -> None:
    with pytest.raises(ecr.EcrProcessError, match="unknown job"):
        ecr.run({"kind": "nonsense", "login": "x", "password": "y"}, TIMEOUT_S)


BURN = """
import sys, time
deadline = time.process_time() + 0.3
while time.process_time() < deadline:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""


def _burner(tmp_path: Path, *module: str) -> subprocess.Popen[str]:
    (tmp_path / "burner.py").write_text(BURN)
    command = [sys.executable, *(module or ("-c", BURN))]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert process.stdout is not None
    return process


def test_process_cpu_counts_a_child_of_the_stack_as_the_stacks_and_a_load_process_as_the_loads(
    tmp_path: Path,
) -> None:
    probe = ProcessCpu()
    stack_child = _burner(tmp_path, "-m", "burner")
    load_child = _burner(tmp_path)
    load = {load_child.pid: "ECRs"}
    try:
        before = probe.snapshot(load)
        for process in (stack_child, load_child):
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "burnt"
        spent = ProcessCpu.spent(before, probe.snapshot(load))
    finally:
        for process in (stack_child, load_child):
            process.communicate("")
    # 0.3 s of CPU each, read in clock ticks: at least 0.25 s seen, each in its own part.
    assert spent["stack child: burner"] >= 0.25
    assert spent["ECRs"] >= 0.25
    assert STACK in spent
    # The load process is the load's alone, never also a stack child (the test run may have other
    # children of its own, such as the CDK tests' node process).
    assert f"stack child: {Path(sys.executable).name}" not in spent


@pytest.fixture
def broker() -> Iterator[RunningBroker]:
    with start_broker() as running:
        yield running


def test_terminal_processes_report_when_each_result_was_published_and_what_they_published(
    broker: RunningBroker,
) -> None:
    cloud = ScriptedCloud(broker)
    specs = [
        {"terminal_id": f"BENCH-T{i}", "passphrase": PASSPHRASE, "behavior": "approve", "delay_ms": 0} for i in range(3)
    ]
    fleet = TerminalProcesses(broker.host, broker.port, specs, per_process=2)
    try:
        assert sorted(fleet.ensure(["BENCH-T0"])) == ["BENCH-T0", "BENCH-T1"]
        assert fleet.count == 1 and fleet.ensure(["BENCH-T1"]) == []
        assert fleet.ensure(["BENCH-T2"]) == ["BENCH-T2"] and fleet.count == 2
        assert all(pid != os.getpid() for pid in fleet.pids)
        fleet.drain()
        sent = time.perf_counter()
        request_ids = [cloud.pay(terminal_id=f"BENCH-T{i}") for i in (0, 2)]
        results = [cloud.event(request_id, "result") for request_id in request_ids]
        drained = fleet.drain()
        drained_at = time.perf_counter()
    finally:
        fleet.stop()
        cloud.stop()
    assert all(result["body"]["payment_status"] == "Success" for result in results)
    orders = {f"order-{request_id[:8]}" for request_id in request_ids}  # as ScriptedCloud.pay names them
    assert set(drained["published"]) == orders
    # The terminals' perf_counter and this process's are one clock.
    for stamp in drained["published"].values():
        assert sent <= stamp <= drained_at
    # An ack and a result per payment, from both processes.
    assert drained["mqtt_publishes"] == {"events": 4}
    assert drained["mqtt_max_payload_bytes"] > 0
    assert fleet.count == 0


def test_broker_bench_completes_every_round_trip_and_reads_the_broker_processs_cpu() -> None:
    from bench.broker_bench import measure

    result = measure(round_trips=300, in_flight=20)

    # run() raises if a response goes missing: all 300 came back, through a broker in its own process
    assert (result["round_trips"], result["in_flight"]) == (300, 20)
    assert result["broker_cpu_s"] >= 0 and result["wall_s"] > 0
    assert result["cpu_us_per_message"] == result["broker_cpu_s"] / 600 * 1e6

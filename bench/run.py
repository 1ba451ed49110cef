"""``make bench``: start the local stack on free ports and measure, in one run, the physical floor,
end-to-end and added latency (AWS mode and local mode), concurrency, and the cost drivers per payment.

The stack runs in this process; its load does not: the simulated terminals run in processes of their
own (bench/terminals.py), and so do the ECRs (bench/ecr.py), so the figures are the stack's.

    python -m bench.run            # the full run, a few minutes on 2 cores
    python -m bench.run --quick    # a smoke run with tiny sample counts

Results: bench/results/<UTC timestamp>.json, latest.json, REPORT.md and PNG plots (see bench/README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Before anything imports chalicelib.observability: no EMF lines on stdout in the bench.
os.environ.setdefault("METRICS_EMF", "false")

from bench import ecr, load
from bench.cpu import GATEWAY, GATEWAY_THREADS, HARNESS, ProcessCpu, raise_open_files_limit, set_apart
from bench.probes import Probes, ThreadCpu, TimingWaker
from bench.report import summarize_scenario, write_outputs
from bench.terminals import PER_PROCESS, TerminalProcesses
from chalicelib.config import Settings

RESULTS = Path(__file__).with_name("results")
LOGIN, PASSWORD = "bench", "bench-password-2026"
MANUFACTURER = "BENCH"


@dataclass(frozen=True)
class BenchConfig:
    floor_samples: int = 300
    e2e_samples: int = 300
    # Added latency with the poll interval at its cap: a few terminals taking a customer time, in
    # parallel but well below saturation (20 already saturate 2 cores: see bench/README.md).
    cap_terminals: int = 5
    cap_payments: int = 12
    # The long interaction, measured directly (AWS mode) rather than only extrapolated.
    long_terminals: int = 4
    long_customer_ms: int = 30_000
    # Stepped until one breaks (see max_error_rate, max_overhead_p99_ms): the report says which and why.
    # Steps are run with steady arrivals: each ECR starts after a random offset in [0, mean customer
    # time), so the N payments are in flight together without all arriving in the same millisecond.
    steps: tuple[int, ...] = (10, 50, 100, 150, 200, 300, 400, 600, 800, 1000, 1200, 1600)
    # Also run as a burst (every ECR starts at once), right after the steady run of the same step.
    burst_steps: tuple[int, ...] = (200,)
    step_payments: int = 3
    # Simulated terminals per process (paho's select() cannot watch a descriptor past 1023).
    terminals_per_process: int = PER_PROCESS
    customer_min_ms: int = 2_000
    customer_max_ms: int = 5_000
    random_seed: int = 20261128
    # Stop stepping when a step breaks badly.
    max_error_rate: float = 0.05
    max_overhead_p99_ms: float = 2_000.0
    concurrency_mode: str = "local"
    # Local mode only: a longer poll cap, since the in-process waker cuts every sleep short (None: as configured).
    local_poll_max_ms: int | None = None
    groups: tuple[str, ...] = ("instant", "customer", "long", "concurrency")
    # Without the Console side (IPN gateway, stream and queue pollers): the payment path alone.
    console_side: bool = True
    # The stack's process on one core, as make run keeps it (local/children.py keep_to_one_core).
    one_core: bool = True
    # The local stack's store: "sqlite" (make run's default) or "moto" (the AWS adapters, whose calls
    # the cost model counts).
    store: str = "sqlite"

    @classmethod
    def quick(cls) -> BenchConfig:
        return cls(
            floor_samples=30,
            e2e_samples=30,
            cap_terminals=4,
            cap_payments=2,
            long_terminals=1,
            long_customer_ms=3_000,
            steps=(5, 10),
            burst_steps=(10,),
            step_payments=1,
            customer_min_ms=500,
            customer_max_ms=1_500,
        )


def terminals_for(config: BenchConfig) -> dict[str, list[load.Terminal]]:
    rng = random.Random(config.random_seed)
    crowd = [
        load.Terminal(MANUFACTURER, f"C{index:04d}", rng.randint(config.customer_min_ms, config.customer_max_ms))
        for index in range(max((*config.steps, *config.burst_steps, config.cap_terminals)))
    ]
    # In this order in the seed: the terminals processes start in order, the first one holding the
    # instant and long terminals and the start of the crowd.
    return {
        "instant": [load.Terminal(MANUFACTURER, "INSTANT", 0)],
        "long": [
            load.Terminal(MANUFACTURER, f"L{index:02d}", config.long_customer_ms)
            for index in range(config.long_terminals)
        ],
        "crowd": crowd,
    }


def write_seed(path: Path, terminals: dict[str, list[load.Terminal]]) -> None:
    seed = {
        "ipn_secret": "bench-ipn-secret",
        "merchants": [
            {
                "merchant_id": "MB",
                "login": LOGIN,
                "password": PASSWORD,
                "notify_passphrase": "bench-np",
                "notify_url": None,
            }
        ],
        "terminals": [
            {
                "merchant_id": "MB",
                "manufacturer": t.manufacturer,
                "serial_number": t.serial,
                "passphrase": f"bench-passphrase-{t.serial}",
                "simulator": {"behavior": "approve", "delay_ms": t.customer_ms},
            }
            for group in terminals.values()
            for t in group
        ],
    }
    path.write_text(json.dumps(seed), encoding="utf-8")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def terminal_id(terminal: load.Terminal) -> str:
    return f"{terminal.manufacturer}-{terminal.serial}"


def steady_offsets(config: BenchConfig, terminals: list[load.Terminal]) -> list[float]:
    """Each ECR's start, uniform in [0, the mean customer time of these terminals), with the fixed seed."""
    mean_s = sum(t.customer_ms for t in terminals) / len(terminals) / 1000 if terminals else 0.0
    rng = random.Random(config.random_seed + len(terminals))
    return [rng.random() * mean_s for _ in terminals]


class Bench:
    def __init__(
        self, config: BenchConfig, stack: Any, probes: Probes, threads: ThreadCpu, fleet: TerminalProcesses
    ) -> None:
        self.threads = threads
        self.config = config
        self.stack = stack
        self.probes = probes
        self.fleet = fleet
        self.cpu = ProcessCpu()
        host, port = stack.api_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.settings = stack.settings

    def set_mode(self, mode: str) -> None:
        """``aws``: the waiter only polls (as on Lambda); ``local``: the event handler wakes it."""
        from chalicelib.bootstrap import components
        from chalicelib.ports import SleepingWaker
        from local.waker import ThreadWaker

        inner = ThreadWaker() if mode == "local" else SleepingWaker()
        parts = components()
        parts.waker = TimingWaker(inner, self.probes)
        # AWS mode polls on the deployed schedule (the settings' defaults); local mode keeps the
        # stack's own slow safety-net schedule, since the in-process wake-up is what ends its waits.
        deployed = Settings()
        parts.settings = (
            replace(
                self.settings,
                poll_initial_ms=deployed.poll_initial_ms,
                poll_growth_pct=deployed.poll_growth_pct,
                poll_max_ms=deployed.poll_max_ms,
                poll_typing_after_ms=deployed.poll_typing_after_ms,
                poll_typing_max_ms=deployed.poll_typing_max_ms,
            )
            if mode == "aws"
            else self.settings
        )
        if mode == "local" and self.config.local_poll_max_ms is not None:
            parts.settings = replace(self.settings, poll_max_ms=self.config.local_poll_max_ms)

    def ensure_terminals(self, terminals: list[load.Terminal], timeout_s: float = 60.0) -> None:
        """Start the processes of these terminals if need be, and wait until the stack has them online
        (it dispatches only to a terminal it has seen come online)."""
        started = self.fleet.ensure(terminal_id(t) for t in terminals)
        if not started:
            return
        from chalicelib.bootstrap import components

        log(f"  started {len(started)} simulated terminals ({self.fleet.count} processes)")
        repository = components().terminals
        deadline = time.monotonic() + timeout_s
        pending = set(started)
        while pending:
            pending = {tid for tid in pending if not getattr(repository.get(tid), "online", False)}
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} simulated terminals not online in the stack, e.g. {min(pending)}")
            time.sleep(0.1)

    def floor(self, kind: str, samples: int) -> list[float]:
        job = {"kind": kind, "host": self.host, "port": self.port, "mqtt_port": self.stack.mqtt_port}
        answer = ecr.run({**job, "samples": samples}, timeout_s=120 + samples)
        return [round(v, 3) for v in answer["values"]]

    def scenario(
        self,
        name: str,
        mode: str,
        terminals: list[load.Terminal],
        job: dict[str, Any],
        timeout_s: float,
        **extra: Any,
    ) -> dict[str, Any]:
        self.ensure_terminals(terminals)
        self.set_mode(mode)
        log(f"{name} ({mode} mode)…")
        marks: dict[str, Any] = {}

        def before_go(ecr_pid: int) -> None:
            # The ECRs are connected (and a sequential one has made its warm-up payment): counting
            # starts now, once the stragglers of what came before (IPNs, stream records) have drained.
            time.sleep(0.3)
            self.probes.reset()
            self.fleet.drain()  # forget earlier publish times and counts
            marks["load"] = {ecr_pid: "ECRs", **dict.fromkeys(self.fleet.pids, "simulated terminals")}
            marks["threads"] = self.threads.snapshot()
            marks["cpu"] = self.cpu.snapshot(marks["load"])
            marks["main"] = time.thread_time()

        credentials = {"login": LOGIN, "password": PASSWORD}
        job = {**job, **credentials, "host": self.host, "port": self.port, "scenario": name}
        answer = ecr.run(job, timeout_s, before_go)
        time.sleep(0.3)
        threads_after = self.threads.snapshot()
        cpu_s = ProcessCpu.spent(marks["cpu"], self.cpu.snapshot(marks["load"]))
        # This thread is the bench's, not the stack's (it reads the ECRs' answer and /proc): moved apart.
        harness_s = time.thread_time() - marks["main"]
        set_apart(cpu_s, HARNESS, harness_s)
        # The simulated payment gateway's threads stand in for an outside party, as the terminals
        # do: counted apart from the stack (the IPN route and its handlers stay the stack's).
        if GATEWAY_THREADS in threads_after:
            set_apart(cpu_s, GATEWAY, threads_after[GATEWAY_THREADS] - marks["threads"].get(GATEWAY_THREADS, 0.0))
        # The ECR process has ended by now: its own reading of its CPU, from the start of the load.
        cpu_s["ECRs"] = answer["cpu_s"]
        from_terminals = self.fleet.drain()
        payments = [load.Payment(**row) for row in answer["payments"]]
        samples = [p.sample(from_terminals["published"].get(p.order_id)) for p in payments]
        snapshot = self.probes.snapshot()
        for kind, count in from_terminals["mqtt_publishes"].items():
            snapshot["mqtt_publishes"][kind] = snapshot["mqtt_publishes"].get(kind, 0) + count
        snapshot["mqtt_max_payload_bytes"] = max(
            snapshot["mqtt_max_payload_bytes"], from_terminals["mqtt_max_payload_bytes"]
        )
        result = summarize_scenario(
            name,
            mode,
            samples,
            answer["wall_s"],
            snapshot,
            cpu_s={part: round(seconds, 3) for part, seconds in cpu_s.items()},
            cpu_ms_by_thread=ThreadCpu.per_payment(marks["threads"], threads_after, len(samples)),
            **extra,
        )
        latency = result["latency_ms"]
        log(
            f"  {result['payments']} payments, outcomes {result['outcomes']}, "
            f"latency p50 {latency.get('p50')} p99 {latency.get('p99')} ms, "
            f"overhead p50 {result['overhead_ms'].get('p50')} p99 {result['overhead_ms'].get('p99')} ms, "
            f"added p99 {result['added_ms'].get('p99')} ms, {result['throughput_per_s']} payments/s, "
            f"CPU ms/payment: stack {result['stack_cpu_ms_per_payment']}, "
            + ", ".join(f"{part} {ms}" for part, ms in result["cpu_ms_per_payment_by_part"].items())
            + f" (load average {os.getloadavg()[0]:.2f})"
        )
        crash = self.stack.crash_report()
        if crash:
            raise RuntimeError(f"the stack crashed during {name}: {crash}")
        return result

    def sequential(self, name: str, mode: str, terminal: load.Terminal, count: int) -> dict[str, Any]:
        job = {"kind": "sequential", "terminal": asdict(terminal), "count": count}
        return self.scenario(name, mode, [terminal], job, timeout_s=load.HTTP_TIMEOUT_S * (count + 1))

    def concurrent(
        self, name: str, mode: str, terminals: list[load.Terminal], per: int, arrival: str = "burst", **extra: Any
    ) -> dict[str, Any]:
        offsets = steady_offsets(self.config, terminals) if arrival == "steady" else None
        job = {
            "kind": "concurrent",
            "terminals": [asdict(t) for t in terminals],
            "per_terminal": per,
            "offsets_s": offsets,
        }
        timeout_s = load.HTTP_TIMEOUT_S * per + max(offsets or [0.0]) + 120
        return self.scenario(name, mode, terminals, job, timeout_s, arrival=arrival, **extra)


def broken(outcome: dict[str, Any], config: BenchConfig) -> str | None:
    """Why a step broke (more than the allowed errors, or the overhead p99 over its limit), or None."""
    errors = outcome["payments"] - outcome["outcomes"].get("ok", 0)
    p99 = outcome["overhead_ms"].get("p99", 0)
    reasons = []
    if errors > config.max_error_rate * outcome["payments"]:
        reasons.append(
            f"{errors} of {outcome['payments']} payments failed ({_outcome_kinds(outcome)}), "
            f"over {config.max_error_rate:.0%}"
        )
    if p99 > config.max_overhead_p99_ms:
        reasons.append(f"overhead p99 {p99} ms, over {config.max_overhead_p99_ms:.0f} ms")
    return "; ".join(reasons) or None


def run(config: BenchConfig, out_dir: Path) -> dict[str, Any]:
    from chalicelib.observability import logger
    from local.children import keep_to_one_core
    from local.stack import StackConfig, freeze_startup_heap, start_stack

    # One JSON line per event would measure the terminal, not the API; the Console side warns on every
    # payment that the bench merchant has no notify URL.
    logger.setLevel(logging.ERROR)
    if not config.console_side:
        # The stack starts these only when the modules import (see local/stack.py).
        sys.modules["local.pollers"] = None  # type: ignore[assignment]
        sys.modules["local.gateway"] = None  # type: ignore[assignment]
    open_files = raise_open_files_limit()
    started_at = datetime.now(UTC)
    load_start = os.getloadavg()
    terminals = terminals_for(config)
    probes = Probes().install()
    threads = ThreadCpu().install()
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        seed_path = Path(tmp) / "seed.json"
        write_seed(seed_path, terminals)
        log(f"starting the local stack ({sum(len(g) for g in terminals.values())} terminals enrolled)…")
        # The bench's terminals all belong to one merchant: its limit on waiting payments (100 by
        # default) would answer 429 from the 150-in-flight step on and measure the limiter, not the stack.
        environment = {
            "PAYMENT_DEADLINE_MS": "120000",
            "ACK_TIMEOUT_MS": "10000",
            "MAX_WAITING_PAYMENTS_PER_MERCHANT": "1000",
        }
        # The simulated terminals run in processes of their own (bench/terminals.py), not the stack's.
        stack = start_stack(
            StackConfig(
                api_port=0,
                mqtt_port=0,
                seed_path=seed_path,
                environment=environment,
                store=config.store,
                simulate=False,
            )
        )
        # As make run does once the stack is up.
        freeze_startup_heap()
        if config.one_core:
            keep_to_one_core()
    fleet = TerminalProcesses(
        "127.0.0.1",
        stack.mqtt_port,
        (
            {
                "terminal_id": t.terminal_id,
                "passphrase": t.passphrase or "",
                "behavior": t.simulator.behavior,
                "delay_ms": t.simulator.delay_ms,
            }
            for t in stack.seed.terminals
            if t.simulator is not None
        ),
        config.terminals_per_process,
    )
    bench = Bench(config, stack, probes, threads, fleet)
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "store": config.store,
        "config": asdict(config),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in load_start],
        },
        "harness": {
            "processes": "the stack (and its child processes) in the bench's process; the simulated terminals "
            f"in processes of {config.terminals_per_process}; the ECRs in a process of their own per scenario",
            "open_files_limit": list(open_files),
            "terminals_per_process": config.terminals_per_process,
        },
        # The schedule the cost model extrapolates with is the deployed (AWS mode) one; the local
        # stack's slower safety-net schedule is recorded apart.
        "settings": {
            **{key: getattr(stack.settings, key) for key in ("ack_timeout_ms", "payment_deadline_ms")},
            **{
                key: getattr(Settings(), key)
                for key in (
                    "poll_initial_ms",
                    "poll_growth_pct",
                    "poll_max_ms",
                    "poll_typing_after_ms",
                    "poll_typing_max_ms",
                )
            },
            "local_poll_initial_ms": stack.settings.poll_initial_ms,
            "local_poll_max_ms": config.local_poll_max_ms or stack.settings.poll_max_ms,
        },
        "console_side": {
            "pollers": stack.poller_names(),
            "gateway": config.console_side and importlib.util.find_spec("local.gateway") is not None,
        },
        "scenarios": {},
    }
    try:
        instant = terminals["instant"][0]
        bench.ensure_terminals([instant])
        log("floors…")
        results["floor"] = {
            "http_ms": bench.floor("http_floor", config.floor_samples),
            "mqtt_ms": bench.floor("mqtt_floor", config.floor_samples),
        }
        scenarios = results["scenarios"]
        for mode in ("local", "aws") if "instant" in config.groups else ():
            name = f"instant_{mode}"
            scenarios[name] = bench.sequential(name, mode, instant, config.e2e_samples)
        cap_group = terminals["crowd"][: config.cap_terminals]
        for mode in ("local", "aws") if "customer" in config.groups else ():
            name = f"customer_{mode}"
            scenarios[name] = bench.concurrent(name, mode, cap_group, config.cap_payments)
        if "long" in config.groups:
            scenarios["long_aws"] = bench.concurrent("long_aws", "aws", terminals["long"], 1)
        results["concurrency"] = []
        results["concurrency_burst"] = []
        for step in config.steps if "concurrency" in config.groups else ():
            crowd = terminals["crowd"][:step]
            outcome = bench.concurrent(
                f"concurrency_steady_{step}",
                config.concurrency_mode,
                crowd,
                config.step_payments,
                arrival="steady",
                in_flight=step,
            )
            results["concurrency"].append(outcome)
            if step in config.burst_steps:
                results["concurrency_burst"].append(
                    bench.concurrent(
                        f"concurrency_burst_{step}",
                        config.concurrency_mode,
                        crowd,
                        config.step_payments,
                        arrival="burst",
                        in_flight=step,
                    )
                )
            reason = broken(outcome, config)
            if reason:
                results["concurrency_stopped"] = {"in_flight": step, "reason": reason}
                log(f"stopping the steps at {step}: {reason}")
                break
    finally:
        results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        results["harness"]["terminal_processes"] = fleet.count
        crash = stack.crash_report()
        fleet.stop()
        stack.stop()
        probes.uninstall()
        threads.uninstall()
        if crash:
            results["crash"] = crash
    written = write_outputs(results, out_dir)
    log("wrote " + ", ".join(str(p) for p in written))
    return results


def _outcome_kinds(outcome: dict[str, Any]) -> str:
    kinds = {kind: n for kind, n in outcome["outcomes"].items() if kind != "ok"}
    return ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sample counts: a smoke run of the harness")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--steps", help="concurrency steps (steady arrivals), e.g. 10,50,100,200")
    parser.add_argument(
        "--burst-steps", help="steps also run as a burst, every ECR at once (default 200; none: no burst)"
    )
    parser.add_argument("--concurrency-mode", choices=("local", "aws"), help="waker for the concurrency steps")
    parser.add_argument("--local-poll-max-ms", type=int, help="poll cap in local mode (default: as configured)")
    parser.add_argument("--no-console", action="store_true", help="without the IPN gateway and event-source pollers")
    parser.add_argument(
        "--all-cores", action="store_true", help="leave the stack's process on every core (make run keeps it to one)"
    )
    parser.add_argument("--only", help="comma-separated groups to run: instant,customer,long,concurrency")
    parser.add_argument("--store", choices=("sqlite", "moto"), help="the local stack's store (default sqlite)")
    args = parser.parse_args(argv)
    config = BenchConfig.quick() if args.quick else BenchConfig()
    if args.steps:
        config = replace(config, steps=tuple(int(s) for s in args.steps.split(",")))
    if args.burst_steps:
        bursts = () if args.burst_steps == "none" else tuple(int(s) for s in args.burst_steps.split(","))
        config = replace(config, burst_steps=bursts)
    if args.concurrency_mode:
        config = replace(config, concurrency_mode=args.concurrency_mode)
    if args.no_console:
        config = replace(config, console_side=False)
    if args.all_cores:
        config = replace(config, one_core=False)
    if args.only:
        config = replace(config, groups=tuple(args.only.split(",")))
    if args.store:
        config = replace(config, store=args.store)
    if args.local_poll_max_ms:
        config = replace(config, local_poll_max_ms=args.local_poll_max_ms)
    started = time.monotonic()
    results = run(config, args.out)
    log(f"done in {time.monotonic() - started:.0f} s; report: {args.out / 'REPORT.md'}")
    return 1 if "crash" in results else 0


if __name__ == "__main__":
    sys.exit(main())

"""``make bench``: start the local stack on free ports and measure, in one run, the physical floor,
end-to-end and added latency (AWS mode and local mode), concurrency, and the cost drivers per payment.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Before anything imports chalicelib.observability: no EMF lines on stdout in the bench.
os.environ.setdefault("METRICS_EMF", "false")

from bench import load
from bench.probes import Probes, ResultClock, ThreadCpu, TimingWaker
from bench.report import summarize_scenario, write_outputs
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
    # The simulated terminals are paho clients in this process, whose select() loops cannot watch a
    # socket numbered past 1024: about 250 terminals (4 descriptors each) is the harness's own limit.
    steps: tuple[int, ...] = (10, 50, 100, 150, 200, 230)
    step_payments: int = 3
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
            step_payments=1,
            customer_min_ms=500,
            customer_max_ms=1_500,
        )


def terminals_for(config: BenchConfig) -> dict[str, list[load.Terminal]]:
    rng = random.Random(config.random_seed)
    crowd = [
        load.Terminal(MANUFACTURER, f"C{index:04d}", rng.randint(config.customer_min_ms, config.customer_max_ms))
        for index in range(max((*config.steps, config.cap_terminals)))
    ]
    return {
        "instant": [load.Terminal(MANUFACTURER, "INSTANT", 0)],
        "crowd": crowd,
        "long": [
            load.Terminal(MANUFACTURER, f"L{index:02d}", config.long_customer_ms)
            for index in range(config.long_terminals)
        ],
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


class Bench:
    def __init__(self, config: BenchConfig, stack: Any, probes: Probes, clock: ResultClock, threads: ThreadCpu) -> None:
        self.threads = threads
        self.config = config
        self.stack = stack
        self.probes = probes
        self.clock = clock
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

    def scenario(
        self, name: str, mode: str, run: Callable[[], tuple[list[load.Sample], float]], **extra: Any
    ) -> dict[str, Any]:
        self.set_mode(mode)
        time.sleep(0.3)  # let the previous scenario's stragglers (IPNs, stream records) drain
        self.probes.reset()
        log(f"{name} ({mode} mode)…")
        cpu_started = time.process_time()
        ecr_started = load.ECR_CPU.seconds
        threads_before = self.threads.snapshot()
        samples, wall_s = run()
        time.sleep(0.3)
        cpu_s = time.process_time() - cpu_started
        cpu_by_thread = ThreadCpu.per_payment(threads_before, self.threads.snapshot(), len(samples))
        ecr_cpu_s = load.ECR_CPU.seconds - ecr_started
        result = summarize_scenario(
            name,
            mode,
            samples,
            wall_s,
            self.probes.snapshot(),
            cpu_s=round(cpu_s, 3),
            ecr_cpu_s=round(ecr_cpu_s, 3),
            cpu_ms_by_thread=cpu_by_thread,
            **extra,
        )
        latency = result["latency_ms"]
        log(
            f"  {result['payments']} payments, outcomes {result['outcomes']}, "
            f"latency p50 {latency.get('p50')} p99 {latency.get('p99')} ms, "
            f"overhead p99 {result['overhead_ms'].get('p99')} ms, added p99 {result['added_ms'].get('p99')} ms, "
            f"CPU {result['cpu_ms_per_payment']} ms/payment ({result['stack_cpu_ms_per_payment']} without the ECR)"
        )
        crash = self.stack.crash_report()
        if crash:
            raise RuntimeError(f"the stack crashed during {name}: {crash}")
        return result

    def sequential(self, name: str, terminal: load.Terminal, count: int) -> tuple[list[load.Sample], float]:
        started = time.perf_counter()
        samples = load.sequential(self.host, self.port, (LOGIN, PASSWORD), name, terminal, count, self.clock)
        return samples, time.perf_counter() - started

    def concurrent(self, name: str, terminals: list[load.Terminal], per: int) -> tuple[list[load.Sample], float]:
        return load.concurrent(self.host, self.port, (LOGIN, PASSWORD), name, terminals, per, self.clock)


def run(config: BenchConfig, out_dir: Path) -> dict[str, Any]:
    from chalicelib.observability import logger
    from local.stack import StackConfig, start_stack

    # One JSON line per event would measure the terminal, not the API; the Console side warns on every
    # payment that the bench merchant has no notify URL.
    logger.setLevel(logging.ERROR)
    if not config.console_side:
        # The stack starts these only when the modules import (see local/stack.py).
        sys.modules["local.pollers"] = None  # type: ignore[assignment]
        sys.modules["local.gateway"] = None  # type: ignore[assignment]
    started_at = datetime.now(UTC)
    load_start = os.getloadavg()
    terminals = terminals_for(config)
    probes = Probes().install()
    clock = ResultClock().install()
    threads = ThreadCpu().install()
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        seed_path = Path(tmp) / "seed.json"
        write_seed(seed_path, terminals)
        log(f"starting the local stack with {sum(len(g) for g in terminals.values())} simulated terminals…")
        # The bench's terminals all belong to one merchant: its limit on waiting payments (100 by
        # default) would answer 429 from the 150-in-flight step on and measure the limiter, not the stack.
        environment = {
            "PAYMENT_DEADLINE_MS": "120000",
            "ACK_TIMEOUT_MS": "10000",
            "MAX_WAITING_PAYMENTS_PER_MERCHANT": "1000",
        }
        stack = start_stack(
            StackConfig(api_port=0, mqtt_port=0, seed_path=seed_path, environment=environment, store=config.store)
        )
    bench = Bench(config, stack, probes, clock, threads)
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
            "pollers": [p.name for p in stack.pollers],
            "gateway": config.console_side and importlib.util.find_spec("local.gateway") is not None,
        },
        "scenarios": {},
    }
    try:
        results["floor"] = {
            "http_ms": _rounded(load.http_floor(bench.host, bench.port, config.floor_samples)),
            "mqtt_ms": _rounded(load.mqtt_floor("127.0.0.1", stack.mqtt_port, config.floor_samples)),
        }
        scenarios = results["scenarios"]
        instant = terminals["instant"][0]
        for mode in ("local", "aws") if "instant" in config.groups else ():
            name = f"instant_{mode}"
            scenarios[name] = bench.scenario(
                name, mode, lambda n=name: bench.sequential(n, instant, config.e2e_samples)
            )
        cap_group = terminals["crowd"][: config.cap_terminals]
        for mode in ("local", "aws") if "customer" in config.groups else ():
            name = f"customer_{mode}"
            scenarios[name] = bench.scenario(
                name, mode, lambda n=name: bench.concurrent(n, cap_group, config.cap_payments)
            )
        if "long" in config.groups:
            scenarios["long_aws"] = bench.scenario(
                "long_aws", "aws", lambda: bench.concurrent("long_aws", terminals["long"], 1)
            )
        results["concurrency"] = []
        for step in config.steps if "concurrency" in config.groups else ():
            name = f"concurrency_{step}"
            outcome = bench.scenario(
                name,
                config.concurrency_mode,
                lambda n=name, s=step: bench.concurrent(n, terminals["crowd"][:s], config.step_payments),
                in_flight=step,
            )
            results["concurrency"].append(outcome)
            errors = outcome["payments"] - outcome["outcomes"].get("ok", 0)
            if errors > config.max_error_rate * outcome["payments"] or (
                outcome["overhead_ms"].get("p99", 0) > config.max_overhead_p99_ms
            ):
                reason = (
                    f"{errors} of {outcome['payments']} payments failed "
                    f"({_outcome_kinds(outcome)}), overhead p99 {outcome['overhead_ms'].get('p99')} ms"
                )
                results["concurrency_stopped"] = {"in_flight": step, "reason": reason}
                log(f"stopping the steps at {step}: {reason}")
                break
    finally:
        results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        crash = stack.crash_report()
        stack.stop()
        probes.uninstall()
        clock.uninstall()
        threads.uninstall()
        if crash:
            results["crash"] = crash
    written = write_outputs(results, out_dir)
    log("wrote " + ", ".join(str(p) for p in written))
    return results


def _outcome_kinds(outcome: dict[str, Any]) -> str:
    kinds = {kind: n for kind, n in outcome["outcomes"].items() if kind != "ok"}
    return ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none"


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sample counts: a smoke run of the harness")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--steps", help="concurrency steps, e.g. 10,50,100,200")
    parser.add_argument("--concurrency-mode", choices=("local", "aws"), help="waker for the concurrency steps")
    parser.add_argument("--local-poll-max-ms", type=int, help="poll cap in local mode (default: as configured)")
    parser.add_argument("--no-console", action="store_true", help="without the IPN gateway and event-source pollers")
    parser.add_argument("--only", help="comma-separated groups to run: instant,customer,long,concurrency")
    parser.add_argument("--store", choices=("sqlite", "moto"), help="the local stack's store (default sqlite)")
    args = parser.parse_args(argv)
    config = BenchConfig.quick() if args.quick else BenchConfig()
    if args.steps:
        config = replace(config, steps=tuple(int(s) for s in args.steps.split(",")))
    if args.concurrency_mode:
        config = replace(config, concurrency_mode=args.concurrency_mode)
    if args.no_console:
        config = replace(config, console_side=False)
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

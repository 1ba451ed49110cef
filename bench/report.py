"""From raw samples and counters to figures: per-scenario summaries, per-payment cost drivers, the
modeled AWS bill, the JSON results, REPORT.md and the plots.

Pure functions apart from ``write_outputs`` and ``plot``; tests/unit/test_bench.py runs them on a
tiny fake result set.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench import cost
from bench.stats import percentile, summarize

PAYMENT_PATH = ("api.order", "terminal_events")
# Idle polling by the local event-source pollers: on AWS, Lambda reads DynamoDB streams for free and
# SQS long polling is a fixed cost, not a per-payment one.
IDLE_OPERATIONS = {("dynamodbstreams", op) for op in ("GetRecords", "GetShardIterator", "DescribeStream")} | {
    ("dynamodb", "DescribeTable"),
    ("sqs", "GetQueueAttributes"),
}
# What the payment path runs on: as deployed by infra/ (nepting_infra/functions.py and chalice_app.py;
# tests/infra checks these agree), and as it was before the move to arm64 and the phased schedule.
CONFIGS: dict[str, dict[str, Any]] = {
    "deployed": {"architecture": "arm64", "api_memory_mb": 128, "event_memory_mb": 512, "phased": True},
    "before": {"architecture": "x86_64", "api_memory_mb": 256, "event_memory_mb": 256, "phased": False},
}
# IoT connectivity is paid per connected minute, whatever the traffic: spread over this many payments.
PAYMENTS_PER_TERMINAL_DAY = 50
LONG_INTERACTION_MS = 30_000
GOALS = {
    "e2e_p50_ms": 15.0,
    "added_p99_ms": 50.0,
    "concurrent_in_flight": 200,
    "concurrent_overhead_p99_ms": 100.0,
    "cpu_ms_per_payment": 10.0,
    "cost_usd_30s": 0.00010,
}


# -- per scenario ----------------------------------------------------------------------------------


STACK_PARTS = ("stack process", "stack child: ")


def is_stack_part(part: str) -> bool:
    """The stack's own process and the processes it starts (a broker…), not the load's."""
    return part.startswith(STACK_PARTS)


def cpu_per_payment(cpu_s: dict[str, float], payments: int) -> dict[str, float]:
    """CPU ms per payment by part (the stack's process, each of its child processes, the simulated
    terminals, the ECRs), the stack's parts first."""
    n = max(payments, 1)
    ordered = sorted(cpu_s.items(), key=lambda kv: (not is_stack_part(kv[0]), kv[0] != "stack process", kv[0]))
    return {part: round(seconds * 1000 / n, 2) for part, seconds in ordered}


def summarize_scenario(
    name: str,
    mode: str,
    samples: list[Any],
    wall_s: float,
    snapshot: dict[str, Any],
    cpu_s: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``cpu_s``: CPU seconds by part over the scenario (bench/cpu.py ``ProcessCpu.spent``, the ECRs'
    own reading)."""
    rows = [s.as_dict() if hasattr(s, "as_dict") else dict(s) for s in samples]
    cpu_s = cpu_s or {}
    stack_s = sum(seconds for part, seconds in cpu_s.items() if is_stack_part(part))
    ok = [r for r in rows if r["outcome"] == "ok"]
    overhead = [r["latency_ms"] - r["customer_ms"] for r in ok]
    added = [r["added_ms"] for r in ok if r["added_ms"] is not None]
    handler_samples = snapshot.get("handler_samples_ms", {})
    counts = {key: value for key, value in snapshot.items() if key != "handler_samples_ms"}
    return {
        "name": name,
        "mode": mode,
        **extra,
        "payments": len(rows),
        "outcomes": dict(Counter(r["outcome"] for r in rows)),
        "wall_s": round(wall_s, 3),
        "throughput_per_s": round(len(ok) / wall_s, 3) if wall_s > 0 else 0.0,
        "cpu_s": cpu_s,
        # Every process: the stack and its load.
        "cpu_ms_per_payment": round(sum(cpu_s.values()) * 1000 / len(rows), 2) if rows else 0.0,
        # The whole local stack (its process and the processes it starts), without its load.
        "stack_cpu_ms_per_payment": round(stack_s * 1000 / len(rows), 2) if rows else 0.0,
        "cpu_ms_per_payment_by_part": cpu_per_payment(cpu_s, len(rows)) if rows else {},
        "customer_ms_mean": round(sum(r["customer_ms"] for r in ok) / len(ok), 1) if ok else 0.0,
        "latency_ms": summarize([r["latency_ms"] for r in ok]),
        "overhead_ms": summarize(overhead),
        "added_ms": summarize(added),
        "handler_ms": {key: summarize(values) for key, values in handler_samples.items()},
        "per_payment": per_payment(counts, len(ok) or len(rows)),
        "counts": counts,
        "samples": {
            "overhead_ms": [round(v, 2) for v in overhead],
            "added_ms": [round(v, 2) for v in added],
        },
    }


def per_payment(counts: dict[str, Any], payments: int) -> dict[str, Any]:
    """The cost drivers of one payment: what the payment path did, divided by the payments made."""
    n = max(payments, 1)
    operations: dict[str, float] = defaultdict(float)
    rru = wru = poll_reads = poll_read_ms = sqs = 0.0
    console: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in counts.get("aws_calls", []):
        if (row["service"], row["operation"]) in IDLE_OPERATIONS:
            continue
        if row["component"] in PAYMENT_PATH:
            if row["service"] == "dynamodb":
                operations[row["operation"]] += row["calls"]
                rru += row["rru"]
                wru += row["wru"]
                poll_reads += row["poll_reads"]
                if row["poll_reads"]:
                    poll_read_ms += row["time_ms"]
            elif row["service"] == "sqs":
                sqs += row["calls"]
        elif not row["component"].startswith(("api.healthcheck", "terminal_status")):
            into = console[row["component"]]
            into[f"{row['service']}.{row['operation']}"] += row["calls"] / n
            into["rru"] += row["rru"] / n
            into["wru"] += row["wru"] / n
            if row["service"] == "sqs":
                into["sqs_requests"] += row["calls"] / n
    mqtt = counts.get("mqtt_publishes", {})
    handlers = counts.get("handlers", {})
    waits = counts.get("waits", {})

    def handler(name: str) -> dict[str, float]:
        found = handlers.get(name, {"count": 0, "total_ms": 0.0})
        count = found["count"]
        return {"per_payment": count / n, "mean_ms": found["total_ms"] / count if count else 0.0}

    return {
        "payments": payments,
        "dynamodb_calls": {op: calls / n for op, calls in sorted(operations.items())},
        "dynamodb_calls_total": sum(operations.values()) / n,
        "rru": rru / n,
        "wru": wru / n,
        "poll_reads": poll_reads / n,
        "poll_read_ms_mean": poll_read_ms / poll_reads if poll_reads else 0.0,
        "sqs_requests": sqs / n,
        "mqtt": {
            "requests": mqtt.get("requests", 0) / n,
            "events": mqtt.get("events", 0) / n,
            "status": mqtt.get("status", 0) / n,
        },
        "mqtt_max_payload_bytes": counts.get("mqtt_max_payload_bytes", 0),
        "api_request": handler("api.order"),
        "terminal_events": handler("terminal_events"),
        "terminal_status": handler("terminal_status"),
        "waits": {"per_payment": waits.get("count", 0) / n, "ms_per_payment": waits.get("total_ms", 0.0) / n},
        "console_side": {component: dict(values) for component, values in sorted(console.items())},
    }


# -- the bill --------------------------------------------------------------------------------------


def usage_from(
    drivers: dict[str, Any], config: dict[str, Any], reads: float | None = None, api_ms: float | None = None
) -> cost.PaymentUsage:
    """AWS usage of one payment from its counted drivers; ``reads``/``api_ms`` override for extrapolation."""
    rru = drivers["rru"]
    if reads is not None:
        # Each extra poll is one strongly consistent read of a small (< 4 KB) item: 1 RRU.
        rru += reads - drivers["poll_reads"]
    events = drivers["mqtt"]["events"]
    return cost.PaymentUsage(
        api_duration_ms=api_ms if api_ms is not None else drivers["api_request"]["mean_ms"],
        api_memory_mb=config["api_memory_mb"],
        event_invocations=drivers["terminal_events"]["per_payment"],
        event_duration_ms=drivers["terminal_events"]["mean_ms"],
        event_memory_mb=config["event_memory_mb"],
        rru=rru,
        wru=drivers["wru"],
        # A request is published (iot-data Publish) and delivered to the terminal: two messages.
        iot_messages=2 * drivers["mqtt"]["requests"] + events,
        rules_triggered=events,
        rule_actions=events,
        connection_minutes=1440 / PAYMENTS_PER_TERMINAL_DAY,
        sqs_requests=drivers["sqs_requests"],
        architecture=config["architecture"],
    )


def run_schedule(settings: dict[str, Any], phased: bool = True) -> Any:
    """The poll schedule a run used (its recorded settings); ``phased=False``: the flat cap it replaced."""
    keys = ("poll_initial_ms", "poll_growth_pct", "poll_max_ms", "poll_typing_after_ms", "poll_typing_max_ms")
    plan = cost.schedule(**{k: int(settings[k]) for k in keys if k in settings})
    return plan if phased else cost.schedule(**{**plan.__dict__, "poll_typing_max_ms": plan.poll_max_ms})


def extrapolated_reads(scenario: dict[str, Any], interaction_ms: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Reads for a longer interaction from the poll schedule, checked against what was measured."""
    drivers = scenario["per_payment"]
    read_ms = round(drivers["poll_read_ms_mean"])
    phased, flat = run_schedule(settings), run_schedule(settings, phased=False)
    return {
        "measured_customer_ms": scenario["customer_ms_mean"],
        "measured_reads": drivers["poll_reads"],
        "schedule_reads_at_measured": cost.poll_reads(round(scenario["customer_ms_mean"]), phased, read_ms=read_ms),
        "read_ms": read_ms,
        "interaction_ms": interaction_ms,
        "schedule_reads": cost.poll_reads(interaction_ms, phased, read_ms=read_ms),
        "flat_schedule_reads": cost.poll_reads(interaction_ms, flat, read_ms=read_ms),
        "upper_bound_reads": cost.poll_reads(interaction_ms, phased),
        "added_latency_by_phase": cost.phase_latency(phased, read_ms=read_ms),
        "flat_added_latency_by_phase": cost.phase_latency(flat, read_ms=read_ms),
    }


def cost_model(results: dict[str, Any]) -> dict[str, Any]:
    scenarios = results["scenarios"]
    models: dict[str, Any] = {}
    # (label, drivers, reads by config (None: as measured), API duration)
    cases: list[tuple[str, dict[str, Any], dict[str, float] | None, float | None]] = []
    if "instant_aws" in scenarios:
        cases.append(("instant terminal (measured)", scenarios["instant_aws"]["per_payment"], None, None))
    if "long_aws" in scenarios:
        long_run = scenarios["long_aws"]
        cases.append(
            (f"{long_run['customer_ms_mean'] / 1000:.0f}-s interaction (measured)", long_run["per_payment"], None, None)
        )
    if "customer_aws" in scenarios:
        base = scenarios["customer_aws"]
        reads = extrapolated_reads(base, LONG_INTERACTION_MS, results["settings"])
        models["extrapolation"] = reads
        api_ms = base["per_payment"]["api_request"]["mean_ms"] - base["customer_ms_mean"] + LONG_INTERACTION_MS
        by_config = {"deployed": reads["schedule_reads"], "before": reads["flat_schedule_reads"]}
        cases.append(("30-s interaction (extrapolated by the poll schedule)", base["per_payment"], by_config, api_ms))
    for label, drivers, reads_by_config, api_ms in cases:
        for name, config in CONFIGS.items():
            reads = None if reads_by_config is None else reads_by_config[name]
            usage = usage_from(drivers, config, reads, api_ms)
            models[f"{label} @ {name}"] = {"usage": usage.__dict__, "usd": cost.payment_cost(usage)}
    return models


# -- outputs ---------------------------------------------------------------------------------------


def floor_summary(results: dict[str, Any]) -> dict[str, Any]:
    floor = results.get("floor", {})
    http, mqtt = summarize(floor.get("http_ms", [])), summarize(floor.get("mqtt_ms", []))
    combined = http.get("p50", math.nan) + 2 * mqtt.get("p50", math.nan)
    return {"http_ms": http, "mqtt_ms": mqtt, "floor_p50_ms": round(combined, 3)}


def goals(results: dict[str, Any], models: dict[str, Any]) -> list[dict[str, Any]]:
    scenarios = results["scenarios"]
    e2e = scenarios.get("instant_local", {}).get("latency_ms", {}).get("p50")
    floor_p50 = floor_summary(results).get("floor_p50_ms")
    ratio = e2e / floor_p50 if e2e is not None and floor_p50 and not math.isnan(floor_p50) else None
    added = {name: scenarios[name]["added_ms"].get("p99") for name in scenarios}
    thirty = [
        m["usd"]["total"]
        for label, m in models.items()
        if label.startswith("30-s") and label.endswith("@ deployed") and "usd" in m
    ]
    rows = [
        {
            "goal": "local e2e p50 ≤ 15 ms (instant terminal)",
            "result": e2e if ratio is None else f"{e2e:.1f} ms ({ratio:.1f} × floor)",
            "met": e2e is not None and e2e <= GOALS["e2e_p50_ms"],
        },
        *[
            {
                "goal": f"added latency p99 ≤ 50 ms ({name})",
                "result": value,
                "met": value is not None and value <= GOALS["added_p99_ms"],
            }
            for name, value in added.items()
        ],
    ]
    for goal, key in ((CONCURRENCY_GOAL, "concurrency"), (CONCURRENCY_BURST_GOAL, "concurrency_burst")):
        steps = results.get(key, [])
        target = next((s for s in steps if s["in_flight"] == GOALS["concurrent_in_flight"]), None)
        if target is None:
            rows.append({"goal": goal, "result": "step not run", "met": False})
            continue
        errors = target["payments"] - target["outcomes"].get("ok", 0)
        p99 = target["overhead_ms"].get("p99")
        rows.append(
            {
                "goal": goal,
                "result": f"{errors} errors, overhead p99 {_f(p99)} ms, {_f(target['throughput_per_s'], 1)} payments/s",
                "met": errors == 0 and p99 is not None and p99 <= GOALS["concurrent_overhead_p99_ms"],
            }
        )
        if key == "concurrency":
            rows.append(
                {
                    "goal": CPU_GOAL,
                    "result": target.get("stack_cpu_ms_per_payment"),
                    "met": (target.get("stack_cpu_ms_per_payment") or math.inf) <= GOALS["cpu_ms_per_payment"],
                }
            )
    rows.append(
        {
            "goal": "modeled AWS cost ≤ $0.00010 per payment, 30-s interaction (as deployed: arm64, API 128 MB)",
            "result": max(thirty) if thirty else "not modeled (store without AWS calls: see a --store moto run)",
            "met": bool(thirty) and max(thirty) <= GOALS["cost_usd_30s"],
        }
    )
    return rows


CONCURRENCY_GOAL = (
    "200 in flight, steady arrivals (2–5 s customers, 3 payments each): zero errors, overhead p99 ≤ 100 ms"
)
CONCURRENCY_BURST_GOAL = "200 in flight, burst (all 200 in the same millisecond): zero errors, overhead p99 ≤ 100 ms"
CPU_GOAL = (
    "CPU per payment ≤ 10 ms, whole local stack: its process and its child processes, without the "
    "simulated terminals, the simulated gateway and the ECRs (200 in flight, steady)"
)


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _usd(value: float) -> str:
    return f"${value:.7f}"


def render_markdown(results: dict[str, Any], floor: dict[str, Any], models: dict[str, Any], plots: list[str]) -> str:
    scenarios = results["scenarios"]
    machine = results["machine"]
    lines = [
        "# Benchmark report",
        "",
        f"Run {results['started_at']} → {results.get('finished_at', '?')}, {machine['cpus']} CPUs, Python "
        f"{machine['python']}, {machine['platform']}. Load average (1/5/15 min) at start "
        f"{machine['loadavg_start']}, at end {machine.get('loadavg_end')}.",
        f"Poll schedule: {results['settings']}. Console side running alongside: {results.get('console_side')}.",
        f"Store: {results.get('store', 'moto')}. The local stack runs in the bench's process (the store, API "
        "threads, bridge), with the broker in a child process of its own and, on the embedded store, the Console "
        "side's pollers and handlers in another; its load does not: the "
        "simulated terminals run in processes of their own, and so do the ECRs. CPU per payment is given for "
        "the stack (its process and its child processes) apart from the simulated terminals and the ECRs, and "
        "apart from the simulated payment gateway's threads (which read each result and post its IPN, as the "
        "real gateway would from outside); the IPN route and the Console side's handlers are the stack's.",
        "",
        "## Goals",
        "",
        "| goal | result | met |",
        "| --- | --- | --- |",
    ]
    for row in goals(results, models):
        result = row["result"]
        shown = _usd(result) if isinstance(result, float) and result < 0.01 else _f(result)
        lines.append(f"| {row['goal']} | {shown} | {'yes' if row['met'] else 'no'} |")
    lines += [
        "",
        "## Floor",
        "",
        "| round trip | n | p50 ms | p95 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, key in (("HTTP GET healthcheck, keep-alive", "http_ms"), ("MQTT QoS 1 request → response", "mqtt_ms")):
        s = floor[key]
        lines.append(
            f"| {label} | {s.get('n')} | {_f(s.get('p50'), 2)} | {_f(s.get('p95'), 2)} | {_f(s.get('p99'), 2)} |"
        )
    lines.append(f"| **floor = HTTP + 2 × MQTT (p50)** | | {_f(floor['floor_p50_ms'], 2)} | | |")
    lines += [
        "",
        "## Latency per scenario",
        "",
        "`overhead` = latency − the terminal's customer time; `added` = ECR received the answer − the terminal "
        "published its result. `reads` = correlation-record polls per payment; `wait` = time the API spent "
        "sleeping between polls per payment.",
        "",
        *_header(
            "scenario",
            "mode",
            "n",
            "outcomes",
            "latency p50 / p95 / p99 ms",
            "× floor (p50)",
            "overhead p50 / p99 ms",
            "added p50 / p95 / p99 / max ms",
            "reads",
            "wait ms",
        ),
    ]
    for name, s in scenarios.items():
        lat, ovh, add, drivers = s["latency_ms"], s["overhead_ms"], s["added_ms"], s["per_payment"]
        ratio = lat.get("p50", math.nan) / floor["floor_p50_ms"] if name.startswith("instant") else None
        lines.append(
            f"| {name} | {s['mode']} | {s['payments']} | {_outcomes(s['outcomes'])} | "
            f"{_f(lat.get('p50'))} / {_f(lat.get('p95'))} / {_f(lat.get('p99'))} | {_f(ratio)} | "
            f"{_f(ovh.get('p50'))} / {_f(ovh.get('p99'))} | "
            f"{_f(add.get('p50'))} / {_f(add.get('p95'))} / {_f(add.get('p99'))} / {_f(add.get('max'))} | "
            f"{_f(drivers['poll_reads'])} | {_f(drivers['waits']['ms_per_payment'])} |"
        )
    lines += _concurrency_section(results)
    busiest = [name for name in ("instant_local",) if name in scenarios]
    steps = [*results.get("concurrency", []), *results.get("concurrency_burst", [])]
    if results.get("concurrency"):
        busiest.append(results["concurrency"][-1]["name"])
    busiest += [s["name"] for s in results.get("concurrency_burst", [])]
    by_name = {**scenarios, **{s["name"]: s for s in steps}}
    cpu_shown = [name for name in busiest if by_name[name].get("cpu_ms_by_thread")]
    if cpu_shown:
        lines += [
            "",
            "## Where the CPU goes",
            "",
            "CPU ms per payment by process (`/proc/<pid>/stat` of the stack's process and of each process it "
            "started; the simulated terminals' processes; the ECRs' process by its own reading), then, within the "
            "stack's process, by thread group (each thread's own CPU clock; threads that ended, such as API "
            "request threads, counted as they end).",
            "",
        ]
        for name in cpu_shown:
            scenario = by_name[name]
            parts = ", ".join(f"{part} {ms:.2f}" for part, ms in scenario.get("cpu_ms_per_payment_by_part", {}).items())
            groups = scenario["cpu_ms_by_thread"]
            listed = ", ".join(f"{group} {ms:.2f}" for group, ms in list(groups.items())[:12])
            lines.append(
                f"- `{name}`: stack {_f(scenario.get('stack_cpu_ms_per_payment'), 2)} ms "
                f"({_f(scenario['cpu_ms_per_payment'], 2)} with the load): {parts}. "
                f"Threads of the stack's process: {listed}"
            )
    lines += [
        "",
        "## Cost drivers per payment (counted)",
        "",
        "Payment path only (the order route and the terminal-event handler); status messages and the Console "
        "side are listed apart.",
        "",
        *_header(
            "scenario",
            "DynamoDB calls by operation",
            "RRU",
            "WRU",
            "MQTT publishes (requests / events)",
            "terminal_events invocations (mean ms)",
            "API request mean ms",
            "wait ms",
            "CPU ms per payment (the stack)",
        ),
    ]
    for name, s in scenarios.items():
        d = s["per_payment"]
        ops = ", ".join(f"{op} {v:.2f}" for op, v in d["dynamodb_calls"].items())
        lines.append(
            f"| {name} | {ops} | {_f(d['rru'], 2)} | {_f(d['wru'], 2)} | {_f(d['mqtt']['requests'], 2)} / "
            f"{_f(d['mqtt']['events'], 2)} | {_f(d['terminal_events']['per_payment'], 2)} "
            f"({_f(d['terminal_events']['mean_ms'], 2)}) | {_f(d['api_request']['mean_ms'])} | "
            f"{_f(d['waits']['ms_per_payment'])} | {_f(s.get('stack_cpu_ms_per_payment'), 1)} |"
        )
    console = scenarios.get("customer_aws", {}).get("per_payment", {}).get("console_side") or {}
    if console:
        lines += ["", "Console side per payment (customer_aws), by component:", ""]
        for component_name, values in console.items():
            shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(values.items()) if v)
            lines.append(f"- `{component_name}`: {shown}")
    extrapolation = models.get("extrapolation")
    if extrapolation:
        lines += [
            "",
            "Reads for a 30-s interaction, from the poll schedule (bench/cost.py `poll_reads`, which steps through "
            "chalicelib/payments/poll_schedule.py) with the measured read time "
            f"{extrapolation['read_ms']} ms: {extrapolation['schedule_reads']} "
            "(the flat-cap schedule it replaced: "
            f"{extrapolation['flat_schedule_reads']}; upper bound with instant reads: "
            f"{extrapolation['upper_bound_reads']}). Check of the model at the measured customer "
            f"time {extrapolation['measured_customer_ms']:.0f} ms: "
            f"schedule {extrapolation['schedule_reads_at_measured']}, "
            f"measured {extrapolation['measured_reads']:.1f}.",
            "",
            "Added latency by phase of the wait (from the schedule, with the measured read time; a result landing "
            "at every millisecond of the window):",
            "",
            *_header("phase (after the ack)", "phased mean / max ms", "flat cap mean / max ms"),
        ]
        for phase, found in extrapolation["added_latency_by_phase"].items():
            flat = extrapolation["flat_added_latency_by_phase"][phase]
            start, end = (ms // 1000 for ms in found["window_ms"])
            lines.append(
                f"| {phase} ({start}–{end} s) | {found['mean_ms']} / {found['max_ms']} | "
                f"{flat['mean_ms']} / {flat['max_ms']} |"
            )
    if not models:
        lines += [
            "",
            "## Modeled AWS cost per payment",
            "",
            "Not modeled in this run: the embedded store makes no AWS calls to count. Run "
            "`python -m bench.run --store moto` for the counted DynamoDB calls and the modeled cost.",
        ]
        if plots:
            lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Modeled AWS cost per payment",
        "",
        "us-east-1 on-demand, prices below. API Lambda billed for its whole request (it waits for the customer); "
        "terminal_events with the measured local duration; `deployed` = "
        + ", ".join(f"{k} {v}" for k, v in CONFIGS["deployed"].items())
        + "; `before` = "
        + ", ".join(f"{k} {v}" for k, v in CONFIGS["before"].items())
        + " (the 30-s extrapolation uses each one's schedule; measured rows keep the reads of the run). "
        "IoT: 2 messages per request "
        f"(publish + delivery), 1 per terminal event, 1 rule + 1 Lambda action per event; connectivity spread "
        f"over {PAYMENTS_PER_TERMINAL_DAY} payments per terminal per day. Payment path only.",
        "",
    ]
    labels = [label for label in models if label != "extrapolation"]
    if labels:
        items = [k for k in models[labels[0]]["usd"] if k != "total"]
        lines.append("| case | " + " | ".join(items) + " | **total** |")
        lines.append("| --- " * (len(items) + 2) + "|")
        for label in labels:
            usd = models[label]["usd"]
            lines.append(f"| {label} | " + " | ".join(_usd(usd[k]) for k in items) + f" | **{_usd(usd['total'])}** |")
    lines += ["", "### Prices used", "", "| item | USD | per | source | as of |", "| --- | --- | --- | --- | --- |"]
    for price in cost.price_list():
        lines.append(f"| {price['name']} | {price['usd']} | {price['per']} | {price['source']} | {price['as_of']} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _concurrency_section(results: dict[str, Any]) -> list[str]:
    steady, burst = results.get("concurrency", []), results.get("concurrency_burst", [])
    if not steady and not burst:
        return []
    lines = [
        "",
        "## Concurrency",
        "",
        "N terminals paying (customer time 2–5 s, fixed per terminal, drawn with a fixed seed), one ECR per "
        "in-flight payment (a thread of the ECRs' process, with its own keep-alive connection), each paying "
        "several times in a row. **steady**: each ECR starts after a random offset in [0, the mean customer "
        "time), drawn with the fixed seed, so N payments are in flight without arriving together; the steps "
        "stop at the first steady step that breaks. **burst**: all N start in the same millisecond.",
        "",
        *_header(
            "arrival",
            "in flight",
            "payments",
            "errors by kind",
            "payments/s",
            "overhead p50 / p95 / p99 ms",
            "added p99 ms",
            "CPU ms per payment: stack (its process + its children) / terminals / gateway / ECRs",
            "DynamoDB calls/s",
        ),
    ]
    for s in [*steady, *burst]:
        errors = {k: v for k, v in s["outcomes"].items() if k != "ok"}
        ovh = s["overhead_ms"]
        calls = sum(r["calls"] for r in s["counts"]["aws_calls"] if r["service"] == "dynamodb")
        parts = s.get("cpu_ms_per_payment_by_part", {})
        lines.append(
            f"| {s.get('arrival', 'burst')} | {s['in_flight']} | {s['payments']} | {_outcomes(errors) or 'none'} | "
            f"{_f(s['throughput_per_s'], 2)} | {_f(ovh.get('p50'))} / {_f(ovh.get('p95'))} / {_f(ovh.get('p99'))} | "
            f"{_f(s['added_ms'].get('p99'))} | {_stack_split(s)} / "
            f"{_f(parts.get('simulated terminals'), 1)} / {_f(parts.get('simulated gateway'), 1)} / "
            f"{_f(parts.get('ECRs'), 1)} | "
            f"{_f(calls / s['wall_s'] if s['wall_s'] else 0.0, 0)} |"
        )
    stopped = results.get("concurrency_stopped")
    lines.append("")
    if stopped:
        lines.append(f"Stepping stopped at {stopped['in_flight']} in flight (steady): {stopped['reason']}.")
    elif steady:
        lines.append(f"Every configured steady step passed, up to {steady[-1]['in_flight']} in flight (no step broke).")
    reached = {s["in_flight"] for s in steady}
    skipped = [n for n in results.get("config", {}).get("burst_steps", []) if n not in reached]
    if skipped and steady:
        lines.append(f"Burst at {', '.join(map(str, skipped))} not run: the steady steps did not reach it.")
    ceiling = harness_ceiling(results)
    if ceiling:
        lines.append(ceiling)
    return lines


def _stack_split(step: dict[str, Any]) -> str:
    parts = step.get("cpu_ms_per_payment_by_part", {})
    children = sum(ms for part, ms in parts.items() if part.startswith("stack child: "))
    total = _f(step.get("stack_cpu_ms_per_payment"), 1)
    if not any(part.startswith("stack child: ") for part in parts):
        return total
    return f"{total} ({_f(parts.get('stack process'), 1)} + {_f(children, 1)})"


def harness_ceiling(results: dict[str, Any]) -> str | None:
    """What bounds the harness itself, from the run's limits."""
    harness = results.get("harness")
    if not harness:
        return None
    soft = harness["open_files_limit"][0]
    # A few hundred descriptors for the store, the pollers, the listening sockets and the like.
    in_flight = max((soft - 256) // 2, 0)
    return (
        f"The harness's own ceiling: open files. The stack's process holds a socket per ECR and, while the broker "
        f"runs in it, one per terminal; its limit is {soft} (raised to the hard limit), so about {in_flight} in "
        f"flight. The simulated terminals run {harness['terminals_per_process']} to a process (paho's select() "
        f"watches no descriptor past 1023; {harness.get('terminal_processes', '?')} processes in this run); the "
        "ECRs' process holds one connection and one thread per ECR."
    )


def _header(*cells: str) -> list[str]:
    return ["| " + " | ".join(cells) + " |", "|" + " --- |" * len(cells)]


def _outcomes(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    steps = results.get("concurrency", [])
    if steps:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        xs = [s["in_flight"] for s in steps]
        for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^-")):
            ax.plot(xs, [s["overhead_ms"].get(key, math.nan) for s in steps], style, label=f"overhead {key}")
        bursts = results.get("concurrency_burst", [])
        if bursts:
            ax.plot(
                [s["in_flight"] for s in bursts],
                [s["overhead_ms"].get("p99", math.nan) for s in bursts],
                "rx",
                markersize=9,
                label="overhead p99, burst",
            )
        ax.set_xlabel("payments in flight")
        ax.set_ylabel("latency − customer time (ms)")
        ax.set_title("Overhead against concurrency, steady arrivals (local stack)")
        ax.grid(True, alpha=0.3)
        twin = ax.twinx()
        twin.plot(xs, [s["throughput_per_s"] for s in steps], "k:", label="payments/s")
        twin.set_ylabel("payments/s")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles, [str(h.get_label()) for h in handles], loc="upper left")
        fig.tight_layout()
        fig.savefig(out_dir / "concurrency.png", dpi=110)
        plt.close(fig)
        written.append("concurrency.png")
    scenarios = results["scenarios"]
    series = {name: s["samples"]["added_ms"] for name, s in scenarios.items() if s["samples"]["added_ms"]}
    if series:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        for name, values in series.items():
            ordered = sorted(values)
            left.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=name)
            right.hist(
                values, bins=40, range=(0, max(percentile(v, 99.5) for v in series.values())), alpha=0.45, label=name
            )
        left.axvline(GOALS["added_p99_ms"], color="red", linestyle=":", label="goal p99 50 ms")
        left.set_xlabel("added latency: answer received − result published (ms)")
        left.set_ylabel("fraction of payments")
        left.set_title("Added latency CDF")
        left.grid(True, alpha=0.3)
        left.legend(fontsize=8)
        right.set_xlabel("added latency (ms)")
        right.set_ylabel("payments")
        right.set_title("Added latency histogram")
        right.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "added_latency.png", dpi=110)
        plt.close(fig)
        written.append("added_latency.png")
    return written


def write_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``<timestamp>.json``, ``latest.json``, ``REPORT.md`` and the plots, into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    floor = floor_summary(results)
    # The AWS cost model needs the AWS adapters' calls, counted: only a STORE=moto run has them.
    models = cost_model(results) if results.get("store", "moto") == "moto" else {}
    results["summary"] = {"floor": floor, "cost": models, "goals": goals(results, models), "prices": cost.price_list()}
    stamp = results["started_at"].replace(":", "").replace("-", "").replace("+0000", "Z")
    text = json.dumps(results, indent=1, default=str)
    run_file = out_dir / f"run-{stamp}.json"
    run_file.write_text(text, encoding="utf-8")
    (out_dir / "latest.json").write_text(text, encoding="utf-8")
    plots = plot(results, out_dir)
    (out_dir / "REPORT.md").write_text(render_markdown(results, floor, models, plots), encoding="utf-8")
    return [run_file, out_dir / "latest.json", out_dir / "REPORT.md", *(out_dir / p for p in plots)]

"""Memory sizes of the payment-path functions, from the deployment package's measured import and
handler times.

``python -m bench.lambda_sizing [--runs 3]``: builds the package for this machine's architecture
(the arm64 one differs only in its native binaries: tests/packaging), unpacks it beside boto3 only,
and runs every handler in a fresh interpreter against moto in server mode, ``--runs`` times: the
import's CPU time, each call's CPU time (its own thread), one poll read's CPU time, and the peak
memory of the process. Medians over the runs.

Then, for each memory size: Lambda gives a function CPU in proportion to its memory, one vCPU at
1769 MB, so CPU-bound work takes ``cpu × 1769 / M`` below that. The init phase (imports) is given
as a range: throttled like the handler (the documented model), or run at a full vCPU (what
third-party measurements report for on-demand inits). Writes bench/results/lambda_sizing.json and
prints the table that infra/README.md quotes.

The choice, as deployed (infra/nepting_infra/functions.py):
- the API function waits for the customer and is billed memory × time for it: the smallest size
  whose memory holds the measured peak with 25 % headroom;
- the terminal-event and status handlers are on the added latency and cost a few ms each: the
  smallest size that adds at most 20 ms of CPU stretch to a warm ack or result.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import cost
from tests.packaging.lambda_runtime import aws_endpoint, build_package, run_handlers, runtime_dir, unpack

FULL_VCPU_MB = 1769
SIZES_MB = (128, 192, 256, 384, 512, 1024, 1769)
HEADROOM_PCT = 25
EVENT_STRETCH_BUDGET_MS = 20
RESULTS = Path(__file__).with_name("results")
HOST = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def measure(runs: int) -> dict[str, Any]:
    architecture = HOST.get(platform.machine())
    if architecture is None:
        raise SystemExit(f"no Lambda architecture runs on {platform.machine()}")
    reports = []
    with tempfile.TemporaryDirectory(prefix="lambda-sizing-") as tmp:
        work = Path(tmp)
        task = unpack(build_package(architecture, work), work / "task")
        runtime = runtime_dir(work / "runtime")
        for _ in range(runs):
            with aws_endpoint() as endpoint:
                reports.append(run_handlers(task, runtime, endpoint, work))

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    steps: dict[str, dict[str, float]] = {}
    for name in [s["step"] for s in reports[0]["steps"]]:
        found = [next(s for s in r["steps"] if s["step"] == name) for r in reports]
        steps[name] = {
            "handler": found[0]["handler"],
            "cpu_ms": median([s["cpu_ms"] for s in found]),
            "wall_ms": median([s["wall_ms"] for s in found]),
        }
    return {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "runs": runs},
        "import_cpu_ms": median([r["import"]["cpu_ms"] for r in reports]),
        "import_peak_mb": median([r["import"]["peak_rss_kb"] / 1024 for r in reports]),
        "peak_mb": median([r["peak_rss_kb"] / 1024 for r in reports]),
        "poll_read_cpu_ms": median([r["poll_read"]["cpu_ms"] for r in reports]),
        "poll_read_wall_ms": median([r["poll_read"]["wall_ms"] for r in reports]),
        "steps": steps,
    }


def stretch(cpu_ms: float, memory_mb: int) -> float:
    """Time the same CPU work takes at ``memory_mb`` (its share of a vCPU)."""
    return cpu_ms * max(1.0, FULL_VCPU_MB / memory_mb)


def model(measured: dict[str, Any]) -> dict[str, Any]:
    steps = measured["steps"]
    first_payment = steps["payment (async)"]["cpu_ms"]
    warm_payment = steps["payment (async, warm)"]["cpu_ms"]
    event_cpu = statistics.median([steps[s]["cpu_ms"] for s in ("ack", "result", "ack (sync)", "result (sync)")])
    # A 30-s payment's wait, on the deployed schedule: how many reads, each stretched at the size.
    reads = cost.poll_reads(30_000, read_ms=round(measured["poll_read_wall_ms"]))
    gb_s_price = cost.unit_price("lambda_gb_s_arm64")
    table = []
    for memory in SIZES_MB:
        api_ms = 30_000 + stretch(warm_payment, memory)
        table.append(
            {
                "memory_mb": memory,
                "fits_peak_with_headroom": measured["peak_mb"] * (100 + HEADROOM_PCT) / 100 <= memory,
                "init_ms_range": [round(measured["import_cpu_ms"]), round(stretch(measured["import_cpu_ms"], memory))],
                "first_request_ms": round(stretch(first_payment, memory)),
                "warm_payment_start_ms": round(stretch(warm_payment, memory)),
                "poll_read_cpu_ms": round(stretch(measured["poll_read_cpu_ms"], memory), 1),
                "event_stretch_ms": round(stretch(event_cpu, memory) - event_cpu, 1),
                "api_30s_usd": round(cost.lambda_gb_s(api_ms, memory) * gb_s_price, 8),
                "event_usd": round(
                    cost.lambda_gb_s(steps["ack"]["wall_ms"] + stretch(event_cpu, memory), memory) * gb_s_price, 10
                ),
            }
        )
    api = next(row for row in table if row["fits_peak_with_headroom"])
    event = next(row for row in table if row["event_stretch_ms"] <= EVENT_STRETCH_BUDGET_MS)
    return {"reads_30s": reads, "table": table, "chosen": {"api_mb": api["memory_mb"], "event_mb": event["memory_mb"]}}


def render(measured: dict[str, Any], modeled: dict[str, Any]) -> str:
    lines = [
        f"measured on {measured['machine']['platform']} (Python {measured['machine']['python']}), "
        f"median of {measured['machine']['runs']} fresh processes:",
        f"  import {measured['import_cpu_ms']} ms CPU, {measured['import_peak_mb']:.0f} MB; peak of a process running "
        f"every handler {measured['peak_mb']:.0f} MB (an upper bound for each function)",
        f"  one poll read {measured['poll_read_cpu_ms']} ms CPU ({measured['poll_read_wall_ms']} ms wall)",
    ]
    for name, step in measured["steps"].items():
        lines.append(f"  {name:24s} {step['handler']:20s} {step['cpu_ms']:8.1f} ms CPU {step['wall_ms']:9.1f} ms wall")
    lines += [
        "",
        "| memory MB | peak +25 % fits | init ms (full vCPU .. throttled) | first request ms | warm payment start ms "
        "| poll read CPU ms | ack/result CPU stretch ms | API, 30-s payment USD | per terminal event USD |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in modeled["table"]:
        low, high = row["init_ms_range"]
        lines.append(
            f"| {row['memory_mb']} | {'yes' if row['fits_peak_with_headroom'] else 'no'} | {low} .. {high} | "
            f"{row['first_request_ms']} | {row['warm_payment_start_ms']} | {row['poll_read_cpu_ms']} | "
            f"{row['event_stretch_ms']} | {row['api_30s_usd']:.6f} | {row['event_usd']:.8f} |"
        )
    chosen = modeled["chosen"]
    lines += ["", f"chosen: API {chosen['api_mb']} MB, terminal handlers {chosen['event_mb']} MB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "lambda_sizing.json")
    args = parser.parse_args(argv)
    measured = measure(args.runs)
    modeled = model(measured)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measured": measured, "modeled": modeled}, indent=1))
    print(render(measured, modeled))
    return 0


if __name__ == "__main__":
    sys.exit(main())

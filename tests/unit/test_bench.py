"""The benchmark's arithmetic on a tiny fake result set: request units, the poll schedule, the bill,
the per-payment drivers and the report. No load is run here."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from bench import cost
from bench.cpu import GATEWAY, GATEWAY_THREADS, HARNESS, STACK, set_apart
from bench.probes import ThreadCpu, _request_units, api_component
from bench.report import (
    CONCURRENCY_BURST_GOAL,
    CONCURRENCY_GOAL,
    CPU_GOAL,
    cost_model,
    floor_summary,
    goals,
    is_stack_part,
    per_payment,
    render_markdown,
    summarize_scenario,
)
from bench.stats import percentile, summarize

SETTINGS = {"poll_initial_ms": 5, "poll_growth_pct": 150, "poll_max_ms": 40}


def test_item_size_counts_names_and_values_by_dynamodb_rules() -> None:
    item = {
        "pk": {"S": "DISPATCH#abc"},  # 2 + 12
        "amount": {"N": "1250"},  # 6 + (3 significant digits → 2 bytes + 1)
        "late": {"BOOL": True},  # 4 + 1
        "result": {"M": {"ok": {"S": "yes"}}},  # 6 + 3 + 2 + 3
    }
    assert cost.item_size(item) == 14 + 9 + 5 + 14
    assert cost.number_size("0") == 2
    assert cost.item_size(None) == 0


@pytest.mark.parametrize(
    ("size", "consistent", "transactional", "units"),
    [
        (0, True, False, 1.0),
        (4096, True, False, 1.0),
        (4097, True, False, 2.0),
        (5000, False, False, 1.0),
        (100, True, True, 2.0),
    ],
)
def test_read_units_round_up_per_4_kb(size: int, consistent: bool, transactional: bool, units: float) -> None:
    assert cost.read_units(size, consistent, transactional) == units


def test_write_units_round_up_per_kb_and_double_in_transactions() -> None:
    assert cost.write_units(1024) == 1.0
    assert cost.write_units(1025) == 2.0
    assert cost.write_units(300, transactional=True) == 2.0


def test_request_units_of_calls_as_the_probe_sees_them() -> None:
    big = {"pk": {"S": "x"}, "blob": {"S": "a" * 5000}}
    assert _request_units("GetItem", {"ConsistentRead": True}, {"Item": big}, [], []) == (2.0, 0.0)
    assert _request_units("GetItem", {"ConsistentRead": True}, {}, [], []) == (1.0, 0.0)
    # An update is charged on the larger of the item before and after it.
    assert _request_units("UpdateItem", {}, {}, [1500], [900]) == (0.0, 2.0)
    transact = {"TransactItems": [{"Put": {"Item": {"pk": {"S": "h"}}}}, {"Put": {"Item": big}}]}
    assert _request_units("TransactWriteItems", transact, {}, [0, 0], [0, 0]) == (0.0, 2.0 + 10.0)


def test_poll_schedule_matches_a_hand_count() -> None:
    # Reads at 0, 5, 12 and 22 ms (integer intervals 5, 7, 10): the result landing at 20 ms is seen by the fourth.
    assert cost.poll_reads(20) == 4
    assert cost.poll_reads(0) == 1
    assert cost.added_latency_ms(20) == 2
    assert cost.poll_reads(30_000, read_ms=10) < cost.poll_reads(30_000)


def test_the_phased_schedule_reads_a_30_s_payment_a_quarter_as_often_as_the_flat_cap() -> None:
    flat = cost.schedule(poll_typing_max_ms=40)
    # At a flat 40 ms cap, one read per 40 ms: about 750 for 30 s.
    assert 750 <= cost.poll_reads(30_000, flat) <= 760
    # 6 s at 40 ms after the ack, then at most 500 ms: about 150 + 50.
    assert 200 <= cost.poll_reads(30_000) <= 215


def test_added_latency_stays_at_the_fast_cap_for_a_tap_and_at_the_typing_cap_after() -> None:
    phases = cost.phase_latency(read_ms=8)
    assert phases["result"]["max_ms"] <= 40 + 8
    assert 40 + 8 < phases["typing"]["max_ms"] <= 500 + 8
    flat = cost.phase_latency(cost.schedule(poll_typing_max_ms=40), read_ms=8)
    assert flat["typing"]["max_ms"] == phases["result"]["max_ms"]


def test_the_bench_model_follows_the_service_schedule_read_by_read() -> None:
    from chalicelib.config import Settings
    from chalicelib.payments.poll_schedule import next_interval_ms

    plan = Settings()
    times = cost.read_times(8_000, plan, ack_after_ms=0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    interval = plan.poll_initial_ms
    for at, gap in zip(times, gaps, strict=False):
        assert gap == interval
        interval = next_interval_ms(plan, interval, at - times[0])


def test_payment_cost_adds_up_each_line_at_list_prices() -> None:
    usage = cost.PaymentUsage(
        api_duration_ms=30_000,
        api_memory_mb=256,
        event_invocations=2,
        event_duration_ms=10,
        event_memory_mb=256,
        rru=750,
        wru=9,
        iot_messages=4,
        rules_triggered=2,
        rule_actions=2,
    )
    usd = cost.payment_cost(usage)
    assert usd["api_lambda_duration"] == pytest.approx(7.5 * 0.0000166667)
    arm = cost.payment_cost(replace(usage, architecture="arm64"))
    assert arm["api_lambda_duration"] == pytest.approx(7.5 * 0.0000133334)
    assert usd["event_lambda_duration"] == pytest.approx(2 * 0.0025 * 0.0000166667)
    assert usd["lambda_requests"] == pytest.approx(3 * 0.20e-6)
    assert usd["api_gateway_requests"] == pytest.approx(3.50e-6)
    assert usd["dynamodb_reads"] == pytest.approx(750 * 0.125e-6)
    assert usd["dynamodb_writes"] == pytest.approx(9 * 0.625e-6)
    assert usd["iot_messages"] == pytest.approx(4e-6)
    assert usd["iot_rules"] == pytest.approx(4 * 0.15e-6)
    assert usd["total"] == pytest.approx(sum(v for k, v in usd.items() if k != "total"))
    assert cost.lambda_gb_s(0.2, 512) == pytest.approx(0.0005), "billed per started millisecond"


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([10.0, 20.0, 30.0, 40.0, 50.0], 50) == 30.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert summarize([]) == {"n": 0}
    assert api_component("/v1/connector/order?x=1") == "api.order"


def fake_counts(payments: int) -> dict[str, Any]:
    def row(component: str, service: str, operation: str, calls: int, rru: float = 0.0, wru: float = 0.0, **kw: Any):
        base = {"table": "t", "errors": 0, "time_ms": 2.0 * calls, "poll_reads": 0}
        return {
            "component": component,
            "service": service,
            "operation": operation,
            "calls": calls,
            "rru": rru,
            "wru": wru,
            **base,
            **kw,
        }

    return {
        "aws_calls": [
            row("api.order", "dynamodb", "GetItem", 10 * payments, rru=10.0 * payments, poll_reads=8 * payments),
            row("api.order", "dynamodb", "TransactWriteItems", payments, wru=4.0 * payments),
            row("terminal_events", "dynamodb", "UpdateItem", 2 * payments, wru=2.0 * payments),
            row("poller:sqs:nepting-ipn", "sqs", "DeleteMessage", payments),
            row("poller:stream:p", "dynamodbstreams", "GetRecords", 50),
        ],
        "mqtt_publishes": {"requests": payments, "events": 2 * payments, "status": 3},
        "mqtt_max_payload_bytes": 700,
        "handlers": {
            "api.order": {"count": payments, "total_ms": 3_100.0 * payments},
            "terminal_events": {"count": 2 * payments, "total_ms": 8.0 * payments},
        },
        "waits": {"count": 7 * payments, "total_ms": 3_000.0 * payments},
    }


def test_per_payment_divides_the_payment_path_and_keeps_the_console_side_apart() -> None:
    drivers = per_payment(fake_counts(2), 2)
    assert drivers["dynamodb_calls"] == {"GetItem": 10.0, "TransactWriteItems": 1.0, "UpdateItem": 2.0}
    assert (drivers["rru"], drivers["wru"], drivers["poll_reads"]) == (10.0, 6.0, 8.0)
    assert drivers["mqtt"] == {"requests": 1.0, "events": 2.0, "status": 1.5}
    assert drivers["terminal_events"] == {"per_payment": 2.0, "mean_ms": 4.0}
    assert drivers["api_request"]["mean_ms"] == 3_100.0
    assert drivers["console_side"] == {
        "poller:sqs:nepting-ipn": {"sqs.DeleteMessage": 1.0, "rru": 0.0, "wru": 0.0, "sqs_requests": 1.0}
    }


def fake_results() -> dict[str, Any]:
    samples = [
        {"order_id": f"o{i}", "customer_ms": 3_000, "latency_ms": 3_010.0 + i, "added_ms": 5.0 + i, "outcome": "ok"}
        for i in range(4)
    ] + [{"order_id": "bad", "customer_ms": 3_000, "latency_ms": 9.0, "added_ms": None, "outcome": "http_502:x"}]
    scenario = summarize_scenario("customer_aws", "aws", samples, 2.0, fake_counts(4), cpu_s={"stack process": 0.5})
    step = summarize_scenario(
        "concurrency_steady_10",
        "local",
        samples,
        2.0,
        fake_counts(4),
        cpu_s={"stack process": 0.3, "simulated terminals": 0.1, "ECRs": 0.1},
        in_flight=10,
        arrival="steady",
    )
    return {
        "started_at": "2026-11-28T00:00:00+00:00",
        "machine": {"cpus": 2, "python": "3.11", "platform": "test", "loadavg_start": [0.1, 0.1, 0.1]},
        "settings": SETTINGS,
        "floor": {"http_ms": [1.0, 1.0, 1.0], "mqtt_ms": [2.0, 2.0, 2.0]},
        "scenarios": {"customer_aws": scenario},
        "concurrency": [step],
        "harness": {"open_files_limit": [20000, 20000], "terminals_per_process": 200, "terminal_processes": 1},
    }


def test_scenario_summary_measures_overhead_over_the_customer_time_and_counts_errors() -> None:
    scenario = fake_results()["scenarios"]["customer_aws"]
    assert scenario["outcomes"] == {"ok": 4, "http_502:x": 1}
    assert scenario["overhead_ms"]["p50"] == 11.5
    assert scenario["added_ms"]["max"] == 8.0
    assert scenario["throughput_per_s"] == 2.0
    assert scenario["cpu_ms_per_payment"] == 100.0
    assert scenario["stack_cpu_ms_per_payment"] == 100.0


def test_cost_model_extrapolates_reads_and_duration_to_30_s_and_the_report_shows_it() -> None:
    results = fake_results()
    models = cost_model(results)
    extrapolated = models["30-s interaction (extrapolated by the poll schedule) @ deployed"]
    reads = models["extrapolation"]["schedule_reads"]
    assert extrapolated["usage"]["rru"] == pytest.approx(10.0 + reads - 8.0)
    assert extrapolated["usage"]["api_duration_ms"] == pytest.approx(3_100.0 - 3_000.0 + 30_000)
    assert extrapolated["usage"]["iot_messages"] == 4.0
    assert (extrapolated["usage"]["architecture"], extrapolated["usage"]["api_memory_mb"]) == ("arm64", 128)
    before = models["30-s interaction (extrapolated by the poll schedule) @ before"]
    assert before["usage"]["rru"] == pytest.approx(10.0 + models["extrapolation"]["flat_schedule_reads"] - 8.0)
    assert before["usd"]["total"] > 2 * extrapolated["usd"]["total"]
    floor = floor_summary(results)
    assert floor["floor_p50_ms"] == 5.0
    rows = {row["goal"]: row for row in goals(results, models)}
    assert rows[CONCURRENCY_GOAL] == {"goal": CONCURRENCY_GOAL, "result": "step not run", "met": False}
    report = render_markdown(results, floor, models, [])
    assert "| customer_aws | aws | 5 |" in report
    assert "| steady | 10 | 5 | http_502:x 1 |" in report
    # The stack's CPU apart from its load's: 0.3 s, 0.1 s and 0.1 s over 5 payments (no gateway here).
    assert "| 60.0 / 20.0 / – / 20.0 |" in report
    assert "about 9872 in flight" in report
    assert "DynamoDB on-demand read request units | 0.125 |" in report


def test_the_200_step_is_judged_on_errors_overhead_and_the_stacks_cpu_without_its_load() -> None:
    results = fake_results()
    ok = [
        {"order_id": f"o{i}", "customer_ms": 3_000, "latency_ms": 3_020.0 + i, "added_ms": 5.0, "outcome": "ok"}
        for i in range(10)
    ]
    # The stack's process and a child process of it (a broker) count; the terminals, the simulated
    # gateway and the ECRs do not.
    cpu_s = {
        "stack process": 0.08,
        "stack child: local.broker": 0.01,
        "simulated terminals": 0.02,
        "simulated gateway": 0.005,
        "ECRs": 0.03,
    }
    results["concurrency"].append(
        summarize_scenario(
            "concurrency_steady_200", "local", ok, 2.0, fake_counts(10), cpu_s=cpu_s, in_flight=200, arrival="steady"
        )
    )
    rows = {row["goal"]: row for row in goals(results, {})}
    assert rows[CONCURRENCY_GOAL]["met"] is True and rows[CONCURRENCY_GOAL]["result"].startswith("0 errors")
    assert rows[CPU_GOAL]["result"] == 9.0 and rows[CPU_GOAL]["met"] is True
    report = render_markdown(results, floor_summary(results), {}, [])
    assert "| 9.0 (8.0 + 1.0) / 2.0 / 0.5 / 3.0 |" in report, "the stack's process and its broker child, then the load"
    assert rows[CONCURRENCY_BURST_GOAL] == {"goal": CONCURRENCY_BURST_GOAL, "result": "step not run", "met": False}
    step = results["concurrency"][-1]
    assert step["cpu_ms_per_payment"] == 14.5
    assert list(step["cpu_ms_per_payment_by_part"]) == [
        "stack process",
        "stack child: local.broker",
        "ECRs",
        "simulated gateway",
        "simulated terminals",
    ]
    slow = dict(ok[0], latency_ms=3_500.0)
    results["concurrency"][-1] = summarize_scenario(
        "concurrency_steady_200", "local", [*ok, slow], 2.0, fake_counts(11), cpu_s=cpu_s, in_flight=200
    )
    results["concurrency_burst"] = [
        summarize_scenario(
            "concurrency_burst_200", "local", ok, 2.0, fake_counts(10), cpu_s=cpu_s, in_flight=200, arrival="burst"
        )
    ]
    rows = {row["goal"]: row for row in goals(results, {})}
    assert rows[CONCURRENCY_GOAL]["met"] is False
    assert rows[CONCURRENCY_BURST_GOAL]["met"] is True
    cost_row = next(row for row in rows.values() if row["goal"].startswith("modeled AWS cost"))
    assert cost_row["met"] is False and str(cost_row["result"]).startswith("not modeled")


def test_thread_cpu_groups_threads_by_role_and_counts_ended_threads() -> None:
    group = ThreadCpu.group
    assert group("Thread-12 (process_request_thread)") == "api request threads"
    assert group("topic-rule-3_0") == "topic-rule"
    assert group("mqtt-broker-41235") == "mqtt-broker"
    assert group("paho-mqtt-client-BENCH-C0001") == "simulated terminals (paho)"
    assert group("paho-mqtt-client-") == "MQTT channel (paho)"
    assert group("mqtt-broker-events") == "broker relay (rules, presence)"
    assert group("sqs:ipn") == "sqs:ipn" and group("ecr-C0001") == "ECR threads (the load)"
    assert group("gateway-ipn-3") == GATEWAY_THREADS
    probe = ThreadCpu().install()
    try:
        before = probe.snapshot()

        def burn() -> None:
            deadline = time.thread_time() + 0.02
            while time.thread_time() < deadline:
                pass

        worker = threading.Thread(target=burn, name="gateway-ipn-0")
        worker.start()
        worker.join()
        spent = ThreadCpu.per_payment(before, probe.snapshot(), 2)
    finally:
        probe.uninstall()
    assert spent["gateway-ipn"] >= 10.0  # 20 ms of CPU over 2 payments, counted after the thread ended


def test_steady_arrivals_spread_each_ecr_over_the_mean_customer_time_the_same_way_every_run() -> None:
    from bench.load import Terminal
    from bench.run import BenchConfig, steady_offsets

    config = BenchConfig()
    terminals = [Terminal("BENCH", f"C{i}", ms) for i, ms in enumerate((2_000, 3_000, 4_000, 5_000))]
    offsets = steady_offsets(config, terminals)
    assert len(offsets) == 4 and all(0.0 <= offset < 3.5 for offset in offsets)
    assert len(set(offsets)) == 4, "not a burst: no two ECRs start together"
    assert steady_offsets(config, terminals) == offsets
    assert steady_offsets(replace(config, random_seed=1), terminals) != offsets


def test_a_step_breaks_on_too_many_errors_or_a_slow_overhead_p99_and_says_which() -> None:
    from bench.run import BenchConfig, broken

    config = BenchConfig()
    ok = {"payments": 100, "outcomes": {"ok": 95, "http_504:terminal.result_timeout": 5}, "overhead_ms": {"p99": 2_000}}
    assert broken(ok, config) is None
    errors = dict(ok, outcomes={"ok": 94, "http_504:terminal.result_timeout": 6})
    assert broken(errors, config) == "6 of 100 payments failed (http_504:terminal.result_timeout 6), over 5%"
    slow = dict(ok, overhead_ms={"p99": 2_000.5})
    assert broken(slow, config) == "overhead p99 2000.5 ms, over 2000 ms"


def test_threads_that_are_not_the_stacks_are_moved_out_of_its_process_share() -> None:
    cpu_s = {STACK: 2.0, "stack child: local.broker": 0.5, "ECRs": 0.1}
    set_apart(cpu_s, HARNESS, 0.25)
    set_apart(cpu_s, GATEWAY, 0.5)
    assert cpu_s == {STACK: 1.25, "stack child: local.broker": 0.5, "ECRs": 0.1, HARNESS: 0.25, GATEWAY: 0.5}
    assert not is_stack_part(GATEWAY) and not is_stack_part(HARNESS)
    set_apart(cpu_s, GATEWAY, 5.0)  # clocks read at slightly different moments: never below zero
    assert cpu_s[STACK] == 0.0 and cpu_s[GATEWAY] == 5.5

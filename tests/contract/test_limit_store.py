"""The limit store on DynamoDB (moto): exact counters and gauges that never pass their limit, with
many threads at once standing in for many Lambda instances."""

from __future__ import annotations

import threading
from collections.abc import Callable

from chalicelib.adapters.dynamodb.limits import DynamoLimitStore
from chalicelib.config import Settings


def in_threads(count: int, action: Callable[[], object]) -> list[object]:
    results: list[object] = []
    lock = threading.Lock()

    def run() -> None:
        value = action()
        with lock:
            results.append(value)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_increments_are_all_counted(aws: Settings) -> None:
    store = DynamoLimitStore(aws.merchants_table)
    results = in_threads(12, lambda: store.increment("AUTHFAIL#LOGIN#shop#1", 10_000))
    assert sorted(results) == list(range(1, 13))  # type: ignore[type-var]
    assert store.read("AUTHFAIL#LOGIN#shop#1") == 12
    assert store.read("AUTHFAIL#LOGIN#other#1") == 0


def test_a_gauge_is_never_taken_past_its_limit_and_is_given_back(aws: Settings) -> None:
    store = DynamoLimitStore(aws.merchants_table)
    taken = in_threads(12, lambda: store.acquire("WAITING#MERCHANT#M1", 5, 1_000_000, 60_000))
    assert taken.count(True) == 5
    for _ in range(5):
        store.release("WAITING#MERCHANT#M1", 1_000_001)
    store.release("WAITING#MERCHANT#M1", 1_000_001)  # one too many: stays at zero
    assert store.acquire("WAITING#MERCHANT#M1", 1, 1_000_002, 60_000)
    assert not store.acquire("WAITING#MERCHANT#M1", 1, 1_000_003, 60_000)


def test_a_full_gauge_untouched_past_the_stale_time_is_reclaimed_once(aws: Settings) -> None:
    store = DynamoLimitStore(aws.merchants_table)
    assert store.acquire("WAITING#ORDER#M1#A", 1, 1_000_000, 60_000)
    assert not store.acquire("WAITING#ORDER#M1#A", 1, 1_059_000, 60_000)
    reclaimed = in_threads(6, lambda: store.acquire("WAITING#ORDER#M1#A", 1, 1_070_000, 60_000))
    assert reclaimed.count(True) == 1

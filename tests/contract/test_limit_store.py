"""The limit store, on every implementation: exact counters and gauges that never pass their limit,
with many threads at once standing in for many Lambda instances (or the local stack's API threads)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from chalicelib.limits import LimitStore


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


def test_concurrent_increments_are_all_counted(limits: LimitStore) -> None:
    results = in_threads(12, lambda: limits.increment("AUTHFAIL#LOGIN#shop#1", 10_000))
    assert sorted(results) == list(range(1, 13))  # type: ignore[type-var]
    assert limits.read("AUTHFAIL#LOGIN#shop#1") == 12
    assert limits.read("AUTHFAIL#LOGIN#other#1") == 0


def test_a_gauge_is_never_taken_past_its_limit_and_is_given_back(limits: LimitStore) -> None:
    taken = in_threads(12, lambda: limits.acquire("WAITING#MERCHANT#M1", 5, 1_000_000, 60_000))
    assert taken.count(True) == 5
    for _ in range(5):
        limits.release("WAITING#MERCHANT#M1", 1_000_001)
    limits.release("WAITING#MERCHANT#M1", 1_000_001)  # one too many: stays at zero
    assert limits.acquire("WAITING#MERCHANT#M1", 1, 1_000_002, 60_000)
    assert not limits.acquire("WAITING#MERCHANT#M1", 1, 1_000_003, 60_000)


def test_a_released_unit_can_be_taken_again_by_the_next_request(limits: LimitStore) -> None:
    assert limits.acquire("WAITING#ORDER#M1#B", 2, 1_000_000, 60_000)
    assert limits.acquire("WAITING#ORDER#M1#B", 2, 1_000_001, 60_000)
    assert not limits.acquire("WAITING#ORDER#M1#B", 2, 1_000_002, 60_000)
    limits.release("WAITING#ORDER#M1#B", 1_000_003)
    assert limits.acquire("WAITING#ORDER#M1#B", 2, 1_000_004, 60_000)
    assert not limits.acquire("WAITING#ORDER#M1#B", 2, 1_000_005, 60_000)


def test_a_full_gauge_untouched_past_the_stale_time_is_reclaimed_once(limits: LimitStore) -> None:
    assert limits.acquire("WAITING#ORDER#M1#A", 1, 1_000_000, 60_000)
    assert not limits.acquire("WAITING#ORDER#M1#A", 1, 1_059_000, 60_000)
    assert not limits.acquire("WAITING#ORDER#M1#A", 1, 1_060_000, 60_000)  # exactly the stale time: still fresh
    reclaimed = in_threads(6, lambda: limits.acquire("WAITING#ORDER#M1#A", 1, 1_070_000, 60_000))
    assert reclaimed.count(True) == 1


def test_a_reclaimed_gauge_starts_again_from_the_one_unit_just_taken(limits: LimitStore) -> None:
    # Three leaked units of a limit of three; once stale, the reclaiming request holds one, so two
    # more fit, and the leaked ones are not counted on top.
    for at in (1_000_000, 1_000_001, 1_000_002):
        assert limits.acquire("WAITING#MERCHANT#M2", 3, at, 60_000)
    assert limits.acquire("WAITING#MERCHANT#M2", 3, 1_100_000, 60_000)
    assert limits.acquire("WAITING#MERCHANT#M2", 3, 1_100_001, 60_000)
    assert limits.acquire("WAITING#MERCHANT#M2", 3, 1_100_002, 60_000)
    assert not limits.acquire("WAITING#MERCHANT#M2", 3, 1_100_003, 60_000)


def test_a_gauge_touched_within_the_stale_time_is_not_reclaimed(limits: LimitStore) -> None:
    # A release keeps the gauge fresh: what is still taken is in use, not leaked.
    assert limits.acquire("WAITING#MERCHANT#M3", 2, 1_000_000, 60_000)
    assert limits.acquire("WAITING#MERCHANT#M3", 2, 1_000_000, 60_000)
    assert limits.acquire("WAITING#MERCHANT#M4", 1, 1_000_000, 60_000)
    limits.release("WAITING#MERCHANT#M3", 1_050_000)
    assert limits.acquire("WAITING#MERCHANT#M3", 2, 1_100_000, 60_000)
    assert not limits.acquire("WAITING#MERCHANT#M3", 2, 1_100_001, 60_000)
    # The other gauge, full since 1_000_000, is stale by 1_100_000: keys are apart.
    assert limits.acquire("WAITING#MERCHANT#M4", 1, 1_100_000, 60_000)

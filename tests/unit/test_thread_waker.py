"""The local stack's in-process wake-up: no wake is lost, whoever waits and whenever it lands."""

from __future__ import annotations

import threading
import time

from local.waker import ThreadWaker

LONG_S = 30.0  # a wait that ends before this did so because of a wake, not its timeout


def _wait_in_thread(waker: ThreadWaker, key: str, timeout_s: float = LONG_S) -> threading.Thread:
    thread = threading.Thread(target=waker.wait, args=(key, timeout_s), daemon=True)
    thread.start()
    return thread


def _blocked(thread: threading.Thread) -> bool:
    thread.join(0.2)
    return thread.is_alive()


def test_a_wake_ends_the_wait_of_every_thread_waiting_on_its_key_and_no_other() -> None:
    waker = ThreadWaker()
    first, second = _wait_in_thread(waker, "r1"), _wait_in_thread(waker, "r1")
    other = _wait_in_thread(waker, "r2")
    assert _blocked(first) and _blocked(second)
    waker.wake("r1")
    first.join(5)
    second.join(5)
    assert not first.is_alive() and not second.is_alive()
    assert _blocked(other)
    waker.wake("r2")
    other.join(5)
    assert not other.is_alive()


def test_a_wake_before_the_wait_ends_it_at_once_and_the_next_wait_waits_for_the_next_wake() -> None:
    waker = ThreadWaker()
    waker.wake("r1")  # the result landed between the waiter's read and its sleep
    started = time.monotonic()
    waker.wait("r1", LONG_S)
    assert time.monotonic() - started < LONG_S / 2
    started = time.monotonic()
    waker.wait("r1", 0.2)  # nothing new: the timeout ends it
    assert time.monotonic() - started >= 0.19


def test_a_waiter_that_was_not_waiting_when_another_consumed_the_wake_still_sees_it() -> None:
    waker = ThreadWaker()
    read_done, go = threading.Event(), threading.Event()

    def duplicate() -> None:  # a second request on the same order: it reads, then sleeps
        read_done.set()
        go.wait(5)
        waker.wait("r1", LONG_S)

    late = threading.Thread(target=duplicate, daemon=True)
    late.start()
    assert read_done.wait(5)
    early = _wait_in_thread(waker, "r1")
    assert _blocked(early)
    waker.wake("r1")  # lands after the duplicate's read, before its wait
    early.join(5)
    assert not early.is_alive()
    go.set()
    late.join(5)
    assert not late.is_alive()

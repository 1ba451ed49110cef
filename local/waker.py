"""In one process the terminal-event handler can wake the waiting request at once.

On AWS the handler runs in another Lambda and the poll schedule alone bounds the added latency;
here both run in the local stack, so a wake cuts the current poll sleep short. The local stack's
polls are then only a safety net (``LOCAL_POLL_*`` in ``local/stack.py``), so a wake must never be
lost: each key counts its wakes, and each waiting thread remembers the count it last saw. A wake
that lands between a waiter's read and its next wait ends that wait at once (one more read, never
a missed answer), whichever of several waiters on the same order got there first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

_MAX_TRACKED = 10_000


class _Slot:
    __slots__ = ("changed", "seen", "wakes")

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.Lock())
        self.wakes = 0
        # thread ident → the wake count that thread saw when its last wait ended
        self.seen: dict[int, int] = {}


class ThreadWaker:
    def __init__(self) -> None:
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def _slot(self, key: str) -> _Slot:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot()
                while len(self._slots) > _MAX_TRACKED:
                    self._slots.popitem(last=False)
            else:
                self._slots.move_to_end(key)
            return slot

    def wait(self, key: str, timeout_s: float) -> None:
        """Until ``key`` is woken after this thread's previous wait on it ended (any wake at all,
        on a first wait), or ``timeout_s``."""
        slot = self._slot(key)
        me = threading.get_ident()
        with slot.changed:
            seen = slot.seen.get(me, 0)
            slot.changed.wait_for(lambda: slot.wakes != seen, timeout_s)
            slot.seen[me] = slot.wakes

    def wake(self, key: str) -> None:
        slot = self._slot(key)
        with slot.changed:
            slot.wakes += 1
            slot.changed.notify_all()

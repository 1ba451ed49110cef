"""In one process the terminal-event handler can wake the waiting request at once.

On AWS the handler runs in another Lambda and the poll schedule alone bounds the added latency;
here both run in the local stack, so a wake cuts the current poll sleep short.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

_MAX_TRACKED = 10_000


class ThreadWaker:
    def __init__(self) -> None:
        self._events: OrderedDict[str, threading.Event] = OrderedDict()
        self._lock = threading.Lock()

    def _event(self, request_id: str) -> threading.Event:
        with self._lock:
            event = self._events.get(request_id)
            if event is None:
                event = self._events[request_id] = threading.Event()
                while len(self._events) > _MAX_TRACKED:
                    self._events.popitem(last=False)
            return event

    def wait(self, request_id: str, timeout_s: float) -> None:
        event = self._event(request_id)
        event.wait(timeout_s)
        event.clear()

    def wake(self, request_id: str) -> None:
        self._event(request_id).set()

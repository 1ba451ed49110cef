"""What the local stack's child processes (the broker, the Console side) share: how a child takes
its stdout as the channel to its parent, and how the parent names the way a child ended."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any


def channel_to_parent() -> Callable[[dict[str, Any]], None]:
    """In a child: stdout becomes the channel to the parent, one JSON line per message (sent whole,
    from any thread); anything else printed there goes to stderr instead. Ctrl-C reaches the whole
    process group, so SIGINT and SIGTERM are ignored: the parent stops its children itself, in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sending = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        line = json.dumps(message, separators=(",", ":")) + "\n"
        with sending:
            channel.write(line)
            channel.flush()

    return send


def exit_status(code: int | None) -> str:
    """How a child ended, from its return code."""
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"

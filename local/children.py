"""What the local stack's child processes (the broker, the Console side) share: how a child takes
its stdout as the channel to its parent, how the parent names the way a child ended, and which
cores each may run on (``keep_to_one_core``, ``take_every_core``)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The CPUs the local stack's process was given before it kept to one: its children take them back.
CPUS_ENV = "LOCAL_STACK_CPUS"


def channel_to_parent() -> Callable[[dict[str, Any]], None]:
    """In a child: stdout becomes the channel to the parent, one JSON line per message (sent whole,
    from any thread); anything else printed there goes to stderr instead. Ctrl-C reaches the whole
    process group, so SIGINT and SIGTERM are ignored: the parent stops its children itself, in order.
    The child runs on every core the stack was given (``take_every_core``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    take_every_core()
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


def keep_to_one_core() -> int | None:
    """Keep every thread of this process, and every thread it starts later, on one CPU (the one it
    runs on now); the CPU, or None where there is nothing to do (not Linux, a single CPU).

    The stack's threads take turns on one interpreter lock: on two cores each hand-over of the lock
    wakes a thread on the other core, whose caches hold none of the payment's data. Kept on one, the
    stack took about 11 % less CPU per payment at 200 in flight (bench/README.md). Its children
    (the broker, the Console side, any started later) keep every core: see ``take_every_core``."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    os.environ[CPUS_ENV] = ",".join(str(cpu) for cpu in allowed)
    cpu = _current_cpu()
    if cpu not in allowed:
        cpu = allowed[-1]
    # Twice: a thread started meanwhile by one not yet moved is caught by the second pass.
    for _ in range(2):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(task.name), {cpu})
    return cpu


def take_every_core() -> None:
    """In a child of the stack: run on every CPU the stack was given, not only the one its process
    keeps to (a child inherits its parent's)."""
    raw = os.environ.get(CPUS_ENV)
    if not raw or not hasattr(os, "sched_setaffinity"):
        return
    try:
        cpus = {int(cpu) for cpu in raw.split(",")}
    except ValueError:
        return
    with contextlib.suppress(OSError):  # CPUs taken away meanwhile: stay where we are
        os.sched_setaffinity(0, cpus)


def _current_cpu() -> int:
    """The CPU this thread last ran on (field 39 of ``/proc/self/stat``), or -1."""
    try:
        fields = Path("/proc/thread-self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[36])
    except (OSError, IndexError, ValueError):
        return -1

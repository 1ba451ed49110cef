"""The Console side of the local stack in a process of its own: the pollers that feed ``app.py``'s
event handlers (the order-notification stream, the IPN queue, the merchant-notification queue).

On AWS these handlers are Lambda functions of their own, not the API's. Locally they ran on the API's
interpreter and took its turns: about a fifth of the stack's CPU per payment, taken from the
payments waiting for theirs. Here they run in ``python -m local.console_process``, on the same data
directory (SQLite's own locking orders the two processes' writes), with the same handlers and the
same event shapes.

The parent (``ConsoleProcess``) talks to the child in JSON lines, as the broker's process does:

- parent → child, on stdin: ``{"notify": channel}`` when the parent queued something on a queue or
  stream (``Database.notify``): the child's pollers wake at once instead of at their next idle
  read (every 0.2 s); ``{"stop": true}`` to stop. A notification never blocks the parent: one that
  finds the pipe full (a child that stopped reading) is dropped and counted, and the idle read
  finds the work. A channel is written at most one line a spell (``NOTIFY_SPELL_S``): the poller
  the first one woke waits out its batching window before it reads, so the others would only cost
  a line each to write, read and parse on both sides. The child notifies the channel's poller once
  more when the spell ends, so every write is still followed by a notification.
- child → parent, on stdout: ``{"ready": [poller names]}``, then ``{"crashed": traceback}`` if a
  poller crashed, and ``{"stopped": true}`` once every poller has stopped.

The child exits by itself when its stdin ends without a stop (the parent died, ``kill -9``): nobody
is left to stop it, and the data directory must be free for the next start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chalicelib.exceptions import ChannelError
from local.children import channel_to_parent, exit_status

# Named, not __name__: run as ``python -m local.console_process`` the module is ``__main__``.
log = logging.getLogger("local.console_process")

_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0
_CRASH_CHECK_S = 0.2
# Half the pollers' batching window (local/pollers.py, BATCHING_WINDOW_S): a poller the spell's line
# woke has not read yet when the child notifies it again at the spell's end.
NOTIFY_SPELL_S = 0.05


class ConsoleProcessError(RuntimeError):
    """The Console side's process did not start, or stopped answering."""


class NoTerminalChannel:
    """The Console side never talks to terminals: its handlers have no use for the broker."""

    def publish(self, terminal_id: str, envelope: dict[str, Any]) -> None:
        raise ChannelError("the Console side's process has no channel to terminals")


class ConsoleProcess:
    """The parent's handle on the child: ``notify(channel)``, ``crash``, ``pollers``, ``stop()``."""

    def __init__(self, data_dir: Path, log_level: int, module: str = "local.console_process") -> None:
        self.data_dir = data_dir
        self.log_level = log_level
        # The child's entry point (a test runs one whose handler breaks on purpose).
        self.module = module
        self.pollers: list[str] = []
        self.crash: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._writing = threading.Lock()
        self._stopping = False
        self.dropped_notifies = 0
        # Per channel: until when a notification writes nothing (the spell of the last line written).
        self._spell_ends: dict[str, float] = {}

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> ConsoleProcess:
        command = [sys.executable, "-m", self.module, "--data-dir", str(self.data_dir)]
        command += ["--log-level", str(self.log_level)]
        self._process = subprocess.Popen(  # noqa: S603 -- our own interpreter and module, no shell
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_PROJECT_ROOT,
        )
        assert self._process.stdin is not None
        # Written with os.write on the descriptor alone (never the buffered file): a full pipe says
        # so at once instead of holding the API thread that wrote to the store.
        os.set_blocking(self._process.stdin.fileno(), False)
        threading.Thread(target=self._read, name="console-process-reader", daemon=True).start()
        answer = self._next(_START_TIMEOUT_S)
        if answer is None or "ready" not in answer:
            self._abandon()
            raise ConsoleProcessError(
                f"the Console side's process did not start: {answer or exit_status(self._process.poll())}"
            )
        self.pollers = [str(name) for name in answer["ready"]]
        return self

    def notify(self, channel: str) -> None:
        """Something was queued on ``channel``: the child's poller of it reads it now (or, within the
        spell of the last line written for it, when the child notifies it again as the spell ends)."""
        now = time.monotonic()
        if now < self._spell_ends.get(channel, 0.0):
            return
        if self._send({"notify": channel}):
            self._spell_ends[channel] = now + NOTIFY_SPELL_S
        else:
            self.dropped_notifies += 1

    def stop(self) -> None:
        process = self._process
        if process is None or self._stopping:
            return
        self._stopping = True
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while not self._send({"stop": True}) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the pipe is full: the child reads it, or the deadline ends the wait
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("console_process_stop_timeout", extra={"pid": process.pid})
            self._abandon()

    def _send(self, message: dict[str, Any]) -> bool:
        """Whether the line went into the pipe whole (a line is shorter than PIPE_BUF: all or nothing)."""
        process = self._process
        if process is None or process.stdin is None:
            return False
        line = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        with self._writing:
            try:
                return os.write(process.stdin.fileno(), line) == len(line)
            except BlockingIOError:
                return False
            except (BrokenPipeError, ValueError, OSError):
                # The child is gone; the reader thread reports how it ended.
                return False

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for raw in process.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                log.error("console_process_unreadable_message", extra={"line": raw[:200]})
                continue
            if "crashed" in message and self.crash is None:
                self.crash = str(message["crashed"])
                log.error("console_process_crashed", extra={"report": self.crash})
            self._answers.put(message)
        code = process.wait()
        if not self._stopping and self.crash is None:
            self.crash = f"the Console side's process ended unexpectedly ({exit_status(code)})"
            log.error("console_process_ended", extra={"code": code})
        self._answers.put(None)

    def _next(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            return self._answers.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def _abandon(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)


def start_console_process(data_dir: Path, log_level: int, module: str = "local.console_process") -> ConsoleProcess:
    return ConsoleProcess(data_dir, log_level, module).start()


def read_parent(fd: int, notify: Callable[[str], None], spell_s: float) -> bool:
    """The child's side of the pipe: ``notify`` each channel the parent names, and again ``spell_s``
    after its last line (the parent wrote nothing for what it queued meanwhile). True on a stop,
    False when the pipe ends without one."""
    again: dict[str, float] = {}  # channel -> when its spell ends
    pending = b""
    while True:
        timeout = max(0.0, min(again.values()) - time.monotonic()) if again else None
        readable, _, _ = select.select([fd], [], [], timeout)
        now = time.monotonic()
        for channel in [channel for channel, ends in again.items() if ends <= now]:
            del again[channel]
            notify(channel)
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "notify" in message:
                channel = str(message["notify"])
                notify(channel)
                again[channel] = now + spell_s
            elif message.get("stop"):
                return True


def main(argv: list[str] | None = None) -> int:
    """``python -m local.console_process``: the Console side's pollers, driven by their parent."""
    parser = argparse.ArgumentParser(prog="python -m local.console_process", description=main.__doc__)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--log-level", type=int, default=logging.INFO, help="a number: 20 INFO, 40 ERROR")
    args = parser.parse_args(argv)
    # The handlers' log lines go to stderr.
    send = channel_to_parent()

    from chalicelib import bootstrap
    from chalicelib.config import get_settings
    from chalicelib.observability import logger
    from local.pollers import start_sqlite_pollers
    from local.store import build_sqlite, open_store

    logger.setLevel(args.log_level)
    settings = get_settings()
    store = open_store(args.data_dir, settings)
    bootstrap.install(build_sqlite(settings, store, channel=NoTerminalChannel()))
    stop_event = threading.Event()
    pollers = start_sqlite_pollers(settings, store, stop_event)
    send({"ready": [poller.name for poller in pollers]})

    def watch() -> None:
        while not stop_event.wait(_CRASH_CHECK_S):
            for poller in pollers:
                if poller.crash:
                    send({"crashed": f"poller {poller.name} crashed:\n{poller.crash}"})
                    return

    threading.Thread(target=watch, name="crash-watch", daemon=True).start()
    stopped = read_parent(sys.stdin.fileno(), store.db.notify, NOTIFY_SPELL_S)
    if not stopped:
        # Our stdin ended without a stop: the parent is gone. Committed work is in the database file;
        # what a poller was handling comes back after its visibility timeout, as on AWS.
        os._exit(0)
    stop_event.set()
    store.db.notify()  # wake the idle ones now
    for poller in pollers:
        poller.join(timeout=5)
    crashed = [f"poller {poller.name} crashed:\n{poller.crash}" for poller in pollers if poller.crash]
    store.close()
    if crashed:
        send({"crashed": crashed[0]})
    send({"stopped": True})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)

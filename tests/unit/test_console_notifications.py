"""The parent writes the Console side's process at most one line a channel a spell, and the child
notifies that channel once more when the spell ends: every write is followed by a notification."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from local.console_process import ConsoleProcess, read_parent

# A liveness bound, not a speed one.
PATIENCE_S = 30.0


def parent(monkeypatch: pytest.MonkeyPatch, spell_s: float, writable: bool = True) -> tuple[ConsoleProcess, list[Any]]:
    monkeypatch.setattr("local.console_process.NOTIFY_SPELL_S", spell_s)
    console = ConsoleProcess(Path("unused"), 0)
    written: list[Any] = []

    def send(message: dict[str, Any]) -> bool:
        written.append(message)
        return writable

    monkeypatch.setattr(console, "_send", send)
    return console, written


def test_a_channel_is_written_once_a_spell(monkeypatch: pytest.MonkeyPatch) -> None:
    console, written = parent(monkeypatch, spell_s=3600)
    for _ in range(100):
        console.notify("ipn")
    console.notify("nepting-payments")
    assert written == [{"notify": "ipn"}, {"notify": "nepting-payments"}]


def test_a_notification_after_the_spell_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    console, written = parent(monkeypatch, spell_s=0.01)
    console.notify("ipn")
    time.sleep(0.05)
    console.notify("ipn")
    assert written == [{"notify": "ipn"}, {"notify": "ipn"}]


def test_a_line_the_pipe_had_no_room_for_starts_no_spell(monkeypatch: pytest.MonkeyPatch) -> None:
    console, written = parent(monkeypatch, spell_s=3600, writable=False)
    console.notify("ipn")
    console.notify("ipn")
    assert len(written) == 2 and console.dropped_notifies == 2


class Notified:
    def __init__(self) -> None:
        self.channels: list[str] = []
        self.changed = threading.Condition()

    def __call__(self, channel: str) -> None:
        with self.changed:
            self.channels.append(channel)
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.channels) >= count, PATIENCE_S), self.channels
            return list(self.channels)


def reading(spell_s: float) -> tuple[int, Notified, list[bool]]:
    """A child's reader on a pipe of its own: the write end, what it notified, how it ended."""
    read_end, write_end = os.pipe()
    notified, ended = Notified(), []

    def run() -> None:
        try:
            ended.append(read_parent(read_end, notified, spell_s))
        finally:
            os.close(read_end)

    threading.Thread(target=run, daemon=True).start()
    return write_end, notified, ended


def line(message: dict[str, Any]) -> bytes:
    return (json.dumps(message) + "\n").encode()


def test_the_child_notifies_a_channel_at_once_and_again_when_the_parents_spell_ends() -> None:
    write_end, notified, ended = reading(spell_s=0.05)
    try:
        os.write(write_end, line({"notify": "ipn"}))
        assert notified.wait_for(2) == ["ipn", "ipn"]
        time.sleep(0.2)  # nothing more came: nothing more to notify
        assert notified.channels == ["ipn", "ipn"]
        os.write(write_end, line({"stop": True}))
    finally:
        os.close(write_end)
    deadline = time.monotonic() + PATIENCE_S
    while not ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended == [True]


def test_lines_split_across_reads_and_lines_that_are_not_messages_are_read_as_the_parent_meant() -> None:
    write_end, notified, ended = reading(spell_s=3600)
    try:
        os.write(write_end, b'not json\n[1]\n{"noti')
        os.write(write_end, b'fy": "ipn"}\n{"notify": "nepting-payments"}\n')
        assert notified.wait_for(2) == ["ipn", "nepting-payments"]
    finally:
        os.close(write_end)  # the parent is gone: no stop
    deadline = time.monotonic() + PATIENCE_S
    while not ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended == [False]

"""The Console side's pollers in a process of their own (``local/console_process.py``), as the local
stack runs them on the embedded store: they handle what this process writes, a crash is seen from
the parent's side, a start that fails says so, and no process is left behind when its parent dies."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.adapters.sqlite.store import SqliteStore
from chalicelib.payments.domain import Terminal
from local.console_process import ConsoleProcess, ConsoleProcessError, start_console_process
from tests.conftest import PASSPHRASE, TERMINAL_ID
from tests.contract.builders import head_and_dispatch
from tests.integration.test_broker_process import eventually, process_gone

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore.open(tmp_path / "data")
    opened.terminals.put(Terminal(TERMINAL_ID, "M1", PASSPHRASE, online=True))
    yield opened
    opened.close()


def attach(store: SqliteStore, module: str = "local.console_process") -> ConsoleProcess:
    console = start_console_process(store.db.path.parent, logging.ERROR, module)
    store.db.on_notify = console.notify
    return console


def test_the_console_side_records_what_this_process_writes_from_a_process_of_its_own(store: SqliteStore) -> None:
    console = attach(store)
    try:
        assert console.pollers == ["stream:nepting-payments", "sqs:ipn", "sqs:merchant-notifications"]
        assert console.pid != 0 and not process_gone(console.pid)
        head, dispatch = head_and_dispatch("r-1", order_id="O-7")
        store.payments.start_attempt(head, dispatch, None)  # the order head's stream record, notified
        details = eventually(lambda: store.order_details.get("M1", "O-7"), "order details recorded by the child")
        assert (details.order_id, details.attempt, details.terminal_id) == ("O-7", 1, TERMINAL_ID)
        assert console.crash is None
    finally:
        console.stop()
    assert process_gone(console.pid)


def test_a_burst_of_writes_notified_as_one_is_all_recorded_by_the_child(store: SqliteStore) -> None:
    console = attach(store)
    try:
        for index in range(20):
            store.payments.start_attempt(*head_and_dispatch(f"r-burst-{index}", order_id=f"O-burst-{index}"), None)
        eventually(
            lambda: all(store.order_details.get("M1", f"O-burst-{index}") for index in range(20)),
            "every order's details recorded by the child",
        )
        assert console.crash is None and console.dropped_notifies == 0
    finally:
        console.stop()


def test_a_crashed_poller_in_the_child_is_reported_to_the_parent(store: SqliteStore) -> None:
    console = attach(store, "tests.integration.console_that_breaks")
    try:
        head, dispatch = head_and_dispatch("r-2", order_id="O-8")
        store.payments.start_attempt(head, dispatch, None)
        crash = eventually(lambda: console.crash, "the child's crash report")
        assert "poller stream:nepting-payments crashed" in crash
        assert "order notification handler broken on purpose" in crash
    finally:
        console.stop()


def test_a_child_that_cannot_start_is_reported_with_how_it_ended(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(ConsoleProcessError, match=r"did not start.*exit code 1"):
        start_console_process(not_a_directory, logging.ERROR)


def test_a_child_that_dies_is_reported_as_a_crash(store: SqliteStore) -> None:
    console = attach(store)
    try:
        subprocess.run(["kill", "-9", str(console.pid)], check=True)
        crash = eventually(lambda: console.crash, "the parent noticing")
        assert "ended unexpectedly (killed by SIGKILL)" in crash
        store.payments.start_attempt(*head_and_dispatch("r-3", order_id="O-9"), None)  # notifying a dead child
    finally:
        console.stop()


ORPHAN_PARENT = """
import logging, sys, time
from pathlib import Path
from local.console_process import start_console_process
console = start_console_process(Path(sys.argv[1]), logging.ERROR)
print(console.pid, flush=True)
time.sleep(600)
"""


def test_the_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_PARENT, str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert not process_gone(pid)
    finally:
        parent.kill()
        parent.wait()
    eventually(lambda: process_gone(pid), f"Console side's process {pid} gone")


def test_notifying_a_child_that_stopped_reading_never_blocks_the_writer(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every notification a line of its own, as many as the writer makes, to fill the pipe.
    monkeypatch.setattr("local.console_process.NOTIFY_SPELL_S", 0.0)
    console = attach(store)
    try:
        os.kill(console.pid, signal.SIGSTOP)
        done = threading.Event()

        def flood() -> None:
            for _ in range(20_000):  # far more than a pipe holds
                console.notify("ipn")
            done.set()

        writer = threading.Thread(target=flood, daemon=True)
        writer.start()
        # A liveness bound, not a speed one: a blocking write would never return at all.
        assert done.wait(60), "notify blocked on a full pipe"
        assert console.dropped_notifies > 0
        os.kill(console.pid, signal.SIGCONT)
        head, dispatch = head_and_dispatch("r-4", order_id="O-10")
        store.payments.start_attempt(head, dispatch, None)
        eventually(lambda: store.order_details.get("M1", "O-10"), "the child catching up once it runs again")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(console.pid, signal.SIGCONT)
        console.stop()
    assert process_gone(console.pid) and console.crash is None

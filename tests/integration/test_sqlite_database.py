"""The SQLite database file under the embedded store: single-statement writes, the checkpoints, and
writers of several processes taking turns."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.adapters.sqlite import db as db_module
from chalicelib.adapters.sqlite.db import Database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.in_directory(tmp_path)
    with database.write() as conn:
        conn.execute("INSERT INTO limits (key, n) VALUES ('a', 1), ('b', 2), ('c', 3)")
    yield database
    database.close()


def other_process_writes(path: Path) -> None:
    """What an admin command does from its own process: a write that does not wait for a lock."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE limits SET n = n + 100 WHERE key = 'a'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_write_one_commits_on_its_own_and_returns_the_rows_it_changed(db: Database) -> None:
    assert db.write_one("UPDATE limits SET n = n + 1 WHERE n >= ?", (2,)) == 2
    assert db.write_one("UPDATE limits SET n = 0 WHERE key = ?", ("missing",)) == 0
    other_process_writes(db.path)  # nothing is left holding SQLite's write lock
    with db.connection() as conn:
        rows = conn.execute("SELECT key, n FROM limits ORDER BY key").fetchall()
    assert [tuple(row) for row in rows] == [("a", 101), ("b", 3), ("c", 4)]


def test_write_returning_reads_every_row_so_the_statement_commits_before_the_lock_is_let_go(db: Database) -> None:
    rows = db.write_returning("UPDATE limits SET n = n * 10 RETURNING key, n")
    assert sorted(tuple(row) for row in rows) == [("a", 10), ("b", 20), ("c", 30)]
    # A statement stopped after its first row would still hold the write lock: this would fail with
    # "database is locked" at once (no busy wait).
    other_process_writes(db.path)


def test_a_failing_single_statement_changes_nothing_and_leaves_the_store_writable(db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        db.write_one("INSERT INTO limits (key, n) VALUES ('d', 1), ('a', 1)")
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM limits").fetchone()[0] == 3
    assert db.write_one("INSERT INTO limits (key, n) VALUES ('d', 1)") == 1


def test_checkpoints_run_every_so_many_commits_outside_the_write_lock(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "CHECKPOINT_EVERY_COMMITS", 5)
    held_during_checkpoint: list[bool] = []
    checkpoint = Database._checkpoint

    def spy(self: Database, conn: sqlite3.Connection) -> None:
        held_during_checkpoint.append(self._write_lock.locked())
        checkpoint(self, conn)

    monkeypatch.setattr(Database, "_checkpoint", spy)
    before = db.checkpoints
    for index in range(12):
        if index % 3 == 0:
            with db.write() as conn:
                conn.execute("UPDATE limits SET n = n + 1 WHERE key = 'a'")
        elif index % 3 == 1:
            db.write_one("UPDATE limits SET n = n + 1 WHERE key = 'b'")
        else:
            db.write_returning("UPDATE limits SET n = n + 1 WHERE key = 'c' RETURNING n")
    # 1 commit in the fixture + 12 here: the marks at 5 and 10.
    assert held_during_checkpoint == [False, False]
    assert db.checkpoints == before + 2


def in_the_database_file_alone(path: Path, key: str) -> int | None:
    """The row as the database file holds it, the log not read (what a checkpoint has copied)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        row = conn.execute("SELECT n FROM limits WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError as exc:  # not even the schema has been copied yet
        assert "no such table" in str(exc)
        return None
    finally:
        conn.close()
    return None if row is None else int(row[0])


def test_a_checkpoint_copies_the_log_into_the_database_file(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    db.write_one("UPDATE limits SET n = 7 WHERE key = 'a'")
    assert in_the_database_file_alone(db.path, "a") is None  # only in the log so far
    monkeypatch.setattr(db_module, "CHECKPOINT_EVERY_COMMITS", 1)
    db.write_one("UPDATE limits SET n = 8 WHERE key = 'b'")
    assert in_the_database_file_alone(db.path, "a") == 7
    assert in_the_database_file_alone(db.path, "b") == 8


def test_without_our_checkpoints_sqlite_leaves_the_log_alone(db: Database) -> None:
    # Our connections turn SQLite's automatic checkpoint off; else it would run inside a commit,
    # under the write lock.
    with db.connection() as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0


def test_one_checkpoint_at_a_time_the_next_mark_takes_what_is_left(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = threading.Event()
    release = threading.Event()
    calls: list[str] = []
    real = sqlite3.Connection

    class SlowCheckpoint:
        def __init__(self, conn: real) -> None:
            self.conn = conn

        def execute(self, statement: str, *args: object) -> sqlite3.Cursor:
            if statement.startswith("PRAGMA wal_checkpoint"):
                calls.append(threading.current_thread().name)
                entered.set()
                release.wait(10)
            return self.conn.execute(statement, *args)

    def checkpoint_in(name: str) -> threading.Thread:
        with db.connection() as conn:
            thread = threading.Thread(target=db._checkpoint, args=(SlowCheckpoint(conn),), name=name)
            thread.start()
            entered.wait(10)
            return thread

    first = checkpoint_in("first")
    with db.connection() as conn:
        db._checkpoint(SlowCheckpoint(conn))  # type: ignore[arg-type]  # returns at once: one is running
    release.set()
    first.join(10)
    assert calls == ["first"]
    assert db.checkpoints == 1


def test_a_failed_checkpoint_is_logged_and_the_write_before_it_stands(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(db_module, "CHECKPOINT_EVERY_COMMITS", 1)

    class Refusing:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, statement: str, *args: object) -> sqlite3.Cursor:
            if statement.startswith("PRAGMA wal_checkpoint"):
                raise sqlite3.OperationalError("database is locked")
            return self.conn.execute(statement, *args)

    checkpoint = Database._checkpoint
    monkeypatch.setattr(Database, "_checkpoint", lambda self, conn: checkpoint(self, Refusing(conn)))  # type: ignore[arg-type]
    assert db.write_one("UPDATE limits SET n = 9 WHERE key = 'b'") == 1
    assert "sqlite_checkpoint_failed" in caplog.text
    with db.connection() as conn:
        assert conn.execute("SELECT n FROM limits WHERE key = 'b'").fetchone()[0] == 9


def test_each_notify_is_relayed_to_the_hook_after_this_processs_own_pollers_are_woken(db: Database) -> None:
    relayed: list[tuple[str, int]] = []
    db.on_notify = lambda channel: relayed.append((channel, db.generation("ipn")))
    before = db.generation("ipn")
    db.notify("ipn")
    db.notify()
    # Each relay comes after the generation moved: a poller here never waits on what was relayed.
    assert relayed == [("ipn", before + 1), ("", before + 2)]


HOLDER = """
import sys
from chalicelib.adapters.sqlite.db import Database
db = Database(sys.argv[1])
with db.write() as conn:
    conn.execute("UPDATE limits SET n = n + 1000 WHERE key = 'a'")
    print("holding", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def hold_the_write_lock_in_another_process(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    return holder


def test_a_writer_waits_for_another_process_writing_the_same_file_then_writes(db: Database) -> None:
    holder = hold_the_write_lock_in_another_process(db.path)
    done: list[int] = []
    writer = threading.Thread(target=lambda: done.append(db.write_one("UPDATE limits SET n = n * 2 WHERE key = 'a'")))
    writer.start()
    writer.join(0.3)
    assert writer.is_alive() and not done  # waiting on the other process, not failing, not writing past it
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    writer.join(10)
    assert done == [1]
    assert holder.wait(10) == 0
    with db.connection() as conn:
        # The other process's write first, then ours on top of it.
        assert conn.execute("SELECT n FROM limits WHERE key = 'a'").fetchone()[0] == (1 + 1000) * 2


def test_a_process_holding_the_write_lock_past_the_busy_timeout_fails_the_write_and_changes_nothing(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)
    holder = hold_the_write_lock_in_another_process(db.path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            db.write_one("UPDATE limits SET n = 0")
        with pytest.raises(sqlite3.OperationalError, match="database is locked"), db.write() as conn:
            conn.execute("UPDATE limits SET n = 0")
        # The lock of this process's threads was let go with the failure.
        assert not db._write_lock.locked()
    finally:
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(10) == 0
    db.write_one("UPDATE limits SET n = n + 1 WHERE key = 'b'")
    with db.connection() as conn:
        rows = conn.execute("SELECT key, n FROM limits ORDER BY key").fetchall()
    assert [tuple(row) for row in rows] == [("a", 1001), ("b", 3), ("c", 3)]

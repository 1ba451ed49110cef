"""One SQLite database file per data directory: the schema, the connections, and how writes happen.

- WAL journal: readers never wait for a writer, and a committed write survives ``kill -9``.
- ``synchronous=NORMAL``: a commit is durable against the process dying at any point; only a power
  cut or an OS crash may lose the last commits. Right for a sandbox, not for money of record.
- Connections come from a small pool; every conditional write runs inside ``write()``, which
  serializes this process's writers on a lock (no busy-waiting between our own threads) and takes
  SQLite's write lock with ``BEGIN IMMEDIATE``, so the read that checks a condition and the write
  that depends on it are one atomic step, across processes too (the admin commands).
- Between processes on the same file (the stack, its Console side, an admin command), writers also
  take turns on an ``flock`` of a file beside the database (``…sqlite3-writer``): a writer that
  finds another process writing tries again after 50 µs, doubling up to 1 ms, for at most the busy
  timeout. SQLite's own lock would do for correctness, but a writer that finds it taken retries
  after 1, 2, 5, 10, 15… ms, and every writer of its process waits behind it meanwhile.
- A write that is one statement (its condition in its ``WHERE``) is atomic on its own: ``write_one``
  and ``write_returning`` run it under the same lock without ``BEGIN``/``COMMIT``, a third of the
  statements. Each statement lets go of the interpreter while SQLite works; under load, getting it
  back is what a thread holding the write lock waits for, so fewer statements inside the lock
  shorten every other writer's wait.
- Checkpoints (copying the log back into the database file, with an fsync) run every
  ``CHECKPOINT_EVERY_COMMITS`` commits *after* the write lock is released, by the thread whose commit
  crossed the mark, and never two at once. SQLite's own automatic checkpoint runs inside the commit
  that crosses 1,000 pages, a few milliseconds during which every other writer waited.

    db = Database(Path(".data") / "nepting.sqlite3")
    with db.write() as conn:
        conn.execute("UPDATE ...")
    changed = db.write_one("DELETE FROM messages WHERE receipt = ?", (receipt,))
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FILE_NAME = "nepting.sqlite3"
# Another process (an admin command) may hold the write lock for a moment.
BUSY_TIMEOUT_MS = 10_000
# A writer that finds another process writing tries again after this, doubling up to the last.
_FIRST_RETRY_S = 0.00005
_LAST_RETRY_S = 0.001
_IDLE_CONNECTIONS = 64
# About 1,000 pages of log at a few pages a commit: SQLite's own automatic checkpoint mark.
CHECKPOINT_EVERY_COMMITS = 250

SCHEMA = """
CREATE TABLE IF NOT EXISTS merchants (
    merchant_id TEXT PRIMARY KEY,
    notify_url TEXT,
    notify_passphrase TEXT NOT NULL,
    basket_policy TEXT NOT NULL DEFAULT 'lenient'
);
CREATE TABLE IF NOT EXISTS limits (
    key TEXT PRIMARY KEY,
    n INTEGER NOT NULL DEFAULT 0,
    touched_ms INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS logins (
    login TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    password_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS terminals (
    terminal_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    passphrase TEXT,
    online INTEGER NOT NULL DEFAULT 0,
    last_seen_at TEXT,
    status_at_ms INTEGER NOT NULL DEFAULT 0,
    presence_session TEXT,
    busy_request_id TEXT,
    busy_until_ms INTEGER NOT NULL DEFAULT 0,
    busy_order TEXT
);
CREATE INDEX IF NOT EXISTS terminals_by_merchant ON terminals (merchant_id, terminal_id);
CREATE TABLE IF NOT EXISTS order_heads (
    merchant_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    payload_hash TEXT NOT NULL,
    request_json TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, order_id)
);
CREATE INDEX IF NOT EXISTS order_heads_by_merchant_updated ON order_heads (merchant_id, updated_at_ms, order_id);
CREATE TABLE IF NOT EXISTS dispatches (
    request_id TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    terminal_id TEXT NOT NULL,
    transaction_type TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    ack_deadline_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    acked_at_ms INTEGER,
    finished_at_ms INTEGER,
    reason TEXT,
    result_json TEXT,
    late INTEGER NOT NULL DEFAULT 0,
    result_at_ms INTEGER,
    cancel_requested_at_ms INTEGER,
    version INTEGER NOT NULL DEFAULT 0,
    extra_json TEXT NOT NULL DEFAULT '{}',
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    transaction_reference TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    merchant_order TEXT NOT NULL,
    created_at TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    terminal_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    body_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_by_merchant_created
    ON transactions (merchant_id, created_at, transaction_reference);
CREATE INDEX IF NOT EXISTS transactions_by_merchant_order
    ON transactions (merchant_order, created_at, transaction_reference);
CREATE TABLE IF NOT EXISTS order_details (
    merchant_order TEXT PRIMARY KEY,
    attempt INTEGER NOT NULL,
    body_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ipn_inbox (
    transaction_reference TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    body_json TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    merged_at_ms INTEGER
);
-- What DynamoDB Streams carries on AWS: one row per change, read in order by a local poller.
CREATE TABLE IF NOT EXISTS outbox (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    event_name TEXT NOT NULL,
    image_json TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_positions (
    stream TEXT PRIMARY KEY,
    sequence INTEGER NOT NULL
);
-- What SQS holds on AWS: messages, invisible while received, back after their visibility timeout.
CREATE TABLE IF NOT EXISTS messages (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, visible_at_ms, sequence);
"""


class Database:
    """The store's file, its connection pool, and a wake-up for the pollers when something is queued."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = _WriteLock(self.path.with_name(self.path.name + "-writer"))
        self._commits = 0
        self._checkpointing = threading.Lock()
        self.checkpoints = 0
        # Per queue or stream: a poller is woken only by what it reads.
        self._activity = threading.Condition()
        self._generations: dict[str, int] = {}
        # Called with each ``notify`` channel: the local stack relays them to the process whose
        # pollers read those queues and streams (local/console_process.py).
        self.on_notify: Callable[[str], None] | None = None
        with self.connection() as conn:
            # WAL is a property of the file: set once, kept by every later connection.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)

    @classmethod
    def in_directory(cls, data_dir: Path | str) -> Database:
        return cls(Path(data_dir) / FILE_NAME)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; ``write()`` opens its own.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints are ours (``_checkpoint``), outside the write lock.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.row_factory = sqlite3.Row
        return conn

    def connection(self) -> _Borrowed:
        """A connection for reads (each statement sees the latest commit), as a ``with`` block."""
        return _Borrowed(self)

    def _take(self) -> sqlite3.Connection:
        with self._pool_lock:
            conn = self._idle.pop() if self._idle else None
        return self._connect() if conn is None else conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # an exception escaped mid-transaction
            conn.rollback()
        with self._pool_lock:
            if len(self._idle) < _IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def read_one(self, statement: str, parameters: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of one read statement, or None."""
        conn = self._take()
        try:
            row: sqlite3.Row | None = conn.execute(statement, parameters).fetchone()
        finally:
            self._give_back(conn)
        return row

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One atomic read-check-write: committed when the block ends, rolled back if it raises."""
        with self.connection() as conn:
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                due = self._count_commit()
            if due:
                self._checkpoint(conn)

    def write_one(self, statement: str, parameters: Sequence[Any] = ()) -> int:
        """One write statement, atomic on its own (no ``BEGIN``/``COMMIT``); the rows it changed."""
        return int(self._single_statement(statement, parameters, lambda cursor: cursor.rowcount))

    def write_returning(self, statement: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One write statement with ``RETURNING``: every row is read before the lock is let go, since
        SQLite commits a statement's own transaction only once it has run to its end."""
        rows: list[sqlite3.Row] = self._single_statement(statement, parameters, sqlite3.Cursor.fetchall)
        return rows

    def _single_statement(
        self, statement: str, parameters: Sequence[Any], outcome: Callable[[sqlite3.Cursor], Any]
    ) -> Any:
        """Run one write statement under the write lock and take its ``outcome`` there."""
        conn = self._take()
        try:
            with self._write_lock:
                result = outcome(conn.execute(statement, parameters))
                due = self._count_commit()
            if due:
                self._checkpoint(conn)
        finally:
            self._give_back(conn)
        return result

    def _count_commit(self) -> bool:
        # Under the write lock: one count per commit, so exactly one thread crosses each mark.
        self._commits += 1
        return self._commits % CHECKPOINT_EVERY_COMMITS == 0

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the log back into the database file, while writers go on (``PASSIVE`` waits for nobody)."""
        if not self._checkpointing.acquire(blocking=False):
            return  # the previous one is still running; the next mark takes what is left
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as exc:
            # The write before it is committed; an admin command's process may be checkpointing
            # too. The log only grows until the next mark.
            log.warning("sqlite_checkpoint_failed", extra={"error": repr(exc)})
        finally:
            self._checkpointing.release()

    def notify(self, channel: str = "") -> None:
        """Something was queued on ``channel`` (a queue or stream name; "" wakes every poller)."""
        with self._activity:
            if channel:
                self._generations[channel] = self._generations.get(channel, 0) + 1
            else:
                for name in list(self._generations):
                    self._generations[name] += 1
            self._activity.notify_all()
        relay = self.on_notify
        if relay is not None:
            relay(channel)

    def wait_for_activity(self, channel: str, seen: int, timeout_s: float) -> int:
        """Wait until ``notify(channel)`` was called after generation ``seen`` (or the timeout); the
        channel's generation then."""
        with self._activity:
            self._activity.wait_for(lambda: self._generations.get(channel, 0) != seen, timeout_s)
            return self._generations.get(channel, 0)

    def generation(self, channel: str) -> int:
        with self._activity:
            return self._generations.setdefault(channel, 0)

    def close(self) -> None:
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _WriteLock:
    """Writers one at a time: this process's threads on a lock, then the processes writing the same
    file on an ``flock`` (where there is none, SQLite's own lock and busy timeout still order them).

    A thread lock first: ``flock`` belongs to the open file, not the thread, so two threads of one
    process would both get it. A process that holds the ``flock`` longer than the busy timeout (one
    stopped mid-write) fails the write with SQLite's own ``database is locked``, as before."""

    __slots__ = ("__weakref__", "_fd", "_threads")

    def __init__(self, path: Path) -> None:
        self._threads = threading.Lock()
        self._fd: int | None = None
        if fcntl is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            self._fd = fd
            weakref.finalize(self, os.close, fd)

    def locked(self) -> bool:
        return self._threads.locked()

    def __enter__(self) -> None:
        self._threads.acquire()
        if self._fd is not None:
            try:
                self._lock_file(self._fd)
            except BaseException:
                self._threads.release()
                raise

    @staticmethod
    def _lock_file(fd: int) -> None:
        deadline: float | None = None  # set at the first refusal: the usual write never reads the clock
        pause = _FIRST_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + BUSY_TIMEOUT_MS / 1000
                elif now >= deadline:
                    raise sqlite3.OperationalError("database is locked") from None
            time.sleep(pause)
            pause = min(pause * 2, _LAST_RETRY_S)

    def __exit__(self, *_exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class _Borrowed:
    """``Database.connection()``: a pooled connection for one ``with`` block, given back when it ends
    (rolled back first if an exception left it mid-transaction). A class, not a generator-based
    context manager: the store borrows a connection for nearly every statement."""

    __slots__ = ("_conn", "_db")
    _conn: sqlite3.Connection

    def __init__(self, db: Database) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._conn = self._db._take()
        return self._conn

    def __exit__(self, *exc_info: object) -> None:
        self._db._give_back(self._conn)

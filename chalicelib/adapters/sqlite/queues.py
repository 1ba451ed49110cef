"""Queues and the outbox: what SQS and DynamoDB Streams do on AWS, as tables the local pollers read.

A queue message is invisible from its receipt until its visibility timeout ends, then comes back
(``receive_count`` + 1); past ``max_receives`` receipts it moves to its dead-letter queue instead of
coming back, as an SQS redrive policy does. A delayed send is invisible until its delay ends.

The outbox is append-only, one row per change, in commit order; a reader keeps its position in
``stream_positions`` so a restarted stack resumes after the last record its handler finished.

    queue = SqliteQueue(db, "ipn")
    queue.send({"transaction_reference": "T1"})
    [message] = queue.receive(10, visibility_s=30)
    queue.delete(message.receipt)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from chalicelib import jsonutil
from chalicelib.adapters.sqlite.db import Database
from chalicelib.adapters.sqlite.rows import flat_json
from chalicelib.ports import Clock, SystemClock

# The same cap as SQS's DelaySeconds: a longer wait is several hops.
MAX_DELAY_S = 900

# Far below SQLite's limit on a statement's parameters (32,766); a batch is 10 (SQS's own limit).
_RECEIPTS_PER_STATEMENT = 500
_NEVER = 2**62
# Receiving the messages read (by key: the unary + keeps SQLite from walking the queue's index over
# every visible message instead): each becomes invisible until its visibility timeout, is counted and
# gets a receipt (this receive's random prefix and its sequence), or, received ``park_at`` times
# already, moves to the dead-letter queue, visible at once there. Every SET sees the row as it was.
_RECEIVE = """
UPDATE messages SET
    queue = CASE WHEN receive_count >= ?5 THEN ?1 ELSE queue END,
    visible_at_ms = CASE WHEN receive_count >= ?5 THEN ?2 ELSE ?3 END,
    receipt = CASE WHEN receive_count >= ?5 THEN NULL ELSE ?4 || sequence END,
    receive_count = CASE WHEN receive_count >= ?5 THEN 0 ELSE receive_count + 1 END
WHERE +queue = ?6 AND +visible_at_ms <= ?7 AND sequence IN ({marks})
RETURNING sequence, message_id, body, sent_at_ms, receive_count, receipt
"""


def _sequence_of(receipt: str) -> int | None:
    """The sequence a receipt of ``receive`` ends with (after its 32 random hex digits); None for
    any other text."""
    digits = receipt[32:]
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) < 19 else None


@dataclass(frozen=True)
class Message:
    message_id: str
    receipt: str
    body: str
    sent_at_ms: int
    receive_count: int


class SqliteQueue:
    """One named queue; ``dead_letter`` (with ``max_receives``) is where a message goes after too many receipts."""

    def __init__(
        self,
        db: Database,
        name: str,
        dead_letter: str | None = None,
        max_receives: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self.db = db
        self.name = name
        self.dead_letter = dead_letter
        self.max_receives = max_receives
        self.clock = clock or SystemClock()

    def send(self, body: dict[str, Any], delay_s: int = 0) -> None:
        self.send_raw(flat_json(body) or jsonutil.dumps(body), delay_s)

    def send_raw(self, text: str, delay_s: int = 0) -> None:
        now = self.clock.now_ms()
        self.db.write_one(
            "INSERT INTO messages (message_id, queue, body, sent_at_ms, visible_at_ms) VALUES (?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), self.name, text, now, now + max(0, min(delay_s, MAX_DELAY_S)) * 1000),
        )
        self.db.notify(self.name)

    def receive(self, max_messages: int = 10, visibility_s: int = 30) -> list[Message]:
        """Up to ``max_messages`` visible messages, oldest first, each invisible for ``visibility_s``."""
        now = self.clock.now_ms()
        received: list[Message] = []
        # Past ``park_at`` receipts a message moves to its dead-letter queue instead of coming back.
        park_at = self.max_receives if self.dead_letter and self.max_receives else _NEVER
        parked = True
        while parked and len(received) < max_messages:
            # A read (no lock: an empty queue costs nothing more), then one conditional write of the
            # rows read, in place of a transaction with an update per message. The write's own
            # WHERE leaves out a message another receiver took meanwhile: it is no longer visible.
            with self.db.connection() as conn:
                picked = [
                    row[0]
                    for row in conn.execute(
                        "SELECT sequence FROM messages WHERE queue = ? AND visible_at_ms <= ? "
                        "ORDER BY visible_at_ms, sequence LIMIT ?",
                        (self.name, now, max_messages - len(received)),
                    )
                ]
            if not picked:
                break
            rows = self.db.write_returning(
                _RECEIVE.format(marks=", ".join("?" * len(picked))),
                [self.dead_letter, now, now + visibility_s * 1000, uuid.uuid4().hex, park_at, self.name, now, *picked],
            )
            parked = any(row["receipt"] is None for row in rows)
            by_sequence = {row["sequence"]: row for row in rows if row["receipt"] is not None}
            received += [
                Message(row["message_id"], row["receipt"], row["body"], row["sent_at_ms"], row["receive_count"])
                for row in (by_sequence.get(sequence) for sequence in picked)  # in the order read
                if row is not None
            ]
        return received

    def delete(self, receipt: str) -> bool:
        """Done with a message; False when the receipt is stale (it was received again meanwhile)."""
        return self.db.write_one("DELETE FROM messages WHERE receipt = ?", (receipt,)) == 1

    def retry_later(self, receipt: str, after_s: int) -> bool:
        """Make a received message visible again after ``after_s`` (what a failed Lambda batch item waits for)."""
        changed = self.db.write_one(
            "UPDATE messages SET visible_at_ms = ? WHERE receipt = ?", (self.clock.now_ms() + after_s * 1000, receipt)
        )
        return changed == 1

    def settle(self, done: list[str], failed: list[str], retry_after_s: int) -> int:
        """A handled batch in one transaction (as SQS's ``DeleteMessageBatch`` and
        ``ChangeMessageVisibilityBatch``): ``done`` receipts deleted, ``failed`` ones visible again
        after ``retry_after_s``. Stale receipts change nothing; the number of messages changed."""
        if not failed and 0 < len(done) <= _RECEIPTS_PER_STATEMENT:
            # The usual batch, every message handled: one statement, atomic on its own. Receipts have
            # no index; those ``receive`` gives name their message's sequence, which finds the rows by
            # key instead of reading every message.
            marks = ", ".join("?" * len(done))
            sequences = [_sequence_of(receipt) for receipt in done]
            if None not in sequences:
                return self.db.write_one(
                    f"DELETE FROM messages WHERE sequence IN ({marks}) AND receipt IN ({marks})",  # noqa: S608
                    [*sequences, *done],
                )
            return self.db.write_one(f"DELETE FROM messages WHERE receipt IN ({marks})", done)  # noqa: S608
        visible_at = self.clock.now_ms() + retry_after_s * 1000
        changed = 0
        with self.db.write() as conn:
            for receipt in done:
                changed += conn.execute("DELETE FROM messages WHERE receipt = ?", (receipt,)).rowcount
            for receipt in failed:
                changed += conn.execute(
                    "UPDATE messages SET visible_at_ms = ? WHERE receipt = ?", (visible_at, receipt)
                ).rowcount
        return changed

    def depth(self) -> int:
        """Messages on the queue, visible or not."""
        with self.db.connection() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (self.name,)).fetchone()[0])


@dataclass(frozen=True)
class StreamRecord:
    sequence: int
    event_name: str
    image: dict[str, Any]
    created_at_ms: int


class Outbox:
    """One stream of the outbox, read in order from the reader's saved position."""

    def __init__(self, db: Database, stream: str) -> None:
        self.db = db
        self.stream = stream

    def position(self) -> int:
        with self.db.connection() as conn:
            row = conn.execute("SELECT sequence FROM stream_positions WHERE stream = ?", (self.stream,)).fetchone()
        return int(row["sequence"]) if row else 0

    def read(self, after: int, limit: int = 100) -> list[StreamRecord]:
        with self.db.connection() as conn:
            rows = conn.execute(
                "SELECT sequence, event_name, image_json, created_at_ms FROM outbox "
                "WHERE stream = ? AND sequence > ? ORDER BY sequence LIMIT ?",
                (self.stream, after, limit),
            ).fetchall()
        return [
            StreamRecord(row["sequence"], row["event_name"], jsonutil.loads(row["image_json"]), row["created_at_ms"])
            for row in rows
        ]

    def advance(self, sequence: int) -> None:
        """Every record up to ``sequence`` was handled: a restart resumes after it, and they are dropped."""
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO stream_positions (stream, sequence) VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)",
                (self.stream, sequence),
            )
            conn.execute("DELETE FROM outbox WHERE stream = ? AND sequence <= ?", (self.stream, sequence))

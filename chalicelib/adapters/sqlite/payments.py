"""SQLite repositories of the payment side: terminals, order heads and dispatches.

The same conditions as ``adapters/dynamodb/payments.py``, carried by SQLite: a single conditional
``UPDATE … WHERE`` where one row decides (claim, release, presence, transition), and one
``BEGIN IMMEDIATE`` transaction where several rows move together (an attempt's head, its dispatch
and the stream record the Console side reads).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from typing import Any

from chalicelib import jsonutil
from chalicelib.adapters.records import as_record
from chalicelib.adapters.sqlite.db import Database
from chalicelib.exceptions import ConditionFailed
from chalicelib.keys import order_key
from chalicelib.payments.ports import Dispatch, DispatchState, OrderHead, OrderPosition, Terminal, Transition

# The stream the order-notification poller reads (the payments table's stream on AWS).
PAYMENTS_STREAM = "payments"

# A dispatch moves a handful of times in its life; past this many lost races in a row, something is wrong.
_MAX_APPLY_RACES = 16

_TERMINAL_COLUMNS = (
    "terminal_id",
    "merchant_id",
    "passphrase",
    "online",
    "last_seen_at",
    "status_at_ms",
    "presence_session",
    "busy_request_id",
    "busy_until_ms",
    "busy_order",
)


# Rows are read column by column in this order (``_terminal`` pairs them by position, not by name).
_SELECT_TERMINALS = f"SELECT {', '.join(_TERMINAL_COLUMNS)} FROM terminals"  # noqa: S608
_GET_TERMINAL = f"{_SELECT_TERMINALS} WHERE terminal_id = ?"


def _terminal(row: sqlite3.Row) -> Terminal:
    values = dict(zip(_TERMINAL_COLUMNS, row, strict=True))
    values["online"] = bool(values["online"])
    return Terminal(**values)


class SqliteTerminalRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, terminal_id: str) -> Terminal | None:
        row = self.db.read_one(_GET_TERMINAL, (terminal_id,))
        return _terminal(row) if row else None

    def list_for_merchant(self, merchant_id: str) -> list[Terminal]:
        with self.db.connection() as conn:
            rows = conn.execute(
                f"{_SELECT_TERMINALS} WHERE merchant_id = ? ORDER BY terminal_id", (merchant_id,)
            ).fetchall()
        return [_terminal(row) for row in rows]

    def _insert(self, terminal: Terminal, verb: str) -> None:
        values = as_record(terminal)
        values["online"] = int(values["online"])
        columns = ", ".join(_TERMINAL_COLUMNS)
        marks = ", ".join("?" for _ in _TERMINAL_COLUMNS)
        self.db.write_one(f"{verb} INTO terminals ({columns}) VALUES ({marks})", [values[c] for c in _TERMINAL_COLUMNS])

    def put(self, terminal: Terminal) -> None:
        self._insert(terminal, "INSERT OR REPLACE")

    def create(self, terminal: Terminal) -> None:
        """Enroll; ConditionFailed if the terminal id is taken (by this merchant or another)."""
        try:
            self._insert(terminal, "INSERT")
        except sqlite3.IntegrityError as exc:
            raise ConditionFailed(f"terminal {terminal.terminal_id} is already enrolled") from exc

    def set_passphrase(self, terminal_id: str, merchant_id: str, passphrase: str | None) -> None:
        """Rotate (or remove, disabling the Cloud API service) the passphrase of the merchant's terminal."""
        if not self._update(
            "UPDATE terminals SET passphrase = ? WHERE terminal_id = ? AND merchant_id = ?",
            (passphrase or None, terminal_id, merchant_id),
        ):
            raise ConditionFailed(f"terminal {terminal_id} is not enrolled for {merchant_id}")

    def claim(self, terminal_id: str, request_id: str, now_ms: int, until_ms: int, order_key: str = "") -> bool:
        # An expired claim (its holder crashed or gave up) may be taken over.
        return self._update(
            "UPDATE terminals SET busy_request_id = ?, busy_until_ms = ?, busy_order = ? "
            "WHERE terminal_id = ? AND (busy_request_id IS NULL OR busy_until_ms <= ?)",
            (request_id, until_ms, order_key, terminal_id, now_ms),
        )

    def release(self, terminal_id: str, request_id: str) -> bool:
        return self._update(
            "UPDATE terminals SET busy_request_id = NULL, busy_until_ms = 0, busy_order = NULL "
            "WHERE terminal_id = ? AND busy_request_id = ?",
            (terminal_id, request_id),
        )

    def record_status(self, terminal_id: str, online: bool, sent_at_ms: int, seen_at: str) -> bool:
        # A terminal's own status counts only when strictly newer than the last presence fact:
        # a captured status replayed at the same instant changes nothing.
        return self._update(
            "UPDATE terminals SET online = ?, status_at_ms = ?, last_seen_at = ? "
            "WHERE terminal_id = ? AND status_at_ms < ?",
            (int(online), sent_at_ms, seen_at, terminal_id, sent_at_ms),
        )

    def record_presence(self, terminal_id: str, online: bool, at_ms: int, session: str, seen_at: str) -> bool:
        # Not older than the last fact; and a disconnect ends only the session recorded as current
        # (a taken-over connection's disconnect may carry a later timestamp than the new connect).
        # A connect may take over any session; a disconnect must name the current one (? = 1 for a connect).
        return self._update(
            "UPDATE terminals SET online = ?, status_at_ms = ?, last_seen_at = ?, presence_session = ? "
            "WHERE terminal_id = ? AND status_at_ms <= ? "
            "AND (? = 1 OR presence_session IS NULL OR presence_session = ?)",
            (int(online), at_ms, seen_at, session, terminal_id, at_ms, int(online), session),
        )

    def _update(self, statement: str, parameters: tuple[Any, ...]) -> bool:
        """One conditional statement: True when it changed the row."""
        return self.db.write_one(statement, parameters) == 1


_HEAD_COLUMNS = (
    "merchant_id",
    "order_id",
    "attempt",
    "request_id",
    "terminal_id",
    "payload_hash",
    "request_json",
    "created_at_ms",
    "updated_at_ms",
)
_DISPATCH_COLUMNS = (
    "request_id",
    "merchant_id",
    "order_id",
    "attempt",
    "terminal_id",
    "transaction_type",
    "amount",
    "currency",
    "state",
    "created_at_ms",
    "ack_deadline_ms",
    "deadline_ms",
    "acked_at_ms",
    "finished_at_ms",
    "reason",
    "result_json",
    "late",
    "result_at_ms",
    "cancel_requested_at_ms",
    "version",
    "extra_json",
)


def head_image(head: OrderHead, expires_at: int) -> dict[str, Any]:
    """The head as the payments table's stream shows it on AWS (``pk`` = ``ORDER#…``)."""
    return {"pk": f"ORDER#{order_key(head.merchant_id, head.order_id)}", **as_record(head), "expires_at": expires_at}


# Rows are read column by column in this order (``_dispatch`` pairs them by position, not by name).
_DISPATCH_LIST = ", ".join(_DISPATCH_COLUMNS)
_GET_DISPATCH = f"SELECT {_DISPATCH_LIST} FROM dispatches WHERE request_id = ?"  # noqa: S608
# What a dispatch holds in ``extra`` nearly always: no attribute, nothing to parse.
_NO_EXTRA = "{}"


def _dispatch(row: sqlite3.Row) -> Dispatch:
    # Paired by position with _DISPATCH_COLUMNS (the order every read selects them in), as _terminal.
    values = dict(zip(_DISPATCH_COLUMNS, row, strict=True))
    result_json = values.pop("result_json")
    extra_json = values.pop("extra_json")
    values["state"] = DispatchState(values["state"])
    values["late"] = bool(values["late"])
    return Dispatch(
        **values,
        result=jsonutil.loads(result_json) if result_json is not None else None,
        extra={} if extra_json == _NO_EXTRA else jsonutil.loads(extra_json),
    )


@functools.cache
def _transition_statement(stamp: str, reason: bool, result: bool, late: bool) -> str:
    """The conditional ``UPDATE`` of a transition; its values in the order of its ``?``: the state,
    the stamp, the reason if any, the result and its time if any, then the request id and the version."""
    sets = ["state = ?", "version = version + 1", f"{stamp} = ?"]
    if reason:
        sets.append("reason = ?")
    if result:
        sets += ["result_json = ?", "result_at_ms = ?"]
    if late:
        sets.append("late = 1")
    # Only fixed fragments are joined: the column names come from the domain's rules.
    return (
        f"UPDATE dispatches SET {', '.join(sets)} WHERE request_id = ? AND version = ? "  # noqa: S608
        f"RETURNING {_DISPATCH_LIST}"
    )


class SqlitePaymentRepository:
    def __init__(self, db: Database, retention_s: int) -> None:
        self.db = db
        self.retention_s = retention_s
        # The dispatch this thread read or wrote last: a handler reads a dispatch, then applies a
        # transition to it, and ``apply`` judges that copy first instead of reading it again. Its
        # version guards the write; a copy that turns out stale is read again (see ``apply``).
        self._last = threading.local()

    def get_head(self, merchant_id: str, order_id: str) -> OrderHead | None:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT * FROM order_heads WHERE merchant_id = ? AND order_id = ?", (merchant_id, order_id)
            ).fetchone()
        return OrderHead(**{name: row[name] for name in _HEAD_COLUMNS}) if row else None

    def get_dispatch(self, request_id: str) -> Dispatch | None:
        row = self.db.read_one(_GET_DISPATCH, (request_id,))
        found = self._last.dispatch = _dispatch(row) if row else None
        return found

    def _last_seen(self, request_id: str) -> Dispatch | None:
        last: Dispatch | None = getattr(self._last, "dispatch", None)
        return last if last is not None and last.request_id == request_id else None

    def list_heads(
        self, merchant_id: str, limit: int, after: OrderPosition | None = None, terminal_id: str | None = None
    ) -> tuple[list[OrderHead], OrderPosition | None]:
        """As DynamoDB's query on ``by-merchant-updated``: ``limit`` heads are read, latest first
        (ties by order id), then the terminal filter applies, so a page may be short and continue."""
        conditions: list[str] = ["merchant_id = ?"]
        values: list[str | int] = [merchant_id]
        if after is not None:
            conditions.append("(updated_at_ms, order_id) < (?, ?)")
            values += [after[0], after[1]]
        with self.db.connection() as conn:
            rows = conn.execute(
                # Only fixed fragments are joined; every value is a parameter.
                f"SELECT * FROM order_heads WHERE {' AND '.join(conditions)} "  # noqa: S608
                "ORDER BY updated_at_ms DESC, order_id DESC LIMIT ?",
                [*values, limit + 1],
            ).fetchall()
        read = [OrderHead(**{name: row[name] for name in _HEAD_COLUMNS}) for row in rows[:limit]]
        position = (read[-1].updated_at_ms, read[-1].order_id) if len(rows) > limit and read else None
        return [head for head in read if terminal_id is None or head.terminal_id == terminal_id], position

    def start_attempt(self, head: OrderHead, dispatch: Dispatch, previous_attempt: int | None) -> None:
        """The head, its dispatch and the stream record, all or nothing."""
        expires_at = head.updated_at_ms // 1000 + self.retention_s
        head_values = [getattr(head, name) for name in _HEAD_COLUMNS] + [expires_at]
        dispatch_values: dict[str, Any] = {
            **as_record(dispatch),
            "state": dispatch.state.value,
            "late": int(dispatch.late),
            "result_json": jsonutil.dumps(dispatch.result) if dispatch.result is not None else None,
            "extra_json": jsonutil.dumps(dispatch.extra),
        }
        lost = ConditionFailed(f"order {head.order_id} attempt {head.attempt} lost a race")
        with self.db.write() as conn:
            current = conn.execute(
                "SELECT attempt FROM order_heads WHERE merchant_id = ? AND order_id = ?",
                (head.merchant_id, head.order_id),
            ).fetchone()
            # Only the attempt we read may be replaced: two retries racing start one attempt.
            if (current is None) != (previous_attempt is None) or (
                current is not None and current["attempt"] != previous_attempt
            ):
                raise lost
            conn.execute(
                f"INSERT OR REPLACE INTO order_heads ({', '.join(_HEAD_COLUMNS)}, expires_at) "  # noqa: S608
                f"VALUES ({', '.join('?' for _ in head_values)})",
                head_values,
            )
            try:
                conn.execute(
                    f"INSERT INTO dispatches ({', '.join(_DISPATCH_COLUMNS)}, expires_at) "  # noqa: S608
                    f"VALUES ({', '.join('?' for _ in _DISPATCH_COLUMNS)}, ?)",
                    [dispatch_values[name] for name in _DISPATCH_COLUMNS] + [expires_at],
                )
            except sqlite3.IntegrityError:  # a reused request id: the head written above is rolled back
                raise lost from None
            conn.execute(
                "INSERT INTO outbox (stream, event_name, image_json, created_at_ms) VALUES (?, ?, ?, ?)",
                (
                    PAYMENTS_STREAM,
                    "INSERT" if current is None else "MODIFY",
                    jsonutil.dumps(head_image(head, expires_at)),
                    head.updated_at_ms,
                ),
            )
        self.db.notify(PAYMENTS_STREAM)

    def purge_expired(self, now_s: int) -> int:
        """Drop heads and dispatches past their retention (what DynamoDB's TTL does on AWS); how many."""
        with self.db.write() as conn:
            heads = conn.execute("DELETE FROM order_heads WHERE expires_at < ?", (now_s,)).rowcount
            dispatches = conn.execute("DELETE FROM dispatches WHERE expires_at < ?", (now_s,)).rowcount
        return int(heads) + int(dispatches)

    def apply(self, transition: Transition) -> Dispatch:
        """The rule decides on the row as it is when the write lands, as DynamoDB's condition does
        (``Rule.allows`` is the condition, in plain Python): the row is read, judged, and written
        only if its version is still the one judged; if it moved meanwhile, it is judged again.
        Only the one conditional ``UPDATE`` holds the write lock."""
        rule = transition.rule
        statement = _transition_statement(
            rule.stamp, transition.reason is not None, transition.result is not None, rule.late
        )
        values: list[Any] = [transition.to.value, transition.at_ms]
        if transition.reason is not None:
            values.append(transition.reason)
        if transition.result is not None:
            values += [jsonutil.dumps(transition.result), transition.at_ms]
        # This thread's last copy is judged first; a refusal is only final on a copy read just now
        # (a stale one may be refused where the row as it is would be allowed). Each retry follows a
        # write that moved the dispatch on; its states only move forward.
        current = self._last_seen(transition.request_id)
        for _ in range(_MAX_APPLY_RACES):
            fresh = current is None
            if fresh:
                current = self.get_dispatch(transition.request_id)
            if (
                current is None
                or not rule.allows(current)
                # An event may only move a dispatch sent to the terminal it came from.
                or (transition.terminal_id is not None and current.terminal_id != transition.terminal_id)
            ):
                if fresh:
                    raise ConditionFailed(f"dispatch {transition.request_id}: {rule.name} refused")
                current = None
                continue
            rows = self.db.write_returning(statement, [*values, transition.request_id, current.version])
            if rows:
                done = self._last.dispatch = _dispatch(rows[0])
                return done
            current = None
        raise ConditionFailed(f"dispatch {transition.request_id} kept changing; {rule.name} not applied")

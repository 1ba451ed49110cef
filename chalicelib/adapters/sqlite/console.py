"""SQLite repositories of the Console side: transactions, order details, the IPN inbox.

The same conditions as ``adapters/dynamodb/console.py``: a ``version`` guard on every transaction
write, newest attempt wins for order details, first IPN of a reference kept. A transaction is kept
whole as JSON (``chalicelib.jsonutil``: exact Decimals, no floats) beside the columns a listing
filters and sorts on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from chalicelib import jsonutil
from chalicelib.adapters.records import as_record
from chalicelib.adapters.sqlite.db import Database
from chalicelib.adapters.sqlite.rows import DecodedRows
from chalicelib.console.domain import OrderDetails, Transaction, TransactionQuery
from chalicelib.console.ports import Position
from chalicelib.exceptions import ConditionFailed
from chalicelib.keys import order_key

_TX_NAMES = tuple(f.name for f in fields(Transaction))
_TX_FIELDS = set(_TX_NAMES)
_DETAILS_FIELDS = {f.name for f in fields(OrderDetails)}
# A transaction's notification state changes a few times in its life; past this many lost races in a
# row, something is wrong.
_MAX_CHANGE_RACES = 16


def _transaction(values: dict[str, Any]) -> Transaction:
    """The transaction of a row's values (the caller's own dict: it is used up)."""
    values.pop("merchant_order", None)
    if values.keys() != _TX_FIELDS:  # a row written by another version: its fields only
        values = {key: value for key, value in values.items() if key in _TX_FIELDS}
    return Transaction(**values)


def transaction_item(tx: Transaction) -> dict[str, Any]:
    """The transaction as the table holds it (what the finance export reads)."""
    return {**as_record(tx), "merchant_order": tx.merchant_order}


class SqliteTransactionRepository:
    def __init__(self, db: Database) -> None:
        self.db = db
        # A transaction is written, then read back to mark its notification queued, then read to
        # deliver it: the text just written or read is not parsed again.
        self.bodies = DecodedRows()
        # The transaction this thread wrote last: the IPN merge writes one and at once marks its
        # notification queued, which judges that copy first instead of reading it again. Its
        # version guards the write; a copy that turns out stale is read again (see ``_change``).
        self._last = threading.local()

    def get(self, reference: str) -> Transaction | None:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT body_json FROM transactions WHERE transaction_reference = ?", (reference,)
            ).fetchone()
        return _transaction(self.bodies.loads(reference, row["body_json"])) if row else None

    def _body_json(self, tx: Transaction) -> str:
        """``jsonutil.dumps(transaction_item(tx))``, kept as the text of the row it is written to."""
        record = dict(vars(tx))
        if tuple(record) != _TX_NAMES:  # an attribute set besides the fields, or in another order
            record = {name: getattr(tx, name) for name in _TX_NAMES}
        record["merchant_order"] = tx.merchant_order
        return self.bodies.dumps(tx.transaction_reference, record) or jsonutil.dumps(transaction_item(tx))

    def put(self, tx: Transaction, expected_version: int) -> None:
        """Write ``tx`` if the stored one is still at ``expected_version`` (0: does not exist yet)."""
        # One conditional statement: the insert of a new one, or the update of the version we read.
        columns = (tx.merchant_id, tx.merchant_order, tx.created_at, tx.status_code, tx.terminal_id, tx.version)
        body_json = self._body_json(tx)
        if expected_version == 0:
            changed = self.db.write_one(
                "INSERT INTO transactions (merchant_id, merchant_order, created_at, status_code, terminal_id, "
                "version, body_json, transaction_reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (transaction_reference) DO NOTHING",
                (*columns, body_json, tx.transaction_reference),
            )
        else:
            changed = self.db.write_one(
                "UPDATE transactions SET merchant_id = ?, merchant_order = ?, created_at = ?, status_code = ?, "
                "terminal_id = ?, version = ?, body_json = ? WHERE transaction_reference = ? AND version = ?",
                (*columns, body_json, tx.transaction_reference, expected_version),
            )
        if changed != 1:
            raise ConditionFailed(f"transaction {tx.transaction_reference} changed meanwhile")
        # The caller keeps its own: this copy shares nothing it could change (copy.copy takes
        # several times as long for the same shallow copy).
        mine = Transaction.__new__(Transaction)
        vars(mine).update(vars(tx), flags=list(tx.flags), notified_statuses=list(tx.notified_statuses))
        self._last.tx = mine

    def mark_enqueued(self, reference: str, status_code: int) -> None:
        """The pending notification of ``status_code`` is in the queue; ConditionFailed if it moved on."""

        def enqueued(tx: Transaction) -> bool:
            if tx.notify_pending_status != status_code or tx.notify_enqueued:
                return False
            tx.notify_enqueued = True
            return True

        self._change(reference, enqueued)

    def record_delivery(self, reference: str, status_code: int) -> None:
        """A merchant server acknowledged ``status_code``; ConditionFailed if it already had."""

        def delivered(tx: Transaction) -> bool:
            if status_code in tx.notified_statuses:
                return False
            tx.notified_statuses = [*tx.notified_statuses, status_code]
            return True

        self._change(reference, delivered)

    def _change(self, reference: str, change: Callable[[Transaction], bool]) -> None:
        """Read, change, and write back only over the version read (one conditional statement); a
        transaction that moved meanwhile is read and judged again. ``change`` returns False to refuse.

        This thread's last written copy is judged first; a refusal is only final on a copy read just
        now (a stale one may be refused where the row as it is would be allowed)."""
        current = self._last_written(reference)
        for _ in range(_MAX_CHANGE_RACES):
            fresh = current is None
            tx = self.get(reference) if fresh else current
            current = None
            if tx is None or not change(tx):
                if fresh:
                    raise ConditionFailed(f"transaction {reference} changed meanwhile")
                continue
            read_version, tx.version = tx.version, tx.version + 1
            written = self.db.write_one(
                "UPDATE transactions SET version = ?, body_json = ? WHERE transaction_reference = ? AND version = ?",
                (tx.version, self._body_json(tx), reference, read_version),
            )
            if written == 1:
                self._last.tx = tx  # read (or copied) for this change alone: nobody else holds it
                return
        raise ConditionFailed(f"transaction {reference} kept changing")

    def _last_written(self, reference: str) -> Transaction | None:
        last: Transaction | None = getattr(self._last, "tx", None)
        if last is None or last.transaction_reference != reference:
            return None
        self._last.tx = None  # judged once: a change mutates it
        return last

    def list_for_order(self, merchant_id: str, order_id: str) -> list[Transaction]:
        query = TransactionQuery(merchant_id=merchant_id, order_id=order_id)
        found: list[Transaction] = []
        after: Position | None = None
        while True:
            items, after = self.page(query, 100, after)
            found.extend(items)
            if after is None:
                return found

    def page(
        self, query: TransactionQuery, limit: int, after: Position | None
    ) -> tuple[list[Transaction], Position | None]:
        """As DynamoDB's Query on the listing's index does it: ``limit`` transactions of the query's own
        merchant (or merchant and order) and date range are read, newest first (``created_at``, then
        ``transaction_reference``), then the status and terminal filters apply, so a page may come
        back short and still continue. A position never pages into another merchant's data."""
        values: list[str | int]
        if query.order_id is not None:
            conditions, values = ["merchant_order = ?"], [order_key(query.merchant_id, query.order_id)]
        else:
            conditions, values = ["merchant_id = ?"], [query.merchant_id]
        if query.created_from is not None:
            conditions.append("created_at >= ?")
            values.append(query.created_from)
        if query.created_to is not None:
            conditions.append("created_at <= ?")
            values.append(query.created_to)
        if after is not None:
            conditions.append("(created_at, transaction_reference) < (?, ?)")
            values += [after["created_at"], after["transaction_reference"]]
        with self.db.connection() as conn:
            rows = conn.execute(
                # Only fixed fragments are joined; every value is a parameter.
                f"SELECT created_at, transaction_reference, status_code, terminal_id, body_json FROM transactions "  # noqa: S608
                f"WHERE {' AND '.join(conditions)} ORDER BY created_at DESC, transaction_reference DESC LIMIT ?",
                [*values, limit + 1],
            ).fetchall()
        read = rows[:limit]
        kept = [
            _transaction(self.bodies.loads(row["transaction_reference"], row["body_json"]))
            for row in read
            if (query.status_code is None or row["status_code"] == query.status_code)
            and (query.terminal_id is None or row["terminal_id"] == query.terminal_id)
        ]
        if len(rows) <= limit or not read:
            return kept, None
        last = read[-1]
        return kept, {"created_at": last["created_at"], "transaction_reference": last["transaction_reference"]}

    def all_items(self) -> list[dict[str, Any]]:
        """Every transaction as a table item: the local finance export's source."""
        with self.db.connection() as conn:
            rows = conn.execute("SELECT body_json FROM transactions ORDER BY created_at").fetchall()
        return [jsonutil.loads(row["body_json"]) for row in rows]


class SqliteOrderDetailsRepository:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Details are written by one handler and read by the next (twice per IPN): parsed once.
        self.bodies = DecodedRows()

    def get(self, merchant_id: str, order_id: str) -> OrderDetails | None:
        with self.db.connection() as conn:
            row = conn.execute(
                "SELECT body_json FROM order_details WHERE merchant_order = ?", (order_key(merchant_id, order_id),)
            ).fetchone()
        if row is None:
            return None
        values = self.bodies.loads(order_key(merchant_id, order_id), row["body_json"])
        return OrderDetails(**{name: values.get(name) for name in _DETAILS_FIELDS})

    def put_if_newer(self, details: OrderDetails) -> bool:
        """Store the details unless those of this attempt or a newer one are already there."""
        changed = self.db.write_one(
            "INSERT INTO order_details (merchant_order, attempt, body_json) VALUES (?, ?, ?) "
            "ON CONFLICT (merchant_order) DO UPDATE SET attempt = excluded.attempt, body_json = excluded.body_json "
            "WHERE order_details.attempt < excluded.attempt",
            (details.merchant_order, details.attempt, self._body_json(details)),
        )
        return changed == 1

    def _body_json(self, details: OrderDetails) -> str:
        record = as_record(details)
        return self.bodies.dumps(details.merchant_order, record) or jsonutil.dumps(record)


class SqliteIpnInbox:
    """IPNs exactly as verified, kept before the gateway is answered."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def store(self, reference: str, merchant_id: str, body_json: str, body_sha256: str, received_at_ms: int) -> bool:
        """False when this transaction_reference was already received."""
        changed = self.db.write_one(
            "INSERT INTO ipn_inbox (transaction_reference, merchant_id, body_json, body_sha256, received_at_ms) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (transaction_reference) DO NOTHING",
            (reference, merchant_id, body_json, body_sha256, received_at_ms),
        )
        return changed == 1

    def get(self, reference: str) -> dict[str, Any] | None:
        with self.db.connection() as conn:
            row = conn.execute("SELECT * FROM ipn_inbox WHERE transaction_reference = ?", (reference,)).fetchone()
        if row is None:
            return None
        # As the DynamoDB item reads: an attribute never written is absent, not None.
        return {key: value for key, value in dict(row).items() if value is not None}

    def mark_merged(self, reference: str, merged_at_ms: int) -> None:
        """The first merge time is kept; ConditionFailed for an IPN never stored."""
        found = self.db.write_one(
            "UPDATE ipn_inbox SET merged_at_ms = COALESCE(merged_at_ms, ?) WHERE transaction_reference = ?",
            (merged_at_ms, reference),
        )
        if found != 1:
            raise ConditionFailed(f"no stored IPN for {reference}")

"""``python -m admin export``: Console transactions to CSV and Parquet for finance (docs/export.md).

    python -m admin export --out DIR                          # the transactions table itself (local)
    python -m admin export --out DIR --s3-export s3://bucket/exports/
    python -m admin export --out DIR --s3-export ./downloaded-export/
    python -m admin --data-dir .data export --out DIR         # the local stack's embedded store

Writes ``transactions.csv``/``.parquet`` (one row per transaction) and ``daily_summary.csv``/
``.parquet`` (per UTC date, merchant, terminal, operation and status: count and amount total).
Amounts are integers in minor units; CSV is UTF-8, header row, RFC 4180 quoting and line ends.
In the CSV files, a text cell that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return) gets a leading ``'``; Parquet keeps every value exact.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from admin.local import data_dir_of, open_local_store
from chalicelib.adapters.exports import iter_export_items, iter_table_items
from chalicelib.config import Settings

COLUMNS = (
    "transaction_reference",
    "merchant_id",
    "order_id",
    "terminal_id",
    "operation",
    "status_code",
    "status",
    "amount_minor",
    "currency",
    "authorization_code",
    "card_brand",
    "masked_pan",
    "created_at",
    "updated_at",
    "flags",
    "custom_data",
)
SUMMARY_COLUMNS = (
    "date",
    "merchant_id",
    "terminal_id",
    "operation",
    "status_code",
    "status",
    "count",
    "amount_minor_total",
)
_INTEGERS = frozenset({"status_code", "amount_minor", "count", "amount_minor_total"})
_TIMESTAMPS = frozenset({"created_at", "updated_at"})


def transaction_row(item: dict[str, Any]) -> dict[str, Any]:
    """A transactions-table item -> one export row; never the customer, never more than the masked PAN."""
    flags = item.get("flags") or []
    return {
        "transaction_reference": str(item["transaction_reference"]),
        "merchant_id": str(item.get("merchant_id", "")),
        "order_id": str(item.get("order_id", "")),
        "terminal_id": str(item.get("terminal_id", "")),
        "operation": str(item.get("operation", "")),
        "status_code": int(item["status_code"]),
        "status": str(item.get("status", "")),
        "amount_minor": int(item["amount_minor"]),
        "currency": str(item.get("currency", "")),
        "authorization_code": item.get("authorization_code"),
        "card_brand": item.get("card_brand"),
        "masked_pan": item.get("masked_pan"),
        "created_at": str(item["created_at"]),
        "updated_at": str(item.get("updated_at") or item["created_at"]),
        "flags": "|".join(sorted(str(flag) for flag in flags)),
        # Kept as the JSON text the ECR's custom_data became: exact, and one cell.
        "custom_data": item.get("custom_data_json"),
    }


def daily_summary(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    totals: dict[tuple[str, str, str, str, int, str], list[int]] = {}
    for row in rows:
        key = (
            row["created_at"][:10],
            row["merchant_id"],
            row["terminal_id"],
            row["operation"],
            row["status_code"],
            row["status"],
        )
        entry = totals.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += row["amount_minor"]
    return [
        dict(zip(SUMMARY_COLUMNS, (*key, count, amount), strict=True))
        for key, (count, amount) in sorted(totals.items())
    ]


# A spreadsheet opening the CSV runs a cell starting with one of these as a formula; an order_id
# or a custom_data text is the ECR's (or a customer's) to choose.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(value: Any) -> Any:
    """A text cell a spreadsheet would read as a formula, with a leading ``'``; anything else as is."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else formula_safe(value) for key, value in row.items()})


def write_parquet(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    # pyarrow is a development/operations dependency, never shipped to Lambda.
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = []
    for name in columns:
        if name in _INTEGERS:
            fields.append(pa.field(name, pa.int64(), nullable=False))
        elif name in _TIMESTAMPS:
            fields.append(pa.field(name, pa.timestamp("ms", tz="UTC"), nullable=False))
        elif name == "date":
            fields.append(pa.field(name, pa.date32(), nullable=False))
        else:
            fields.append(pa.field(name, pa.string()))
    data: dict[str, list[Any]] = {name: [] for name in columns}
    for row in rows:
        for name in columns:
            value = row[name]
            if name in _TIMESTAMPS:
                value = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
            elif name == "date":
                value = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC).date()
            data[name].append(value)
    pq.write_table(pa.table(data, schema=pa.schema(fields)), path)


def export(items: Iterable[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Write the four files; returns their paths and the row counts."""
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted(
        (transaction_row(item) for item in items), key=lambda r: (r["created_at"], r["transaction_reference"])
    )
    summary = daily_summary(rows)
    files = {
        "transactions_csv": out / "transactions.csv",
        "transactions_parquet": out / "transactions.parquet",
        "daily_summary_csv": out / "daily_summary.csv",
        "daily_summary_parquet": out / "daily_summary.parquet",
    }
    write_csv(files["transactions_csv"], COLUMNS, rows)
    write_parquet(files["transactions_parquet"], COLUMNS, rows)
    write_csv(files["daily_summary_csv"], SUMMARY_COLUMNS, summary)
    write_parquet(files["daily_summary_parquet"], SUMMARY_COLUMNS, summary)
    return {"rows": len(rows), "summary_rows": len(summary), **{key: str(path) for key, path in files.items()}}


def run(args: argparse.Namespace) -> int:
    items: Iterable[dict[str, Any]]
    if args.s3_export:
        items = iter_export_items(args.s3_export)
    elif (data_dir := data_dir_of(args)) is not None:
        items = open_local_store(data_dir).transactions.all_items()
    else:
        items = iter_table_items(Settings.from_env().transactions_table)
    result = export(items, Path(args.out))
    print(f"{result['rows']} transactions, {result['summary_rows']} summary rows -> {args.out}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("export", help="Console transactions to CSV and Parquet for finance")
    parser.add_argument("--out", required=True, help="folder to write the files into")
    parser.add_argument(
        "--s3-export",
        metavar="S3_URI_OR_FOLDER",
        help="a DynamoDB export: s3://bucket/prefix/ or a local copy (default: the table)",
    )
    parser.set_defaults(func=run)

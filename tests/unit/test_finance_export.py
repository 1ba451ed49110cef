"""Finance export (docs/export.md) on fakes: CSV and Parquet with the contract's columns, and a daily
summary. Reading the DynamoDB table, the scheduled export and S3 are pinned in tests/integration."""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from admin import export
from admin.__main__ import main as admin_main
from chalicelib.adapters.aws import to_item
from chalicelib.bootstrap import Components
from chalicelib.bootstrap import components as ledger
from chalicelib.console.domain import details_from_head
from chalicelib.console.ingest import record_order_details
from tests.console_helpers import EXPORT_COLUMNS as COLUMNS
from tests.console_helpers import TRICKY, head_image, order_request
from tests.console_helpers import add_export_row as add


@pytest.fixture
def table(console: Components) -> list[dict[str, Any]]:
    """The transactions as table items: every attribute but the absent (None) ones, as DynamoDB keeps them."""
    add("T1", "M1", "PAX-1", "approved", 899, "27")
    add("T2", "M1", "PAX-1", "approved", 1001, "27")
    add("T3", "M1", "PAX-1", "declined", 500, "27")
    add("T4", "M1", "PAX-2", "approved", 250, "28")
    add("T5", "M2", "PAX-9", "approved", 700, "28", operation="Credit")
    request = order_request("O-T1", amount=900, basket=None, custom_data=TRICKY)
    record_order_details(ledger().ingest_deps(), details_from_head(head_image("M1", request)))
    stored = console.transactions.items.values()  # type: ignore[attr-defined]
    return [{key: value for key, value in asdict(tx).items() if value is not None} for tx in stored]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_transactions_csv_and_parquet_have_the_contract_columns_and_integer_amounts(
    table: list[dict[str, Any]], tmp_path: Path
) -> None:
    result = export.export(reversed(table), tmp_path)
    assert (result["rows"], result["summary_rows"]) == (5, 4)
    rows = read_csv(tmp_path / "transactions.csv")
    assert list(rows[0]) == COLUMNS
    assert [row["transaction_reference"] for row in rows] == ["T1", "T2", "T3", "T4", "T5"]
    first = rows[0]
    assert (first["status_code"], first["status"], first["amount_minor"]) == ("118", "Captured", "899")
    assert first["flags"] == "amount_mismatch", "the order asked for 900"
    assert json.loads(first["custom_data"]) == TRICKY, "RFC 4180 quoting keeps commas, quotes and new lines"
    assert first["masked_pan"] == "497010******0001" and first["created_at"] == "2026-11-27T10:00:00.000Z"
    assert rows[2]["status"] == "Refused" and rows[4]["status_code"] == "125"
    raw = (tmp_path / "transactions.csv").read_bytes()
    assert raw.startswith(b"transaction_reference,merchant_id,") and b"\r\n" in raw
    raw.decode("utf-8")

    parquet = pq.read_table(tmp_path / "transactions.parquet")
    assert parquet.column_names == COLUMNS
    assert str(parquet.schema.field("amount_minor").type) == "int64"
    assert str(parquet.schema.field("created_at").type) == "timestamp[ms, tz=UTC]"
    assert parquet.column("amount_minor").to_pylist() == [899, 1001, 500, 250, 700]
    assert sum(parquet.column("amount_minor").to_pylist()) == 3350


def test_the_daily_summary_counts_and_totals_per_day_merchant_terminal_operation_status(
    table: list[dict[str, Any]], tmp_path: Path
) -> None:
    export.export(table, tmp_path)
    summary = [
        (
            r["date"],
            r["merchant_id"],
            r["terminal_id"],
            r["operation"],
            r["status"],
            r["count"],
            r["amount_minor_total"],
        )
        for r in read_csv(tmp_path / "daily_summary.csv")
    ]
    assert summary == [
        ("2026-11-27", "M1", "PAX-1", "Debit", "Refused", "1", "500"),
        ("2026-11-27", "M1", "PAX-1", "Debit", "Captured", "2", "1900"),
        ("2026-11-28", "M1", "PAX-2", "Debit", "Captured", "1", "250"),
        ("2026-11-28", "M2", "PAX-9", "Credit", "Refunded", "1", "700"),
    ]
    parquet = pq.read_table(tmp_path / "daily_summary.parquet").to_pylist()
    assert [row["amount_minor_total"] for row in parquet] == [500, 1900, 250, 700]
    assert str(parquet[0]["date"]) == "2026-11-27"


def test_no_transactions_export_header_only_files(tmp_path: Path) -> None:
    result = export.export([], tmp_path)
    assert (result["rows"], result["summary_rows"]) == (0, 0)
    assert (tmp_path / "transactions.csv").read_text(encoding="utf-8").strip() == ",".join(COLUMNS)
    assert pq.read_table(tmp_path / "transactions.parquet").num_rows == 0
    assert pq.read_table(tmp_path / "daily_summary.parquet").num_rows == 0


def test_a_sparse_item_exports_with_empty_text_and_its_creation_time_as_last_update() -> None:
    row = export.transaction_row(
        {"transaction_reference": "T9", "status_code": 113, "amount_minor": 0, "created_at": "2026-11-28T10:00:00.000Z"}
    )
    assert row == {
        "transaction_reference": "T9",
        "merchant_id": "",
        "order_id": "",
        "terminal_id": "",
        "operation": "",
        "status_code": 113,
        "status": "",
        "amount_minor": 0,
        "currency": "",
        "authorization_code": None,
        "card_brand": None,
        "masked_pan": None,
        "created_at": "2026-11-28T10:00:00.000Z",
        "updated_at": "2026-11-28T10:00:00.000Z",
        "flags": "",
        "custom_data": None,
    }


def test_an_item_exports_its_own_values_and_sorted_flags() -> None:
    item = {
        "transaction_reference": "T1",
        "merchant_id": "M1",
        "order_id": "O-1",
        "terminal_id": "PAX-1",
        "operation": "Credit",
        "status_code": 125,
        "status": "Refunded",
        "amount_minor": 899,
        "currency": "EUR",
        "authorization_code": "A1",
        "card_brand": "VISA",
        "masked_pan": "497010******0001",
        "created_at": "2026-11-28T10:00:00.000Z",
        "updated_at": "2026-11-28T10:05:00.000Z",
        "flags": ["late", "amount_mismatch"],
        "custom_data_json": '{"a":1}',
    }
    row = export.transaction_row(item)
    assert row["flags"] == "amount_mismatch|late"
    assert row == {**{k: v for k, v in item.items() if k not in ("flags", "custom_data_json")}, "flags": row["flags"],
                   "custom_data": '{"a":1}'}  # fmt: skip


def test_the_export_command_writes_the_four_files_from_a_local_copy_of_a_table_export(
    table: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "copy" / "AWSDynamoDB" / "01700000000000-abcd" / "data"
    data.mkdir(parents=True)
    lines = "\n".join(json.dumps({"Item": to_item(item)}) for item in table)
    (data / "part-0.json.gz").write_bytes(gzip.compress(lines.encode()))
    out = tmp_path / "nested" / "out"
    assert admin_main(["export", "--out", str(out), "--s3-export", str(tmp_path / "copy")]) == 0
    assert capsys.readouterr().out.strip() == f"5 transactions, 4 summary rows -> {out}"
    assert sorted(path.name for path in out.iterdir()) == [
        "daily_summary.csv",
        "daily_summary.parquet",
        "transactions.csv",
        "transactions.parquet",
    ]
    assert [row["transaction_reference"] for row in read_csv(out / "transactions.csv")] == [
        "T1",
        "T2",
        "T3",
        "T4",
        "T5",
    ]


def test_the_export_command_requires_an_output_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        admin_main(["export"])
    assert "--out" in capsys.readouterr().err

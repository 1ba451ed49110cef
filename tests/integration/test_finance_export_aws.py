"""Finance export (docs/export.md) on AWS: the CLI reading the transactions table, the scheduled export
to S3 read back from the bucket or a downloaded folder, and an empty table."""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import app as chalice_app
from admin import export
from chalicelib.adapters.aws import client
from chalicelib.bootstrap import components as ledger
from chalicelib.config import Settings
from chalicelib.console.domain import details_from_head
from chalicelib.console.ingest import record_order_details
from tests.console_helpers import EXPORT_COLUMNS as COLUMNS
from tests.console_helpers import TRICKY, head_image, order_request
from tests.console_helpers import add_export_row as add


@pytest.fixture
def table(console_aws: Settings) -> Settings:
    add("T1", "M1", "PAX-1", "approved", 899, "27")
    add("T2", "M1", "PAX-1", "approved", 1001, "27")
    add("T3", "M1", "PAX-1", "declined", 500, "27")
    add("T4", "M1", "PAX-2", "approved", 250, "28")
    add("T5", "M2", "PAX-9", "approved", 700, "28", operation="Credit")
    request = order_request("O-T1", amount=900, basket=None, custom_data=TRICKY)
    record_order_details(ledger().ingest_deps(), details_from_head(head_image("M1", request)))
    return console_aws


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    export.register(parser.add_subparsers())
    args = parser.parse_args(["export", *argv])
    result: int = args.func(args)
    return result


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_cli_exports_the_transactions_table_with_the_contract_columns(table: Settings, tmp_path: Path) -> None:
    assert run_cli("--out", str(tmp_path)) == 0
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


def _wait_for_export(arn: str) -> None:
    for _ in range(100):
        status = client("dynamodb").describe_export(ExportArn=arn)["ExportDescription"]["ExportStatus"]
        if status != "IN_PROGRESS":
            assert status == "COMPLETED"
            return
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def test_the_scheduled_export_writes_to_the_bucket_and_the_cli_converts_it(table: Settings, tmp_path: Path) -> None:
    client("dynamodb").update_continuous_backups(
        TableName=table.transactions_table,
        PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
    )
    result: dict[str, Any] = chalice_app.finance_export_handler({"id": "schedule-event-1"}, None)
    _wait_for_export(result["export_arn"])
    keys = [o["Key"] for o in client("s3").list_objects_v2(Bucket=table.export_bucket)["Contents"]]
    assert keys and all(key.startswith("exports/") and "/AWSDynamoDB/" in key for key in keys)

    from_s3 = tmp_path / "from-s3"
    assert run_cli("--out", str(from_s3), "--s3-export", f"s3://{table.export_bucket}/exports/") == 0
    from_table = tmp_path / "from-table"
    run_cli("--out", str(from_table))
    assert read_csv(from_s3 / "transactions.csv") == read_csv(from_table / "transactions.csv")

    # The same export downloaded as a folder (what an operator copies from S3) reads the same.
    local = tmp_path / "downloaded"
    for key in keys:
        target = local / key.split("/AWSDynamoDB/", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client("s3").get_object(Bucket=table.export_bucket, Key=key)["Body"].read())
    from_folder = tmp_path / "from-folder"
    run_cli("--out", str(from_folder), "--s3-export", str(local))
    assert read_csv(from_folder / "daily_summary.csv") == read_csv(from_table / "daily_summary.csv")


def test_an_empty_table_exports_header_only_files(console_aws: Settings, tmp_path: Path) -> None:
    run_cli("--out", str(tmp_path))
    assert (tmp_path / "transactions.csv").read_text(encoding="utf-8").strip() == ",".join(COLUMNS)
    assert pq.read_table(tmp_path / "transactions.parquet").num_rows == 0

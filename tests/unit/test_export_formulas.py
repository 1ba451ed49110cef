"""Finance export (docs/export.md): a text cell a spreadsheet would run as a formula is defused in the
CSV files, every column and the daily summary alike; Parquet keeps the exact values."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from admin import export

HOSTILE = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]


def item(reference: str, text: str) -> dict[str, Any]:
    return {
        "transaction_reference": reference,
        "merchant_id": text,
        "order_id": text,
        "terminal_id": text,
        "operation": text,
        "status_code": 118,
        "status": text,
        "amount_minor": 899,
        "currency": "EUR",
        "authorization_code": text,
        "card_brand": text,
        "masked_pan": None,
        "created_at": "2026-11-28T10:00:00.000Z",
        "flags": [text],
        "custom_data_json": text,
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("text", HOSTILE)
def test_every_text_cell_that_could_run_as_a_formula_gets_a_leading_quote(tmp_path: Path, text: str) -> None:
    export.export([item("T1", text)], tmp_path)
    row = read_csv(tmp_path / "transactions.csv")[0]
    for column in ("merchant_id", "order_id", "terminal_id", "operation", "status", "authorization_code",
                   "card_brand", "flags", "custom_data"):  # fmt: skip
        assert row[column] == "'" + text, column
    summary = read_csv(tmp_path / "daily_summary.csv")[0]
    for column in ("merchant_id", "terminal_id", "operation", "status"):
        assert summary[column] == "'" + text, column
    assert summary["amount_minor_total"] == "899"
    assert pq.read_table(tmp_path / "transactions.parquet").to_pylist()[0]["order_id"] == text


def test_ordinary_cells_and_negative_looking_text_inside_are_left_as_they_are(tmp_path: Path) -> None:
    export.export([item("T1", "ORDER-1=2")], tmp_path)
    row = read_csv(tmp_path / "transactions.csv")[0]
    assert (row["order_id"], row["amount_minor"], row["status_code"]) == ("ORDER-1=2", "899", "118")

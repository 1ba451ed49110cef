"""The operator commands on the local stack's data directory (``--data-dir``): the same commands as
on AWS, working on the embedded store the stack keeps there."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path
from typing import Any

import pytest

from admin.__main__ import main
from chalicelib import jsonutil
from chalicelib.adapters.sqlite.store import SqliteStore
from chalicelib.config import get_settings
from chalicelib.console.domain import Transaction
from chalicelib.merchants.auth import Authenticator

PASSWORD = "a-long-enough-password"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Even with the AWS channel configured, a local terminal gets no IoT thing.
    monkeypatch.setenv("TERMINAL_CHANNEL", "iot")
    get_settings.cache_clear()
    directory = tmp_path / "data"
    SqliteStore.open(directory).close()  # what `make run` leaves there
    return directory


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    try:
        output = json.loads(captured.out) if captured.out.strip() else None
    except ValueError:
        output = captured.out
    return code, output, captured.err


def test_merchant_terminal_and_rotation_land_in_the_data_directory(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, created, _ = run(
        capsys, "--data-dir", str(data_dir), "create-merchant", "--merchant-id", "M1", "--login", "shop",
        "--password", PASSWORD,
    )  # fmt: skip
    assert code == 0 and created["merchant_id"] == "M1"
    code, enrolled, _ = run(
        capsys, "--data-dir", str(data_dir), "enroll-terminal", "--merchant-id", "M1", "--manufacturer", "PAX",
        "--serial", "1850320198",
    )  # fmt: skip
    assert code == 0 and "iot" not in enrolled and "iot_error" not in enrolled
    store = SqliteStore.open(data_dir)
    try:
        terminal = store.terminals.get("PAX-1850320198")
        assert terminal is not None and terminal.passphrase == enrolled["passphrase"]
        header = "Basic " + base64.b64encode(f"shop:{PASSWORD}".encode()).decode()
        assert Authenticator(store.merchants, 60).merchant_for(header) == "M1"
        code, rotated, _ = run(
            capsys, "--data-dir", str(data_dir), "rotate-passphrase", "--merchant-id", "M1",
            "--terminal", "PAX-1850320198",
        )  # fmt: skip
        assert code == 0 and rotated["passphrase"] != enrolled["passphrase"]
        assert store.terminals.get("PAX-1850320198").passphrase == rotated["passphrase"]  # type: ignore[union-attr]
        code, _, err = run(
            capsys, "--data-dir", str(data_dir), "rotate-passphrase", "--merchant-id", "M2",
            "--terminal", "PAX-1850320198",
        )  # fmt: skip
        assert code == 1 and "not enrolled for M2" in err
    finally:
        store.close()


def test_export_writes_the_local_transactions(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SqliteStore.open(data_dir)
    tx = Transaction(
        "T-1", "M1", "O-1", "PAX-1", "Debit", "approved", 118, "Captured", 899, "EUR",
        "2026-11-28T03:00:00.000Z", "2026-11-28T03:00:01.000Z", custom_data_json='{"k":8.99}', version=1,
    )  # fmt: skip
    store.transactions.put(tx, 0)
    store.close()
    out = tmp_path / "export"
    code, _, _ = run(capsys, "--data-dir", str(data_dir), "export", "--out", str(out))
    assert code == 0
    with (out / "transactions.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["transaction_reference"], r["amount_minor"], r["custom_data"]) for r in rows] == [
        ("T-1", "899", '{"k":8.99}')
    ]


def test_replay_dlq_moves_parked_notifications_back_with_fresh_tries(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SqliteStore.open(data_dir)
    try:
        store.dead_letters.send(
            {"transaction_reference": "T-1", "status_code": 118, "parked_reason": "x", "failures": 9}
        )
        code, output, _ = run(capsys, "--data-dir", str(data_dir), "replay-dlq", "--queue", "merchant-notifications")
        assert code == 0 and "1 message(s) moved" in output
        assert store.dead_letters.depth() == 0
        [message] = store.notifications.receive()
        assert jsonutil.loads(message.body) == {"transaction_reference": "T-1", "status_code": 118}
    finally:
        store.close()


def test_a_data_directory_without_a_store_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing-here"
    code, _, err = run(
        capsys, "--data-dir", str(missing), "rotate-passphrase", "--merchant-id", "M1", "--terminal", "X"
    )
    assert code == 2 and "no local stack data" in err
    assert not missing.exists()

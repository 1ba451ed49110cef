"""`python -m local.stack` (what `make run` starts) as a newcomer meets it: ready, a curl that pays, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run keeps its data in its own directory, not in the checkout's ``.data/``."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))


def _start(env_overrides: dict[str, str], *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "API_PORT": "0",
        "MQTT_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        # Never the developer's own build/local-stack.env, which a running `make run` owns.
        "LOCAL_STACK_ENV_FILE": os.path.join(tempfile.mkdtemp(prefix="stack-env-"), "local-stack.env"),
        **env_overrides,
    }
    env.pop("AWS_ENDPOINT_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "local.stack", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _read_until_ready(process: subprocess.Popen[str], timeout_s: float = 60) -> str:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("(ready in"):
            return "".join(lines)
    process.kill()
    raise AssertionError(
        "the stack did not get ready:\n" + "".join(lines) + (process.stderr.read() if process.stderr else "")
    )


def test_printed_curl_pays_with_a_simulated_terminal_and_ctrl_c_stops_cleanly() -> None:
    process = _start({})
    try:
        banner = _read_until_ready(process)
        start = banner.index("curl ")
        curl = banner[start : banner.index("\n\n", start)].replace("\\\n", " ")
        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["paymentStatus"] == "Success"
        assert re.search(r"PAX-1850320198 +merchant M1 +simulated: approve", banner)
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    assert code == 0


def test_malformed_seed_stops_with_the_file_and_field_named(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {
                "ipn_secret": "x",
                "merchants": [
                    {"merchant_id": "M 1", "login": "a", "password": "long-enough-pass", "notify_passphrase": "n"}
                ],
            }
        )
    )
    process = _start({"SEED_FILE": str(seed)})
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert str(seed) in err and "merchants.0.merchant_id" in err


def test_port_in_use_is_reported_as_such() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _start({"MQTT_PORT": str(port)})
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"port {port}" in err and "in use" in err and "MQTT_PORT" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_help_describes_the_settings_and_starts_nothing() -> None:
    process = _start({"API_PORT": "1"}, "--help")  # a port it could not bind: starting would fail
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "API_PORT" in out and "MQTT_PORT" in out and "/console" in out
    assert "ready" not in out


def test_a_deadline_shorter_than_the_ack_timeout_is_one_line_naming_both_settings() -> None:
    process = _start({"PAYMENT_DEADLINE_MS": "5000"})
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert line.startswith("error: PAYMENT_DEADLINE_MS is 5000") and "ACK_TIMEOUT_MS" in line


def test_make_run_prints_and_writes_the_environment_operator_commands_need(tmp_path: Path) -> None:
    env_file = tmp_path / "local-stack.env"
    process = _start({"LOCAL_STACK_ENV_FILE": str(env_file)})
    try:
        banner = _read_until_ready(process)
        assert "/console" in banner and "/docs" in banner and "make admin ARGS=" in banner
        written = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if line and not line.startswith("#")
        )
        # The embedded store's data directory (STORE=moto would name moto's URL, region and queues).
        assert Path(written["ADMIN_DATA_DIR"]) == (Path(os.environ["DATA_DIR"])).resolve()
        for name in ("ADMIN_DATA_DIR", "TERMINAL_CHANNEL"):
            assert f"export {name}={written[name]}" in banner
        # What make admin does: the operator command with that environment, nothing else.
        clean = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        enroll = ["enroll-terminal", "--merchant-id", "M1", "--manufacturer", "PAX", "--serial", "ADMIN1"]
        admin = subprocess.run(
            [sys.executable, "-m", "admin", *enroll],
            cwd=ROOT,
            env={**clean, **written},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert admin.returncode == 0, admin.stderr
        assert json.loads(admin.stdout)["terminal_id"] == "PAX-ADMIN1"
        replay = subprocess.run(
            [sys.executable, "-m", "admin", "replay-dlq", "--queue", "merchant-notifications"],
            cwd=ROOT,
            env={**clean, **written},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert replay.returncode == 0, replay.stderr
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert not env_file.exists()  # a stopped stack leaves no stale environment behind

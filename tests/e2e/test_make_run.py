"""`python -m local.stack` (what `make run` starts) as a newcomer meets it: ready, a curl that pays, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each run keeps its data in its own directory, not in the checkout's ``.data/``."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))


def _start(env_overrides: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "API_PORT": "0", "MQTT_PORT": "0", "PYTHONUNBUFFERED": "1", **env_overrides}
    env.pop("AWS_ENDPOINT_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "local.stack"],
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
    assert f"port {port}" in err and "in use" in err

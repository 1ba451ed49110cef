"""The payment API fuzzed from its own OpenAPI document, against a running local stack.

Schemathesis generates requests from ``/openapi.json`` (coverage, fuzzing and stateful phases,
every check: no 5xx, answers that match the document, schema-valid requests accepted and invalid
ones refused, 405 for undeclared methods, …) with a fixed seed and a bounded number of examples,
so a run is reproducible and takes a couple of minutes. Any failure is a bug in the API or in the
document. Settings that JSON Schema cannot say (opaque cursors, the 64 KiB body limit) are in
``schemathesis.toml`` beside this file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from local.stack import RunningStack, StackConfig, start_stack

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
LOGIN, PASSWORD = "fuzz", "fuzz-password-2026"
SEED = {
    "ipn_secret": "fuzz-ipn-secret",
    "merchants": [
        {"merchant_id": "M1", "login": LOGIN, "password": PASSWORD, "notify_passphrase": "np", "notify_url": None}
    ],
    "terminals": [
        {
            "merchant_id": "M1",
            "manufacturer": "PAX",
            "serial_number": "1850320198",
            "passphrase": "p-fuzz",
            "simulator": {"behavior": "approve", "delay_ms": 0},
        }
    ],
}
FUZZ_SEED = 42
MAX_EXAMPLES = 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    seed_path = tmp_path_factory.mktemp("fuzz") / "seed.json"
    seed_path.write_text(json.dumps(SEED))
    running = start_stack(
        StackConfig(
            api_port=0,
            mqtt_port=0,
            seed_path=seed_path,
            environment={"ACK_TIMEOUT_MS": "500", "PAYMENT_DEADLINE_MS": "1500"},
        )
    )
    yield running
    assert running.crash_report() is None
    running.stop()


def test_fuzzing_the_api_from_its_openapi_document_finds_no_failure(stack: RunningStack, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{stack.api_url}/openapi.json",
        "--auth",
        f"{LOGIN}:{PASSWORD}",
        "--phases",
        "coverage,fuzzing,stateful",
        "--checks",
        "all",
        "--seed",
        str(FUZZ_SEED),
        # The same cases every run: no examples replayed from an earlier run's database.
        "--generation-database",
        "none",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--continue-on-failure",
        "--request-timeout",
        "10",
        "--no-color",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    report = run.stdout + run.stderr
    summary = report[report.rfind("SUMMARY") :] if "SUMMARY" in report else report[-4000:]
    print(summary)  # the cases generated and the outcome, in the test log
    assert run.returncode == 0, report[-20000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated is not None, summary
    assert int(generated.group(1)) >= 1000 and generated.group(1) == generated.group(2), summary
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"✅ {phase}", report), f"{phase} phase did not pass:\n{summary}"

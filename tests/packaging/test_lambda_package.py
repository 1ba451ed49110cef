"""The deployment package works on its own: built as `chalice package` builds it, for arm64 with
aarch64 wheels, and, unpacked beside nothing but boto3, every handler imports and answers an event
shaped as AWS sends it.

Lambda runs arm64; this machine may not, so the handlers run from the same package built for the
host's architecture, which is checked to differ from the arm64 one in its native binaries only.
"""

from __future__ import annotations

import json
import platform
import zipfile
from pathlib import Path
from typing import Any

import pytest

from .lambda_runtime import (
    EM_AARCH64,
    EM_X86_64,
    HANDLERS,
    aws_endpoint,
    build_package,
    elf_machines,
    run_handlers,
    runtime_dir,
    unpack,
)

HOST_ARCHITECTURE = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
HOST_MACHINE = {"x86_64": EM_X86_64, "arm64": EM_AARCH64}.get(HOST_ARCHITECTURE or "")


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("packages")
    built = {"arm64": build_package("arm64", out)}
    if HOST_ARCHITECTURE and HOST_ARCHITECTURE != "arm64":
        built[HOST_ARCHITECTURE] = build_package(HOST_ARCHITECTURE, out)
    return built


@pytest.fixture(scope="module")
def run(packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if HOST_ARCHITECTURE is None:
        pytest.skip(f"no Lambda architecture runs on {platform.machine()}")
    work = tmp_path_factory.mktemp("lambda")
    task = unpack(packages[HOST_ARCHITECTURE], work / "task")
    runtime = runtime_dir(work / "runtime")
    with aws_endpoint() as endpoint:
        return run_handlers(task, runtime, endpoint, work)


def _names(package: Path) -> set[str]:
    with zipfile.ZipFile(package) as z:
        return set(z.namelist())


def test_the_arm64_package_holds_aarch64_binaries_only(packages):
    machines = elf_machines(packages["arm64"])
    assert any(name.startswith("pydantic_core/_pydantic_core") for name in machines), sorted(machines)
    assert set(machines.values()) == {EM_AARCH64}, {n: m for n, m in machines.items() if m != EM_AARCH64}


def test_the_package_the_handlers_run_from_differs_from_the_deployed_one_only_in_native_binaries(packages):
    if HOST_ARCHITECTURE == "arm64":
        pytest.skip("the handlers run from the arm64 package itself")
    host = packages[HOST_ARCHITECTURE]
    assert set(elf_machines(host).values()) == {HOST_MACHINE}

    def portable(names: set[str]) -> set[str]:
        # Wheel metadata names the platform it was built for.
        return {n for n in names if not n.endswith((".so", "/WHEEL", "/RECORD")) and ".so." not in n}

    assert portable(_names(host)) == portable(_names(packages["arm64"]))


def test_the_package_holds_the_app_and_its_runtime_dependencies_and_nothing_of_development(packages):
    names = _names(packages["arm64"])
    assert {"app.py", "chalice/app.py", "chalicelib/config.py"} <= names
    assert any(n.startswith("pydantic/") for n in names) and any(n.startswith("aws_lambda_powertools/") for n in names)
    tops = {n.split("/", 1)[0] for n in names}
    # boto3 comes with Lambda's runtime; the rest is development only.
    development = {"boto3", "botocore", "moto", "pytest", "tests", "local", "bench", "infra", "admin", "chalice.out"}
    assert not tops & development


def test_the_handlers_import_from_the_package_with_only_boto3_beside_it(run):
    task, runtime = run["sys_path"]
    assert run["import"]["app_file"] == f"{task}/app.py"
    assert run["import"]["pydantic_core_file"].startswith(f"{task}/pydantic_core/")
    assert Path(runtime).name == "runtime"
    assert {step["handler"] for step in run["steps"]} == set(HANDLERS)


def _step(run: dict[str, Any], name: str) -> Any:
    (step,) = [s for s in run["steps"] if s["step"] == name]
    return step["answer"]


def _http(run: dict[str, Any], name: str) -> tuple[int, Any]:
    answer = _step(run, name)
    return answer["statusCode"], json.loads(answer["body"]) if answer.get("body") else None


def test_each_handler_answers_an_event_shaped_as_aws_sends_it(run):
    assert _http(run, "healthcheck") == (200, {"status": "ok"})
    assert _step(run, "terminal online") == {"outcome": "online"}
    status, _ = _http(run, "payment (async)")
    assert status == 202
    assert _step(run, "ack") == {"outcome": "acknowledged"}
    assert _step(run, "result")["outcome"] == "succeeded"
    status, order = _http(run, "order status")
    assert status == 200 and order["state"] == "succeeded"
    assert _step(run, "order head streamed") == {"batchItemFailures": []}
    assert _http(run, "ipn")[0] == 200
    assert run["ipn_queued"] and _step(run, "ipn merged") == {"batchItemFailures": []}
    if run["notification_queued"]:
        assert _step(run, "merchant notified") == {"batchItemFailures": []}
    assert _step(run, "finance export")["export_arn"].startswith("arn:aws:dynamodb:")


def test_a_synchronous_payment_waits_for_the_terminal_and_answers_its_result(run):
    status, body = _http(run, "payment (sync)")
    assert status == 200 and body["paymentStatus"] == "Success"
    assert body["transaction"]["masked_pan"] == "497010XXXXXX0014"

"""The deployment package the synthesis stages for upload: built for arm64 with aarch64 wheels,
with each function's handler where the packaging test (tests/packaging) calls it, and with the
sizes the benchmark's cost model bills."""

from __future__ import annotations

import json

import pytest

from bench.report import CONFIGS
from tests.packaging.lambda_runtime import EM_AARCH64, HANDLERS, elf_machines

from .template_queries import PREFIX, props, resources

pytestmark = pytest.mark.infra


@pytest.fixture(scope="module")
def package(synthesis):
    manifest = json.loads((synthesis.outdir / "nepting-cloud-api-prod.assets.json").read_text())
    (path,) = [a["source"]["path"] for a in manifest["files"].values() if a["source"]["path"].endswith(".zip")]
    return synthesis.outdir / path


def test_the_staged_package_holds_aarch64_binaries_only(package):
    machines = elf_machines(package)
    assert any(name.startswith("pydantic_core/_pydantic_core") for name in machines)
    assert set(machines.values()) == {EM_AARCH64}


def test_every_function_runs_the_handler_the_packaging_test_calls(template):
    handlers = {
        props(template, function_id)["FunctionName"].removeprefix(PREFIX).replace("-", "_"): function["Properties"][
            "Handler"
        ]
        for function_id, function in resources(template, "AWS::Serverless::Function").items()
    }
    assert handlers == HANDLERS


def test_the_cost_model_bills_the_deployed_architecture_and_sizes(template):
    deployed = CONFIGS["deployed"]
    assert props(template, "APIHandler")["Architectures"] == [deployed["architecture"]]
    assert props(template, "APIHandler")["MemorySize"] == deployed["api_memory_mb"]
    assert props(template, "TerminalEvents")["MemorySize"] == deployed["event_memory_mb"]

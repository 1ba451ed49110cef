"""Synthesize the CDK app once per test session, exactly as `make synth` does, into a temp dir.

The synthesis runs in a subprocess: ``chalice package`` imports the repository's ``app.py`` as
module ``app``, which must not collide with modules the other test suites have imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA_DIR = REPO_ROOT / "infra"
STACK_NAME = "nepting-cloud-api-prod"
ALARM_EMAIL = "oncall@example.com"
# The deployment as documented for production: the defaults plus the one required setting.
DEFAULT_CONTEXT = {"alarm_email": ALARM_EMAIL}


@dataclass
class Synthesis:
    returncode: int
    stdout: str
    stderr: str
    outdir: Path
    seconds: float

    @property
    def template_path(self) -> Path:
        return self.outdir / f"{STACK_NAME}.template.json"

    @property
    def template(self) -> dict[str, Any]:
        return json.loads(self.template_path.read_text())

    def messages(self, level: str) -> list[tuple[str, str]]:
        """(construct path, text) of every ``aws:cdk:<level>`` annotation in the stack."""
        metadata = json.loads((self.outdir / f"{STACK_NAME}.metadata.json").read_text())
        return [
            (path, str(entry["data"]))
            for path, entries in metadata.items()
            for entry in entries
            if entry["type"] == f"aws:cdk:{level}"
        ]


def _synthesize(outdir: Path, context: dict[str, str]) -> Synthesis:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDK_", "AWS_"))}
    env.update(
        CDK_OUTDIR=str(outdir),
        # Never reach for credentials: the synthesis must need none.
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_CONFIG_FILE=os.devnull,
        AWS_DEFAULT_REGION="eu-west-3",
    )
    started = time.monotonic()
    args = [arg for key, value in context.items() for arg in ("-c", f"{key}={value}")]
    done = subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=INFRA_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return Synthesis(done.returncode, done.stdout, done.stderr, outdir, time.monotonic() - started)


@pytest.fixture(scope="session")
def synthesis(tmp_path_factory: pytest.TempPathFactory) -> Synthesis:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the CDK (jsii) needs it to synthesize (see infra/README.md)")
    result = _synthesize(tmp_path_factory.mktemp("cdk.out"), DEFAULT_CONTEXT)
    if not result.template_path.exists():
        pytest.fail(f"synthesis produced no template (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def template(synthesis: Synthesis) -> dict[str, Any]:
    """The template as a plain dict, for walking policies and references."""
    return synthesis.template


@pytest.fixture(scope="session")
def cdk_template(synthesis: Synthesis) -> Any:
    """The same template as ``aws_cdk.assertions.Template``, for property matching."""
    from aws_cdk.assertions import Template

    return Template.from_json(synthesis.template)

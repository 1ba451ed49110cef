#!/usr/bin/env python3
"""Synthesize the deployment offline into infra/cdk.out: `make synth` (deploy: `make deploy`)."""

from __future__ import annotations

import os
import sys

# jsii warns loudly on Node.js 20 (past its end of life); the README asks for 22 or later.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk.cx_api import SynthesisMessageLevel
from nepting_infra.build import build_app


def main() -> int:
    app, stack = build_app()
    assembly = app.synth()
    errors = [
        message
        for artifact in assembly.stacks
        for message in artifact.messages
        if message.level == SynthesisMessageLevel.ERROR
    ]
    for message in errors:
        print(f"ERROR {message.id}: {message.entry.data}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s): the template in {assembly.directory} must not be deployed", file=sys.stderr)
        return 1
    print(f"synthesized {stack.stack_name} into {assembly.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

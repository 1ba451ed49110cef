#!/usr/bin/env python3
"""Synthesize the deployment offline into infra/cdk.out: `make synth` (deploy: `make deploy`).

Run directly, it takes CDK context as the CDK CLI does, ``-c key=value`` (``make synth
CDK_ARGS="-c alarm_email=oncall@example.com"``); under the CLI the context comes from the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys

# jsii warns loudly on Node.js 20 (past its end of life); the README asks for 22 or later.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk.cx_api import SynthesisMessageLevel
from nepting_infra.build import build_app
from nepting_infra.settings import DeploymentSettingsError


def parse_context(argv: list[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    context: dict[str, object] = {}
    for item in args.context:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"context must be KEY=VALUE, got {item!r}")
        context[key] = value
    return context


def main(argv: list[str]) -> int:
    try:
        app, stack = build_app(context=parse_context(argv))
    except DeploymentSettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    for line in stack.settings.summary():
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

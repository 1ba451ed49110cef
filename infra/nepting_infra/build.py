"""Assemble the CDK app: the stack, its feature flags, and the cdk-nag AwsSolutions checks."""

from __future__ import annotations

import os

from aws_cdk import App, Aspects, Environment
from cdk_nag import AwsSolutionsChecks

from .settings import APP_NAME, INFRA_DIR, DeploymentSettings
from .stack import NeptingCloudApiStack

# Feature flags this app relies on (CDK keeps old behaviour unless a flag is set).
FEATURE_FLAGS = {
    # Server access logs are delivered under a bucket policy, not the legacy log-delivery ACL.
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
    # CDK's built-in CloudFormation validation of the template: a finding fails the synthesis.
    "@aws-cdk/core:validateAgainstDefaultRules": True,
}


def build_app(outdir: str | None = None, context: dict[str, object] | None = None) -> tuple[App, NeptingCloudApiStack]:
    # `chalice package` needs a region name (for service principals) but calls no AWS API.
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("CDK_DEFAULT_REGION", "eu-west-3"))
    app = App(
        outdir=outdir or os.environ.get("CDK_OUTDIR") or str(INFRA_DIR / "cdk.out"),
        context={**FEATURE_FLAGS, **(context or {})},
    )
    settings = DeploymentSettings.from_context(app.node.try_get_context)
    stack = NeptingCloudApiStack(
        app,
        f"{APP_NAME}-{settings.stage}",
        settings=settings,
        description=f"Nepting Cloud API ({settings.stage}): API, terminal messaging, data, exports, alarms",
        env=Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION")),
    )
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack

"""The Chalice application, packaged by Chalice's own CDK construct, and its function settings.

``chalice package`` runs during synthesis (it needs no AWS call, only a region name for the
service principals, and PyPI for the Lambda wheels, which Chalice caches under the source
dir's ``.chalice/deployments``). The construct's stage configuration is one flat dict applied
to every function, so the per-function settings — role, timeout, memory, log group and the
environment derived from the access matrix — are set on each packaged function afterwards
through ``CfnInclude``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from chalice.cdk import Chalice
from constructs import Construct

from .front_door import RETRY_AFTER_S
from .functions import API_HANDLER, FUNCTIONS_BY_LOGICAL_ID, FunctionSpec
from .settings import APP_NAME, INFRA_DIR, DeploymentSettings

# Where the construct writes its intermediate packages (under the current directory).
CHALICE_WORKDIR = INFRA_DIR / ".build"
REST_API_ID = "RestAPI"
API_STAGE = "api"
# Graviton: 20 % cheaper per GB-second than x86_64 at the same memory. Chalice downloads the
# manylinux aarch64 wheels for it (pydantic_core is the one binary dependency).
LAMBDA_ARCHITECTURE = "arm64"


class UnknownFunctionError(RuntimeError):
    """app.py registers a function that the access matrix (functions.py) does not know."""


@contextlib.contextmanager
def _in_scratch_dir() -> Iterator[Path]:
    """A fresh directory for the construct's ``chalice.out/`` (it writes into the current one).

    One per synthesis, so that concurrent synths (tests beside ``make synth``) never share one;
    removed afterwards, as the construct has by then staged the packages it needs into cdk.out.
    """
    CHALICE_WORKDIR.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="synth-", dir=CHALICE_WORKDIR))
    previous = Path.cwd()
    os.chdir(scratch)
    try:
        yield scratch
    finally:
        os.chdir(previous)
        shutil.rmtree(scratch, ignore_errors=True)


class ChaliceApp(Construct):
    """The packaged app with one role per function; ``functions`` are importable L2 handles."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        common_environment: dict[str, str],
    ) -> None:
        super().__init__(scope, construct_id)
        self._settings = settings
        if not (settings.source_dir / "app.py").is_file():
            raise FileNotFoundError(f"no Chalice app at {settings.source_dir}/app.py")

        self.roles: dict[str, iam.Role] = {}
        for spec in FUNCTIONS_BY_LOGICAL_ID.values():
            self.roles[spec.name] = iam.Role(
                self,
                f"{spec.logical_id}Role",
                assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                description=f"Execution role of {self.function_name(spec)} only",
            )

        with _in_scratch_dir() as scratch:
            # Chalice names its stage after the scope's path: the stack's name, not ".../App".
            self.chalice = Chalice(
                Stack.of(self),
                "Chalice",
                source_dir=str(settings.source_dir),
                stage_config={
                    "api_gateway_stage": API_STAGE,
                    "lambda_architecture": LAMBDA_ARCHITECTURE,
                    # Only regional (and private) REST APIs can have their integration timeout
                    # raised above 29 s.
                    "api_gateway_endpoint_type": "REGIONAL",
                    # Each function gets its own role below; this one is only Chalice's default.
                    "manage_iam_role": False,
                    "iam_role_arn": self.roles[API_HANDLER].role_arn,
                    "environment_variables": common_environment,
                },
            )
            sam_template = _read_packaged_template(scratch)

        self.packaged_functions = _functions_of(sam_template)
        unknown = sorted(set(self.packaged_functions) - set(FUNCTIONS_BY_LOGICAL_ID))
        if unknown:
            raise UnknownFunctionError(
                f"app.py registers functions {unknown} that infra/nepting_infra/functions.py does "
                "not list: give each a row there (its tables, queues and timeout) to deploy it"
            )

        self.log_groups: dict[str, logs.LogGroup] = {}
        self.functions: dict[str, lambda_.IFunction] = {}
        for logical_id in self.packaged_functions:
            spec = FUNCTIONS_BY_LOGICAL_ID[logical_id]
            self.functions[spec.name] = self._configure_function(spec)

        self.rest_api_paths = _api_paths(sam_template)
        self._set_integration_timeout(settings.integration_timeout_ms)
        self._set_gateway_responses()

    def function_name(self, spec: FunctionSpec) -> str:
        return self._settings.resource_name(spec.slug)

    def memory_of(self, spec: FunctionSpec) -> int:
        if spec.name == API_HANDLER and self._settings.api_memory_mb is not None:
            return self._settings.api_memory_mb
        return spec.memory_mb

    def concurrency_of(self, spec: FunctionSpec) -> int | None:
        return None if spec.concurrency is None else int(getattr(self._settings, spec.concurrency))

    def timeout_of(self, spec: FunctionSpec) -> int:
        return self._settings.api_lambda_timeout_s if spec.name == API_HANDLER else spec.timeout_s

    def add_environment(self, spec: FunctionSpec, name: str, value: str) -> None:
        self.chalice.add_environment_variable(name, value, spec.logical_id)

    def _configure_function(self, spec: FunctionSpec) -> lambda_.IFunction:
        name = self.function_name(spec)
        role = self.roles[spec.name]
        log_group = logs.LogGroup(
            self,
            f"{spec.logical_id}Logs",
            log_group_name=f"/aws/lambda/{name}",
            retention=_retention(self._settings.log_retention_days),
            # Kept when the stack goes or replaces it, but removed when the very first deployment
            # rolls back, so that the retry does not stop at "already exists".
            removal_policy=RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
        )
        log_group.grant_write(role)
        self.log_groups[spec.name] = log_group
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="WriteTraces",
                # X-Ray's write actions have no resource-level permissions.
                actions=["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
                resources=["*"],
            )
        )

        cfn = self.chalice.get_resource(spec.logical_id)
        cfn.add_property_override("FunctionName", name)
        cfn.add_property_override("Role", role.role_arn)
        cfn.add_property_override("Timeout", self.timeout_of(spec))
        cfn.add_property_override("MemorySize", self.memory_of(spec))
        cfn.add_property_override("LoggingConfig", {"LogGroup": log_group.log_group_name})
        cfn.add_property_override("Tracing", "Active")
        if spec.concurrency is not None:
            cfn.add_property_override("ReservedConcurrentExecutions", self.concurrency_of(spec))
        # The role's policy must exist before Lambda validates event sources against it (the role
        # itself is already a dependency through the Role property).
        cfn.node.add_dependency(role.node.find_child("DefaultPolicy"))
        return lambda_.Function.from_function_attributes(
            self,
            f"{spec.logical_id}Handle",
            function_arn=cfn.get_att("Arn").to_string(),
            role=role,
            same_environment=True,
        )

    def _set_gateway_responses(self) -> None:
        """Answers API Gateway gives itself, in the contract's error format (an unknown route is a 404
        there, not API Gateway's default 403 "Missing Authentication Token")."""
        rest_api = self.chalice.get_resource(REST_API_ID)
        rest_api.add_property_override("DefinitionBody.x-amazon-apigateway-gateway-responses", gateway_responses())

    def _set_integration_timeout(self, timeout_ms: int) -> None:
        rest_api = self.chalice.get_resource(REST_API_ID)
        rest_api.add_property_override("Name", self._settings.resource_name("api"))
        for path, methods in self.rest_api_paths.items():
            escaped = path.replace(".", "\\.")
            for method in methods:
                rest_api.add_property_override(
                    f"DefinitionBody.paths.{escaped}.{method}.x-amazon-apigateway-integration.timeoutInMillis",
                    timeout_ms,
                )


# response type -> (status, code, message), as docs/payment-api.md's Error body.
GATEWAY_RESPONSES = {
    "MISSING_AUTHENTICATION_TOKEN": (404, "route.not_found", "No such route"),
    "RESOURCE_NOT_FOUND": (404, "route.not_found", "No such route"),
    "REQUEST_TOO_LARGE": (413, "request.too_large", "The request body is too large"),
    "THROTTLED": (429, "request.throttled", "Too many requests; retry later"),
    "INTEGRATION_TIMEOUT": (504, "gateway.timeout", "The API did not answer in time"),
    "INTEGRATION_FAILURE": (502, "gateway.integration_failure", "The API could not be reached"),
}


def gateway_responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for response_type, (status, code, message) in GATEWAY_RESPONSES.items():
        body = {"error": {"status": status, "code": code, "message": message, "description": message}}
        responses[response_type] = {
            "statusCode": status,
            "responseTemplates": {"application/json": json.dumps(body, separators=(",", ":"))},
        }
        if status == 429:
            responses[response_type]["responseParameters"] = {
                "gatewayresponse.header.Retry-After": f"'{RETRY_AFTER_S}'"
            }
    return responses


def _read_packaged_template(scratch: Path) -> dict[str, Any]:
    packaged = sorted((scratch / "chalice.out").glob("*.sam_with_assets.json"))
    if len(packaged) != 1:
        raise RuntimeError(f"expected one packaged Chalice template, found {packaged}")
    result: dict[str, Any] = json.loads(packaged[0].read_text())
    return result


def _functions_of(template: dict[str, Any]) -> list[str]:
    return [
        logical_id
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    ]


def _api_paths(template: dict[str, Any]) -> dict[str, list[str]]:
    api = template["Resources"].get(REST_API_ID)
    if api is None:
        return {}
    paths: dict[str, dict[str, Any]] = api["Properties"]["DefinitionBody"]["paths"]
    return {
        path: [m for m, op in ops.items() if isinstance(op, dict) and "x-amazon-apigateway-integration" in op]
        for path, ops in paths.items()
    }


# CloudWatch Logs accepts only these retention periods; a requested one is rounded up.
_RETENTIONS = {
    7: "ONE_WEEK",
    14: "TWO_WEEKS",
    30: "ONE_MONTH",
    60: "TWO_MONTHS",
    90: "THREE_MONTHS",
    180: "SIX_MONTHS",
    365: "ONE_YEAR",
    731: "TWO_YEARS",
    1827: "FIVE_YEARS",
    3653: "TEN_YEARS",
}


def _retention(days: int) -> logs.RetentionDays:
    chosen = next((d for d in sorted(_RETENTIONS) if d >= days), max(_RETENTIONS))
    return getattr(logs.RetentionDays, _RETENTIONS[chosen])


__all__ = ["APP_NAME", "ChaliceApp", "UnknownFunctionError"]

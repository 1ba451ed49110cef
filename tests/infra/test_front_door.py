"""The front door with the production options a synthesis with defaults does not show: a custom
domain with TLS 1.2 and the default endpoint disabled, and the WAF web ACL with its rate rule.

Built in-process around a stand-in for the API Chalice packages (no `chalice package` needed);
the full template with these options passes cfn-lint too (see infra/README.md, Tests).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

import pytest

from .conftest import INFRA_DIR

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

if shutil.which("node") is None:
    pytest.skip("Node.js is not installed: the CDK (jsii) needs it (see infra/README.md)", allow_module_level=True)

pytestmark = pytest.mark.infra

CERTIFICATE = "arn:aws:acm:eu-west-3:123456789012:certificate/0f2f2c9e-1111-2222-3333-444455556666"
PRODUCTION = {
    "alarm_email": "oncall@example.com",
    "api_integration_timeout_s": "122",
    "waf": "true",
    "waf_rate_limit": "600",
    "domain_name": "pay.example.com",
    "certificate_arn": CERTIFICATE,
    "hosted_zone_id": "Z0123456789ABCDEFGHIJ",
}


@pytest.fixture(scope="module")
def infra() -> Any:
    sys.path.insert(0, str(INFRA_DIR))
    try:
        import nepting_infra.front_door as front_door
        import nepting_infra.observability as observability
        import nepting_infra.settings as settings
    finally:
        sys.path.remove(str(INFRA_DIR))
    return settings, front_door, observability


@pytest.fixture(scope="module")
def production(infra: Any) -> dict[str, Any]:
    from aws_cdk import App, CfnResource, Stack
    from aws_cdk.assertions import Template

    settings_module, front_door, _ = infra
    settings = settings_module.DeploymentSettings.from_context(PRODUCTION.get)
    # CDK's own template validation is the full synthesis' job (conftest); here it would only add time.
    stack = Stack(App(builtin_cloud_formation_validation=False), "nepting-cloud-api-prod")
    api = CfnResource(
        stack, "RestAPI", type="AWS::Serverless::Api", properties={"StageName": "api", "DefinitionBody": {}}
    )
    front_door.FrontDoor(stack, "FrontDoor", settings=settings, rest_api=api)
    return Template.from_stack(stack).to_json()


def _of_type(template: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [r for r in template["Resources"].values() if r["Type"] == type_]


def test_custom_domain_uses_tls_1_2_and_the_default_endpoint_is_disabled(production):
    api = production["Resources"]["RestAPI"]["Properties"]
    assert api["Domain"] == {
        "DomainName": "pay.example.com",
        "CertificateArn": CERTIFICATE,
        "EndpointConfiguration": "REGIONAL",
        "SecurityPolicy": "TLS_1_2",
        "BasePath": ["/"],
        "Route53": {"HostedZoneId": "Z0123456789ABCDEFGHIJ"},
    }
    assert api["DisableExecuteApiEndpoint"] is True


def test_waf_rate_limits_each_address_with_a_contract_429_and_guards_the_api_stage(production):
    (acl,) = _of_type(production, "AWS::WAFv2::WebACL")
    props = acl["Properties"]
    assert props["Scope"] == "REGIONAL" and props["DefaultAction"] == {"Allow": {}}
    rules = {rule["Name"]: rule for rule in props["Rules"]}
    rate = rules["rate-per-ip"]
    assert rate["Statement"]["RateBasedStatement"] == {
        "Limit": 600,
        "AggregateKeyType": "IP",
        "EvaluationWindowSec": 300,
    }
    response = rate["Action"]["Block"]["CustomResponse"]
    assert response["ResponseCode"] == 429
    assert response["ResponseHeaders"] == [{"Name": "Retry-After", "Value": "5"}]
    body = json.loads(props["CustomResponseBodies"][response["CustomResponseBodyKey"]]["Content"])
    assert body["error"]["code"] == "request.throttled" and body["error"]["status"] == 429
    assert {"AWSManagedRulesAmazonIpReputationList", "AWSManagedRulesKnownBadInputsRuleSet"} <= set(rules)
    assert "AWSManagedRulesCommonRuleSet" not in rules, "it blocks bodies over 8 KB: payments carry up to 64 KB"
    (association,) = _of_type(production, "AWS::WAFv2::WebACLAssociation")
    # SAM resolves RestAPI.Stage to the stage it generates, which also orders the association after it.
    assert association["Properties"]["ResourceArn"] == {
        "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}::/restapis/${RestAPI}/stages/${RestAPI.Stage}"
    }


def test_raised_integration_timeout_throttles_the_payment_route_harder(production, infra):
    settings_module, _, _ = infra
    settings = settings_module.DeploymentSettings.from_context(PRODUCTION.get)
    (order,) = [
        m
        for m in production["Resources"]["RestAPI"]["Properties"]["MethodSettings"]
        if m["ResourcePath"] == "/~1v1~1connector~1order"
    ]
    assert order["ThrottlingRateLimit"] == settings.order_rate_limit
    assert order["ThrottlingRateLimit"] * 122 + order["ThrottlingBurstLimit"] <= settings.api_concurrency * 0.9


def test_the_dashboards_dimensioned_metrics_are_those_the_code_emits_with_a_dimension(infra):
    from .emitted_metrics import emitted_metrics

    _, _, observability = infra
    with_extra = {name: dims - {"service"} for name, dims in emitted_metrics().items() if dims != {"service"}}
    assert {name: {dim} for name, dim in observability.DIMENSIONED_METRICS.items()} == with_extra

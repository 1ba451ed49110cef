"""What stands between the internet and the API function: stage throttling, JSON access logs,
tracing, and optionally a WAF web ACL and a custom domain with TLS 1.2.

API Gateway's own 429 is the cheap refusal: a request it throttles never starts a Lambda, so a
flood or a password-guessing run is paid for in API Gateway requests, not in Lambda time. The
payment route is throttled to what the API function's reserved concurrency can hold (settings.py),
so load beyond it is answered ``429 request.throttled`` instead of Lambda throttling the function
into API Gateway ``500``s.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import CfnResource, Fn, RemovalPolicy
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from .settings import METRICS_NAMESPACE, DeploymentSettings

ORDER_ROUTE = "/v1/connector/order"
# Retry-After of API Gateway's and WAF's 429s (docs/payment-api.md: request.throttled).
RETRY_AFTER_S = 5
# One JSON object per request; every value a string (API Gateway writes "-" for a missing one).
ACCESS_LOG_FIELDS = {
    "requestId": "$context.requestId",
    "extendedRequestId": "$context.extendedRequestId",
    "requestTimeEpoch": "$context.requestTimeEpoch",
    "ip": "$context.identity.sourceIp",
    "userAgent": "$context.identity.userAgent",
    "httpMethod": "$context.httpMethod",
    "resourcePath": "$context.resourcePath",
    "path": "$context.path",
    "protocol": "$context.protocol",
    "status": "$context.status",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integrationLatency",
    "integrationStatus": "$context.integrationStatus",
    "errorType": "$context.error.responseType",
    "wafStatus": "$context.waf.status",
    "xrayTraceId": "$context.xrayTraceId",
}
THROTTLED_BODY = {
    "error": {
        "status": 429,
        "code": "request.throttled",
        "message": "Too many requests; retry later",
        "description": "Too many requests; retry later",
    }
}
# AWS-managed rule groups that cannot misread a payment: addresses known for abuse, and request
# shapes of known exploits. (The common rule set would block bodies over 8 KB and some free text.)
MANAGED_RULE_GROUPS = ("AWSManagedRulesAmazonIpReputationList", "AWSManagedRulesKnownBadInputsRuleSet")


def access_log_format() -> str:
    return json.dumps(ACCESS_LOG_FIELDS, separators=(",", ":"))


def method_path(path: str) -> str:
    """A resource path as MethodSettings want it: ``/v1/x`` -> ``/~1v1~1x``."""
    return "/" + path.replace("/", "~1")


class FrontDoor(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        rest_api: CfnResource,
    ) -> None:
        super().__init__(scope, construct_id)
        self._settings = settings
        self.access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            log_group_name=f"/aws/apigateway/{settings.resource_name('api')}/access",
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
        )
        if settings.manage_api_gateway_account:
            rest_api.node.add_dependency(self._account_logging_role())

        rest_api.add_property_override("TracingEnabled", True)
        rest_api.add_property_override(
            "AccessLogSetting", {"DestinationArn": self.access_logs.log_group_arn, "Format": access_log_format()}
        )
        rest_api.add_property_override("MethodSettings", self.method_settings())
        if settings.domain_name:
            rest_api.add_property_override("Domain", self.domain())
            # The custom domain's TLS policy means nothing if the default endpoint stays open.
            rest_api.add_property_override("DisableExecuteApiEndpoint", True)

        self.throttled = logs.MetricFilter(
            self,
            "Throttled",
            log_group=self.access_logs,
            filter_pattern=logs.FilterPattern.string_value("$.status", "=", "429"),
            metric_namespace=METRICS_NAMESPACE,
            metric_name="ApiThrottled",
            metric_value="1",
            default_value=0,
        )
        self.web_acl: wafv2.CfnWebACL | None = None
        if settings.waf:
            stage_arn = Fn.sub(
                "arn:${AWS::Partition}:apigateway:${AWS::Region}::/restapis/${"
                + rest_api.logical_id
                + "}/stages/${"
                + rest_api.logical_id
                + ".Stage}"
            )
            self.web_acl = self._web_acl()
            wafv2.CfnWebACLAssociation(
                self, "WebAclAssociation", resource_arn=stage_arn, web_acl_arn=self.web_acl.attr_arn
            )

    def method_settings(self) -> list[dict[str, Any]]:
        s = self._settings
        return [
            {
                "ResourcePath": "/*",
                "HttpMethod": "*",
                "ThrottlingRateLimit": s.api_rate_limit,
                "ThrottlingBurstLimit": s.api_burst_limit,
            },
            {
                "ResourcePath": method_path(ORDER_ROUTE),
                "HttpMethod": "POST",
                "ThrottlingRateLimit": s.order_rate_limit,
                "ThrottlingBurstLimit": s.order_burst_limit,
            },
        ]

    def domain(self) -> dict[str, Any]:
        s = self._settings
        domain: dict[str, Any] = {
            "DomainName": s.domain_name,
            "CertificateArn": s.certificate_arn,
            "EndpointConfiguration": "REGIONAL",
            "SecurityPolicy": "TLS_1_2",
            "BasePath": ["/"],
        }
        if s.hosted_zone_id:
            domain["Route53"] = {"HostedZoneId": s.hosted_zone_id}
        return domain

    def _account_logging_role(self) -> apigateway.CfnAccount:
        """API Gateway writes access logs only once the account names a role for it (an
        account-wide setting: one stage per account and region, see iot.py's StageClaim)."""
        role = iam.Role(
            self,
            "CloudWatchRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            description="Lets API Gateway write this account's API access logs to CloudWatch Logs",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AmazonAPIGatewayPushToCloudWatchLogs")
            ],
        )
        # Other APIs of the account may log through it too: it outlives the stack.
        role.apply_removal_policy(RemovalPolicy.RETAIN)
        account = apigateway.CfnAccount(self, "Account", cloud_watch_role_arn=role.role_arn)
        return account

    def _web_acl(self) -> wafv2.CfnWebACL:
        s = self._settings
        name = s.resource_name("api")

        def visibility(metric: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
            return wafv2.CfnWebACL.VisibilityConfigProperty(
                cloud_watch_metrics_enabled=True, metric_name=metric, sampled_requests_enabled=True
            )

        rules = [
            wafv2.CfnWebACL.RuleProperty(
                name="rate-per-ip",
                priority=0,
                statement=wafv2.CfnWebACL.StatementProperty(
                    rate_based_statement=wafv2.CfnWebACL.RateBasedStatementProperty(
                        limit=s.waf_rate_limit, aggregate_key_type="IP", evaluation_window_sec=300
                    )
                ),
                action=wafv2.CfnWebACL.RuleActionProperty(
                    block=wafv2.CfnWebACL.BlockActionProperty(
                        custom_response=wafv2.CfnWebACL.CustomResponseProperty(
                            response_code=429,
                            custom_response_body_key="throttled",
                            response_headers=[
                                wafv2.CfnWebACL.CustomHTTPHeaderProperty(name="Retry-After", value=str(RETRY_AFTER_S))
                            ],
                        )
                    )
                ),
                visibility_config=visibility(f"{name}-rate-per-ip"),
            )
        ]
        for priority, group in enumerate(MANAGED_RULE_GROUPS, start=1):
            rules.append(
                wafv2.CfnWebACL.RuleProperty(
                    name=group,
                    priority=priority,
                    statement=wafv2.CfnWebACL.StatementProperty(
                        managed_rule_group_statement=wafv2.CfnWebACL.ManagedRuleGroupStatementProperty(
                            vendor_name="AWS", name=group
                        )
                    ),
                    override_action=wafv2.CfnWebACL.OverrideActionProperty(none={}),
                    visibility_config=visibility(f"{name}-{group}"),
                )
            )
        return wafv2.CfnWebACL(
            self,
            "WebAcl",
            name=name,
            scope="REGIONAL",
            description=f"Rate limit per address and known-bad traffic in front of {name}",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            custom_response_bodies={
                "throttled": wafv2.CfnWebACL.CustomResponseBodyProperty(
                    content_type="APPLICATION_JSON", content=json.dumps(THROTTLED_BODY, separators=(",", ":"))
                )
            },
            rules=rules,
            visibility_config=visibility(name),
        )

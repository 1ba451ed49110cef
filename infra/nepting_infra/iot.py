"""IoT Core: the terminals' thing type and policy, and the rules that route their messages.

A terminal authenticates with its X.509 certificate, attached to its thing (named after its
terminal id, docs/terminal-protocol.md). The one policy below serves every terminal: the policy variable
``${iot:Connection.Thing.ThingName}`` pins each connection to its own client id and topics, so
a stolen certificate can neither impersonate another terminal nor read its payment requests.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnResource, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from aws_cdk import custom_resources as cr
from constructs import Construct

from .settings import DeploymentSettings

# An account-wide parameter only one stage can create: see StageClaim.
STAGE_CLAIM_PARAMETER = "/nepting-cloud-api/terminal-topics-owner"
# Construct id of the Lambda that every AwsCustomResource in a stack shares (fixed by the CDK).
AWS_CUSTOM_RESOURCE_PROVIDER_ID = "AWS679f53fac002430cb0da5b7982bd2287"
TOPIC_ROOT = "nepting/v1/terminals"
THING = "${iot:Connection.Thing.ThingName}"
# The handlers get the raw payload (base64, so a malformed one still arrives), its topic (the
# terminal id is checked against it) and the broker's receive time.
RULE_SQL = "SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_at FROM '{}'"
# IoT Core's lifecycle events: only the broker publishes them, so they are the authority on presence
# (a terminal's signed status can be replayed). The status handler gets the event as IoT sends it.
PRESENCE_RULE_SQL = "SELECT * FROM '$aws/events/presence/+/+'"


def terminal_policy_document(stack: Stack) -> dict[str, object]:
    def arn(resource: str) -> str:
        return f"arn:{Aws.PARTITION}:iot:{stack.region}:{stack.account}:{resource}"

    own = f"{TOPIC_ROOT}/{THING}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ConnectAsOwnThingOnly",
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": arn(f"client/{THING}"),
                # The certificate must be attached to the thing whose name is the client id.
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Sid": "SubscribeToOwnRequests",
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": arn(f"topicfilter/{own}/requests"),
            },
            {
                "Sid": "ReceiveOwnRequests",
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": arn(f"topic/{own}/requests"),
            },
            {
                "Sid": "PublishOwnEventsAndStatus",
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": [arn(f"topic/{own}/events"), arn(f"topic/{own}/status")],
            },
            {
                # status is the only retained topic (and the connection's last will).
                "Sid": "RetainOwnStatus",
                "Effect": "Allow",
                "Action": "iot:RetainPublish",
                "Resource": arn(f"topic/{own}/status"),
            },
        ],
    }


def thing_type_name(settings: DeploymentSettings) -> str:
    """``nepting-cloud-api-prod-terminal``: what ``python -m admin enroll-terminal`` gives each thing."""
    return settings.resource_name("terminal")


class StageClaim(Construct):
    """One stage per account and region, enforced at deployment.

    The terminal protocol fixes the topics (``nepting/v1/terminals/{id}/…``, docs/terminal-protocol.md) and IoT
    topics are shared by the whole account and region, so two stages there would each receive
    every terminal's events and presence: each would count the other's as refused, and a load
    test on one would draw on the other's reserved concurrency. Every resource name carries the
    stage, except this parameter: a second stage's deployment stops at it ("already exists") before
    anything else is created, naming the stage that owns the account.
    """

    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings) -> None:
        super().__init__(scope, construct_id)
        self.parameter = ssm.StringParameter(
            self,
            "Parameter",
            parameter_name=STAGE_CLAIM_PARAMETER,
            string_value=Stack.of(self).stack_name,
            description="The Nepting Cloud API stage that owns the terminal topics of this account and region",
        )


class TerminalFleet(Construct):
    """Thing type and the per-terminal policy; enrolment attaches them to each thing."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings) -> None:
        super().__init__(scope, construct_id)
        self.thing_type = iot.CfnThingType(
            self,
            "ThingType",
            thing_type_name=thing_type_name(settings),
            thing_type_properties=iot.CfnThingType.ThingTypePropertiesProperty(
                thing_type_description="Nepting payment terminal speaking the Cloud API MQTT protocol",
                searchable_attributes=["merchant_id", "manufacturer"],
            ),
        )
        self.policy = iot.CfnPolicy(
            self,
            "TerminalPolicy",
            policy_name=settings.resource_name("terminal"),
            policy_document=terminal_policy_document(Stack.of(self)),
        )


class TerminalMessageRules(Construct):
    """One topic rule per terminal → cloud topic, each invoking its handler, and the presence rule:
    the broker's lifecycle events go to the status handler."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploymentSettings,
        handlers: dict[str, lambda_.IFunction],
        error_queue: sqs.IQueue,
    ) -> None:
        super().__init__(scope, construct_id)
        error_role = iam.Role(
            self,
            "ErrorActionRole",
            assumed_by=iam.ServicePrincipal("iot.amazonaws.com"),
            description="Lets IoT rules park messages they could not deliver",
        )
        error_queue.grant_send_messages(error_role)
        self.rules: dict[str, iot.CfnTopicRule] = {}
        routes = [
            (suffix, RULE_SQL.format(f"{TOPIC_ROOT}/+/{suffix}"), handler) for suffix, handler in handlers.items()
        ]
        if "status" in handlers:
            routes.append(("presence", PRESENCE_RULE_SQL, handlers["status"]))
        for suffix, sql, handler in routes:
            rule = iot.CfnTopicRule(
                self,
                f"{suffix.title()}Rule",
                rule_name=f"nepting_{settings.stage}_terminal_{suffix}",
                topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                    sql=sql,
                    aws_iot_sql_version="2016-03-23",
                    rule_disabled=False,
                    actions=[
                        iot.CfnTopicRule.ActionProperty(
                            lambda_=iot.CfnTopicRule.LambdaActionProperty(function_arn=handler.function_arn)
                        )
                    ],
                    error_action=iot.CfnTopicRule.ActionProperty(
                        sqs=iot.CfnTopicRule.SqsActionProperty(
                            queue_url=error_queue.queue_url, role_arn=error_role.role_arn, use_base64=False
                        )
                    ),
                ),
            )
            handler.add_permission(
                f"InvokedByIot{suffix.title()}Rule",
                principal=iam.ServicePrincipal("iot.amazonaws.com"),
                source_arn=rule.attr_arn,
                source_account=Aws.ACCOUNT_ID,
            )
            self.rules[suffix] = rule


class IotDataEndpoint(Construct):
    """The account's ATS data endpoint, looked up at deploy time (synthesis stays offline)."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        call = cr.AwsSdkCall(
            service="Iot",
            action="describeEndpoint",
            parameters={"endpointType": "iot:Data-ATS"},
            physical_resource_id=cr.PhysicalResourceId.of("iot-data-ats-endpoint"),
            output_paths=["endpointAddress"],
        )
        lookup = cr.AwsCustomResource(
            self,
            "Lookup",
            on_create=call,
            on_update=call,
            # DescribeEndpoint has no resource-level permissions.
            policy=cr.AwsCustomResourcePolicy.from_sdk_calls(resources=cr.AwsCustomResourcePolicy.ANY_RESOURCE),
            install_latest_aws_sdk=False,
        )
        self.address = lookup.get_response_field("endpointAddress")
        # CDK's shared provider function depends on its role twice over (DependsOn and GetAtt).
        provider = Stack.of(self).node.try_find_child(AWS_CUSTOM_RESOURCE_PROVIDER_ID)
        if provider is not None and isinstance(provider.node.default_child, CfnResource):
            provider.node.default_child.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})

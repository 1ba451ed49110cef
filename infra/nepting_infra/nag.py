"""cdk-nag (AwsSolutions) suppressions: each names the rule, the finding and why it is accepted.

Suppressions are scoped to the exact finding (``applies_to``) wherever cdk-nag reports one, so a
new wildcard elsewhere in the same policy still fails the synthesis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Stack
from cdk_nag import NagPackSuppression, NagSuppressions

from .iot import AWS_CUSTOM_RESOURCE_PROVIDER_ID

if TYPE_CHECKING:
    from .stack import NeptingCloudApiStack


ROLE_WILDCARDS = [
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        applies_to=[{"regex": "/^Resource::<Tables[A-Za-z]+[0-9A-F]{8}\\.Arn>\\/index\\/\\*$/g"}],
        reason="Queries through the global secondary indexes of a table this function is granted: "
        "the wildcard covers that one table's indexes, nothing else.",
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        applies_to=[{"regex": "/^Resource::<Tables[A-Za-z]+[0-9A-F]{8}\\.Arn>\\/export\\/\\*$/g"}],
        reason="finance_export follows the exports it starts on the transactions table; export ids are "
        "made by DynamoDB, so they can only be named by wildcard under that table.",
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        applies_to=[
            "Resource::arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:topic/nepting/v1/terminals/*/requests"
        ],
        reason="The API sends payment requests to whichever enrolled terminal a merchant names: the "
        "wildcard is the terminal id, and only the requests topic can be published to.",
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        applies_to=["Resource::arn:<AWS::Partition>:kms:<AWS::Region>:<AWS::AccountId>:key/*"],
        reason="The operator chooses the key of the IPN secret (aws/ssm or their own). Decryption is "
        "allowed only via SSM and only with the encryption context of that one parameter.",
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        applies_to=["Resource::*"],
        reason="Actions without resource-level permissions, each on its own statement: "
        "xray:PutTraceSegments and xray:PutTelemetryRecords (every function's traces), and "
        "dynamodb:ListStreams for the payments-stream event source mapping (whose stream is granted "
        "by its ARN).",
    ),
    NagPackSuppression(
        id="AwsSolutions-IAM5",
        applies_to=[{"regex": "/^Resource::<Exports[A-Za-z]*[0-9A-F]{8}\\.Arn>\\/exports\\/\\*$/g"}],
        reason="DynamoDB writes an export as many objects under a prefix it names per run; the "
        "wildcard is confined to the bucket's exports/ prefix.",
    ),
]


def add_suppressions(stack: NeptingCloudApiStack) -> None:
    for role in stack.app.roles.values():
        NagSuppressions.add_resource_suppressions(role, ROLE_WILDCARDS, apply_to_children=True)
    NagSuppressions.add_resource_suppressions(
        stack.front_door,
        [
            NagPackSuppression(
                id="AwsSolutions-IAM4",
                applies_to=[
                    "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
                ],
                reason="The account-wide role API Gateway assumes to write access logs; AWS keeps this "
                "policy to exactly the log actions API Gateway needs, for any API's log group.",
            )
        ],
        apply_to_children=True,
    )

    for queue in (
        stack.queues.order_notifications_dlq,
        stack.queues.terminal_messages_dlq,
        stack.queues.finance_export_dlq,
    ):
        NagSuppressions.add_resource_suppressions(
            queue,
            [
                NagPackSuppression(
                    id="AwsSolutions-SQS3",
                    reason="This queue is itself a dead-letter queue (an on-failure destination, not a "
                    "redrive target, which cdk-nag cannot see); it is alarmed and replayed by hand.",
                )
            ],
        )
    _suppress_custom_resource_provider(stack)


def _suppress_custom_resource_provider(stack: Stack) -> None:
    provider = stack.node.try_find_child(AWS_CUSTOM_RESOURCE_PROVIDER_ID)
    if provider is None:
        return
    NagSuppressions.add_resource_suppressions(
        provider,
        [
            NagPackSuppression(
                id="AwsSolutions-IAM4",
                applies_to=["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
                reason="CDK's own deploy-time lookup function (IoT data endpoint): the managed policy only "
                "lets it write its logs.",
            ),
        ],
        apply_to_children=True,
    )
    for child in stack.node.find_all():
        if child.node.id == "CustomResourcePolicy":
            NagSuppressions.add_resource_suppressions(
                child,
                [
                    NagPackSuppression(
                        id="AwsSolutions-IAM5",
                        applies_to=["Resource::*"],
                        reason="iot:DescribeEndpoint has no resource-level permissions.",
                    )
                ],
            )

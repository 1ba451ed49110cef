"""The whole deployment in one stack: the Chalice app and everything Chalice does not manage."""

from __future__ import annotations

from aws_cdk import Annotations, Aws, CfnOutput, Duration, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_lambda_event_sources as sources
from constructs import Construct

from .chalice_app import API_STAGE, REST_API_ID, ChaliceApp
from .data import EXPORT_PREFIX, SECRET_TABLES, ExportBucket, Tables
from .front_door import FrontDoor
from .functions import FUNCTIONS_BY_NAME, QUEUE_ENV, TABLE_ENV, FunctionSpec
from .iot import TOPIC_ROOT, IotDataEndpoint, StageClaim, TerminalFleet, TerminalMessageRules
from .messaging import Queues
from .nag import add_suppressions
from .observability import Observability, Watched
from .settings import ACK_TIMEOUT_MS, APP_NAME, METRICS_NAMESPACE, DeploymentSettings

# SQS consumers whose oldest message, past this age in seconds, is a backlog. The notifier delays
# its own retries by up to 900 s, so its queue holds messages that old by design.
QUEUE_BACKLOG_S = {"ipn": 300, "merchant-notifications": 1_800}
# Functions that answer ReportBatchItemFailures; their name is the metric's ``source``.
BATCH_CONSUMERS = ("order_notifications", "ipn_ingest", "merchant_notifier")

# Prefix of the payments table's keys for order heads (the records order notifications follow).
ORDER_KEY_PREFIX = "ORDER#"


class NeptingCloudApiStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings, **kwargs: object) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.settings = settings
        self.stage_claim = StageClaim(self, "StageClaim", settings=settings)
        self.tables = Tables(self, "Tables", settings=settings)
        self.queues = Queues(self, "Queues", settings=settings)
        self.exports = ExportBucket(self, "Exports", settings=settings)
        self.fleet = TerminalFleet(self, "Fleet", settings=settings)

        self.app = ChaliceApp(
            self,
            "App",
            settings=settings,
            common_environment={
                "STAGE": settings.stage,
                "POWERTOOLS_SERVICE_NAME": APP_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "TERMINAL_CHANNEL": "iot",
                "ACK_TIMEOUT_MS": str(ACK_TIMEOUT_MS),
                "PAYMENT_DEADLINE_MS": str(settings.payment_deadline_ms),
                "ASYNC_PAYMENT_DEADLINE_MS": str(settings.async_payment_deadline_ms),
            },
        )
        if settings.deadline_was_capped:
            Annotations.of(self).add_warning_v2(
                "nepting:payment-deadline-capped",
                f"PAYMENT_DEADLINE_MS is {settings.payment_deadline_ms} ms, not the "
                f"{settings.async_payment_deadline_ms} asked for, to end before the "
                f"{settings.integration_timeout_ms} ms API Gateway integration timeout: a customer gets "
                f"at most {settings.max_customer_time_s} s synchronously; see infra/README.md",
            )
        self.front_door = FrontDoor(
            self,
            "FrontDoor",
            settings=settings,
            rest_api=self.app.chalice.get_resource(REST_API_ID),
        )

        for name in self.app.functions:
            self._grant(FUNCTIONS_BY_NAME[name])
        self._wire_event_sources()
        self._wire_terminal_messages()
        self._wire_daily_export()

        specs = [FUNCTIONS_BY_NAME[name] for name in self.app.functions]
        self.observability = Observability(
            self,
            "Observability",
            settings=settings,
            watched=Watched(
                function_names={spec.name: self.app.function_name(spec) for spec in specs},
                reserved_concurrency={
                    spec.name: reserved for spec in specs if (reserved := self.app.concurrency_of(spec)) is not None
                },
                dead_letter_queues=self.queues.dead_letter_queues,
                work_queues={
                    "ipn": (self.queues.ipn, QUEUE_BACKLOG_S["ipn"]),
                    "merchant-notifications": (self.queues.notifications, QUEUE_BACKLOG_S["merchant-notifications"]),
                },
                iot_rules={topic: rule.rule_name or "" for topic, rule in self.terminal_rules.rules.items()},
                batch_consumers=tuple(name for name in BATCH_CONSUMERS if name in self.app.functions),
                api_name=settings.resource_name("api"),
                api_stage=API_STAGE,
                web_acl_name=self.front_door.web_acl.name if self.front_door.web_acl else None,
            ),
        )
        self._outputs()
        add_suppressions(self)

    # --- least privilege: each role gets exactly its row of the access matrix -------------------

    def _grant(self, spec: FunctionSpec) -> None:
        role = self.app.roles[spec.name]
        for key in spec.reads:
            self.tables.by_key[key].grant_read_data(role)
        for key in spec.read_writes:
            self.tables.by_key[key].grant_read_write_data(role)
        for key in spec.tables:
            self.app.add_environment(spec, TABLE_ENV[key], self.tables.by_key[key].table_name)
        self._grant_secrets_key(spec, role)
        for key in spec.sends_to:
            self.queues.by_key[key].grant_send_messages(role)
            self.app.add_environment(spec, QUEUE_ENV[key], self.queues.by_key[key].queue_url)
        if spec.publishes_to_terminals:
            role.add_to_principal_policy(
                iam.PolicyStatement(
                    sid="PublishPaymentRequestsToTerminals",
                    actions=["iot:Publish"],
                    resources=[
                        self.format_arn(service="iot", resource="topic", resource_name=f"{TOPIC_ROOT}/*/requests")
                    ],
                )
            )
            # A host name: the IoT channel adds the scheme itself.
            endpoint = self.settings.iot_data_endpoint or IotDataEndpoint(self, "IotDataEndpoint").address
            self.app.add_environment(spec, "IOT_DATA_ENDPOINT", endpoint)
        if spec.reads_ipn_secret:
            self._grant_ipn_secret(spec, role)
        if spec.exports_transactions:
            self._grant_export(spec, role)

    def _grant_secrets_key(self, spec: FunctionSpec, role: iam.IRole) -> None:
        """The key of the tables holding secrets, usable only by DynamoDB on this role's behalf."""
        reads = [key for key in spec.tables if key in SECRET_TABLES]
        if not reads:
            return
        actions = ["kms:Decrypt", "kms:DescribeKey"]
        if any(key in SECRET_TABLES for key in spec.read_writes):
            actions += ["kms:Encrypt", "kms:GenerateDataKey"]
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="UseSecretsKeyThroughDynamoDB",
                actions=actions,
                resources=[self.tables.secrets_key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"dynamodb.{Aws.REGION}.amazonaws.com"}},
            )
        )

    def _grant_ipn_secret(self, spec: FunctionSpec, role: iam.IRole) -> None:
        name = self.settings.ipn_secret_parameter
        parameter_arn = self.format_arn(service="ssm", resource="parameter", resource_name=name.lstrip("/"))
        role.add_to_principal_policy(
            iam.PolicyStatement(sid="ReadIpnSecret", actions=["ssm:GetParameter"], resources=[parameter_arn])
        )
        # The operator creates the SecureString (with the AWS-managed or their own key); decryption is
        # allowed only through SSM and only for this parameter.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="DecryptIpnSecretThroughSsm",
                actions=["kms:Decrypt"],
                resources=[self.format_arn(service="kms", resource="key", resource_name="*")],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": f"ssm.{Aws.REGION}.amazonaws.com",
                        "kms:EncryptionContext:PARAMETER_ARN": parameter_arn,
                    }
                },
            )
        )
        self.app.add_environment(spec, "IPN_SECRET_PARAMETER", name)

    def _grant_export(self, spec: FunctionSpec, role: iam.IRole) -> None:
        table = self.tables.transactions
        bucket = self.exports.bucket
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ExportTransactions",
                # DescribeTable: the export call needs the table's ARN, looked up by name.
                actions=["dynamodb:DescribeTable", "dynamodb:ExportTableToPointInTime"],
                resources=[table.table_arn],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="FollowTransactionExports",
                actions=["dynamodb:DescribeExport"],
                resources=[f"{table.table_arn}/export/*"],
            )
        )
        # DynamoDB writes the export with the caller's permissions (these three, per the DynamoDB
        # export documentation). Turning it into CSV/Parquet is `python -m admin export`'s job.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="WriteExports",
                actions=["s3:PutObject", "s3:PutObjectAcl", "s3:AbortMultipartUpload"],
                resources=[bucket.arn_for_objects(f"{EXPORT_PREFIX}*")],
            )
        )
        self.app.add_environment(spec, "TRANSACTIONS_TABLE", table.table_name)
        self.app.add_environment(spec, "EXPORT_BUCKET", bucket.bucket_name)
        self.app.add_environment(spec, "EXPORT_PREFIX", EXPORT_PREFIX)

    # --- event sources ------------------------------------------------------------------------

    # A handler not (yet) registered in app.py is not wired; tests/infra insists on all of them.

    def _wire_event_sources(self) -> None:
        functions = self.app.functions
        if "ipn_ingest" in functions:
            functions["ipn_ingest"].add_event_source(
                sources.SqsEventSource(self.queues.ipn, batch_size=10, report_batch_item_failures=True)
            )
        if "merchant_notifier" in functions:
            functions["merchant_notifier"].add_event_source(
                sources.SqsEventSource(self.queues.notifications, batch_size=5, report_batch_item_failures=True)
            )
        if "order_notifications" not in functions:
            return
        functions["order_notifications"].add_event_source(
            sources.DynamoEventSource(
                self.tables.payments,
                starting_position=lambda_.StartingPosition.TRIM_HORIZON,
                batch_size=25,
                bisect_batch_on_error=True,
                retry_attempts=10,
                max_record_age=Duration.hours(24),
                report_batch_item_failures=True,
                on_failure=sources.SqsDlq(self.queues.order_notifications_dlq),
                filters=[
                    lambda_.FilterCriteria.filter(
                        {
                            "eventName": lambda_.FilterRule.or_("INSERT", "MODIFY"),
                            "dynamodb": {"Keys": {"pk": {"S": lambda_.FilterRule.begins_with(ORDER_KEY_PREFIX)}}},
                        }
                    )
                ],
            )
        )

    def _wire_terminal_messages(self) -> None:
        handlers = {
            suffix: self.app.functions[name]
            for suffix, name in (("events", "terminal_events"), ("status", "terminal_status"))
            if name in self.app.functions
        }
        self.terminal_rules = TerminalMessageRules(
            self,
            "TerminalMessages",
            settings=self.settings,
            handlers=handlers,
            error_queue=self.queues.terminal_messages_dlq,
        )
        # IoT invokes asynchronously: an event whose handler fails every retry lands here too.
        for handler in handlers.values():
            handler.configure_async_invoke(
                on_failure=destinations.SqsDestination(self.queues.terminal_messages_dlq),
                retry_attempts=2,
                max_event_age=Duration.hours(1),
            )

    def _wire_daily_export(self) -> None:
        export = self.app.functions.get("finance_export")
        if export is None:
            return
        self.export_schedule = events.Rule(
            self,
            "DailyFinanceExport",
            description="Exports the Console transactions for finance every night",
            schedule=events.Schedule.cron(minute="30", hour="2"),
            targets=[
                targets.LambdaFunction(
                    export,
                    dead_letter_queue=self.queues.finance_export_dlq,
                    retry_attempts=2,
                    max_event_age=Duration.hours(6),
                )
            ],
        )
        export.configure_async_invoke(
            on_failure=destinations.SqsDestination(self.queues.finance_export_dlq), retry_attempts=2
        )

    def _outputs(self) -> None:
        s = self.settings
        url = (
            f"https://{s.domain_name}/"
            if s.domain_name
            else self.app.chalice.sam_template.get_output("EndpointURL").value
        )
        CfnOutput(self, "ApiUrl", value=url)
        CfnOutput(self, "PaymentDeadlineMs", value=str(s.payment_deadline_ms))
        CfnOutput(
            self,
            "MaxSynchronousCustomerSeconds",
            value=str(s.max_customer_time_s),
            description="The longest a customer can take at the terminal and get a synchronous answer",
        )
        CfnOutput(self, "ApiReservedConcurrency", value=str(s.api_concurrency))
        CfnOutput(self, "PaymentRouteRateLimit", value=str(s.order_rate_limit))
        CfnOutput(self, "AlarmTopicArn", value=self.observability.topic.topic_arn)
        CfnOutput(self, "SecretsKeyArn", value=self.tables.secrets_key.key_arn)
        CfnOutput(self, "AccessLogGroup", value=self.front_door.access_logs.log_group_name)
        CfnOutput(self, "TerminalPolicyName", value=self.fleet.policy.ref)
        CfnOutput(self, "TerminalThingType", value=self.fleet.thing_type.ref)
        CfnOutput(self, "ExportBucketName", value=self.exports.bucket.bucket_name)
        for key, table in self.tables.by_key.items():
            CfnOutput(self, f"{TABLE_ENV[key].title().replace('_', '')}", value=table.table_name)
        queues = {"ipn": self.queues.ipn, "merchant-notifications": self.queues.notifications}
        for name, queue in {**queues, **self.queues.dead_letter_queues}.items():
            CfnOutput(self, f"{name.title().replace('-', '')}Url", value=queue.queue_url)

"""What the synthesized template deploys: data, messaging, IoT, exports, alarms and timings.

Expectations are written out from the design (CONTRACT.md, ARCHITECTURE.md and the infra
brief), not read from infra/, so a wrong row in infra's access matrix fails here.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

if shutil.which("node") is None:
    pytest.skip("Node.js is not installed: the CDK (jsii) needs it (see infra/README.md)", allow_module_level=True)

from aws_cdk.assertions import Match

from .template_queries import (
    PREFIX,
    as_list,
    props,
    queue_id,
    referenced_ids,
    resources,
    table_id,
)

pytestmark = pytest.mark.infra

FUNCTIONS = {
    "APIHandler": "api-handler",
    "TerminalEvents": "terminal-events",
    "TerminalStatus": "terminal-status",
    "OrderNotifications": "order-notifications",
    "IpnIngest": "ipn-ingest",
    "MerchantNotifier": "merchant-notifier",
    "FinanceExport": "finance-export",
}
DEAD_LETTER_QUEUES = [
    "ipn-dlq",
    "merchant-notifications-dlq",
    "order-notifications-dlq",
    "terminal-messages-dlq",
    "finance-export-dlq",
]
ACK_TIMEOUT_MS = 10_000


def _env(template: dict[str, Any], function_id: str) -> dict[str, Any]:
    result: dict[str, Any] = props(template, function_id)["Environment"]["Variables"]
    return result


# --- the application ---------------------------------------------------------------------------


def test_every_designed_function_is_deployed_under_its_own_name(template):
    functions = resources(template, "AWS::Serverless::Function")
    assert set(functions) == set(FUNCTIONS)
    for function_id, slug in FUNCTIONS.items():
        assert props(template, function_id)["FunctionName"] == PREFIX + slug
        assert props(template, function_id)["Runtime"] == "python3.11"


def test_every_function_logs_to_its_own_log_group_with_retention(template):
    groups = resources(template, "AWS::Logs::LogGroup")
    for function_id, slug in FUNCTIONS.items():
        (group_id,) = referenced_ids(props(template, function_id)["LoggingConfig"])
        assert groups[group_id]["Properties"]["LogGroupName"] == f"/aws/lambda/{PREFIX}{slug}"
        assert groups[group_id]["Properties"]["RetentionInDays"] >= 30


def test_api_is_regional_and_every_integration_times_out_at_the_configured_29_s(template):
    api = props(template, "RestAPI")
    assert api["EndpointConfiguration"] == "REGIONAL"
    paths = api["DefinitionBody"]["paths"]
    integrations = [
        op["x-amazon-apigateway-integration"]
        for ops in paths.values()
        for op in ops.values()
        if isinstance(op, dict) and "x-amazon-apigateway-integration" in op
    ]
    assert "/v1/connector/order" in paths and "/openapi.json" in paths
    assert integrations and all(i["timeoutInMillis"] == 29_000 for i in integrations)


def test_api_gateway_answers_unknown_routes_and_its_own_errors_in_the_contract_format(template):
    responses = props(template, "RestAPI")["DefinitionBody"]["x-amazon-apigateway-gateway-responses"]
    missing = responses["MISSING_AUTHENTICATION_TOKEN"]
    assert missing["statusCode"] == 404
    body = json.loads(missing["responseTemplates"]["application/json"])
    assert body == {
        "error": {"status": 404, "code": "route.not_found", "message": "No such route", "description": "No such route"}
    }
    for response_type, status in (("REQUEST_TOO_LARGE", 413), ("INTEGRATION_TIMEOUT", 504), ("THROTTLED", 429)):
        assert responses[response_type]["statusCode"] == status
        assert (
            json.loads(responses[response_type]["responseTemplates"]["application/json"])["error"]["status"] == status
        )


def test_payment_wait_ends_before_api_gateway_and_lambda_give_up(template):
    deadline_ms = int(_env(template, "APIHandler")["PAYMENT_DEADLINE_MS"])
    api_timeout_s = props(template, "APIHandler")["Timeout"]
    integration_ms = 29_000
    # The wait must end early enough to answer our own 504 inside the integration timeout...
    assert ACK_TIMEOUT_MS <= deadline_ms <= integration_ms - 2_000
    # ...and the Lambda must outlive the integration, never be killed in the middle of a wait.
    assert api_timeout_s * 1000 >= integration_ms
    assert api_timeout_s <= 35
    # Every function works with the same timing settings.
    for function_id in FUNCTIONS:
        assert _env(template, function_id)["PAYMENT_DEADLINE_MS"] == str(deadline_ms)
        assert _env(template, function_id)["ACK_TIMEOUT_MS"] == str(ACK_TIMEOUT_MS)


def test_every_function_gets_the_common_settings(template):
    for function_id in FUNCTIONS:
        env = _env(template, function_id)
        assert env["TERMINAL_CHANNEL"] == "iot"
        assert env["POWERTOOLS_SERVICE_NAME"] == "nepting-cloud-api"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "NeptingCloudApi"
        assert env["STAGE"] == "prod"


EXPECTED_TABLE_ENV = {
    "APIHandler": {"MERCHANTS_TABLE", "TERMINALS_TABLE", "PAYMENTS_TABLE", "TRANSACTIONS_TABLE", "IPN_TABLE"},
    "TerminalEvents": {"TERMINALS_TABLE", "PAYMENTS_TABLE"},
    "TerminalStatus": {"TERMINALS_TABLE", "PAYMENTS_TABLE"},
    "OrderNotifications": {"TRANSACTIONS_TABLE", "ORDER_DETAILS_TABLE"},
    "IpnIngest": {"ORDER_DETAILS_TABLE", "IPN_TABLE", "TRANSACTIONS_TABLE"},
    "MerchantNotifier": {"MERCHANTS_TABLE", "TRANSACTIONS_TABLE"},
    "FinanceExport": {"TRANSACTIONS_TABLE"},
}


@pytest.mark.parametrize("function_id", sorted(EXPECTED_TABLE_ENV))
def test_each_function_is_told_exactly_the_tables_it_uses_and_the_right_ones(template, function_id):
    env = _env(template, function_id)
    assert {k for k in env if k.endswith("_TABLE")} == EXPECTED_TABLE_ENV[function_id]
    for key in EXPECTED_TABLE_ENV[function_id]:
        short = key.removesuffix("_TABLE").lower().replace("_", "-")
        assert env[key] == {"Ref": table_id(template, short)}


def test_queue_urls_bucket_secret_and_iot_endpoint_go_where_they_are_used(template):
    api = _env(template, "APIHandler")
    assert api["IPN_QUEUE_URL"] == {"Ref": queue_id(template, "ipn")}
    assert api["IPN_SECRET_PARAMETER"] == "/nepting-cloud-api/prod/ipn-secret"
    endpoint = api["IOT_DATA_ENDPOINT"]
    lookup_id = next(referenced_ids(endpoint))
    lookup = template["Resources"][lookup_id]
    assert lookup["Type"] == "Custom::AWS"
    create_call = json.dumps(lookup["Properties"]["Create"])
    assert "describeEndpoint" in create_call and "iot:Data-ATS" in create_call
    notifier = _env(template, "MerchantNotifier")
    assert notifier["NOTIFICATIONS_QUEUE_URL"] == {"Ref": queue_id(template, "merchant-notifications")}
    assert notifier["NOTIFICATIONS_DLQ_URL"] == {"Ref": queue_id(template, "merchant-notifications-dlq")}
    (bucket_id,) = referenced_ids(_env(template, "FinanceExport")["EXPORT_BUCKET"])
    assert template["Resources"][bucket_id]["Type"] == "AWS::S3::Bucket"
    for function_id in ("TerminalEvents", "TerminalStatus", "IpnIngest", "FinanceExport"):
        assert "IPN_SECRET_PARAMETER" not in _env(template, function_id)
        assert "IOT_DATA_ENDPOINT" not in _env(template, function_id)


# --- tables -----------------------------------------------------------------------------------

TABLE_KEYS = {
    "merchants": "pk",
    "terminals": "terminal_id",
    "payments": "pk",
    "transactions": "transaction_reference",
    "order-details": "merchant_order",
    "ipn": "transaction_reference",
}


@pytest.mark.parametrize("short", sorted(TABLE_KEYS))
def test_table_is_on_demand_encrypted_recoverable_and_keyed_as_designed(cdk_template, short):
    cdk_template.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": Match.object_like(
                {
                    "TableName": PREFIX + short,
                    "KeySchema": [{"AttributeName": TABLE_KEYS[short], "KeyType": "HASH"}],
                    "BillingMode": "PAY_PER_REQUEST",
                    "SSESpecification": {"SSEEnabled": True},
                    "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                    "DeletionProtectionEnabled": True,
                }
            ),
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
        },
    )


def test_there_are_exactly_the_six_designed_tables(cdk_template):
    cdk_template.resource_count_is("AWS::DynamoDB::Table", len(TABLE_KEYS))


def _indexes(table: dict[str, Any]) -> dict[str, tuple[list[Any], str]]:
    return {
        gsi["IndexName"]: (gsi["KeySchema"], gsi["Projection"]["ProjectionType"])
        for gsi in table.get("GlobalSecondaryIndexes", [])
    }


def test_terminals_are_listed_per_merchant(template):
    assert _indexes(props(template, table_id(template, "terminals"))) == {
        "by-merchant": (
            [
                {"AttributeName": "merchant_id", "KeyType": "HASH"},
                {"AttributeName": "terminal_id", "KeyType": "RANGE"},
            ],
            "ALL",
        )
    }


def test_transactions_are_listed_per_merchant_by_date_and_by_order_and_streamed(template):
    table = props(template, table_id(template, "transactions"))
    by_created = [
        {"AttributeName": "merchant_id", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    by_order = [
        {"AttributeName": "merchant_order", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    assert _indexes(table) == {"by-merchant-created": (by_created, "ALL"), "by-merchant-order": (by_order, "ALL")}
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_payments_stream_both_images_and_expire_by_ttl(template):
    table = props(template, table_id(template, "payments"))
    assert table["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert "GlobalSecondaryIndexes" not in table


# --- queues and event sources -----------------------------------------------------------------


def _redrive(template, short):
    return props(template, queue_id(template, short)).get("RedrivePolicy")


def test_ipn_queue_parks_a_message_after_five_receives(template):
    redrive = _redrive(template, "ipn")
    assert redrive["maxReceiveCount"] == 5
    assert list(referenced_ids(redrive["deadLetterTargetArn"])) == [queue_id(template, "ipn-dlq")]


def test_merchant_notifications_keep_four_days_and_have_their_dlq(template):
    queue = props(template, queue_id(template, "merchant-notifications"))
    assert queue["MessageRetentionPeriod"] == 4 * 24 * 3600
    redrive = queue["RedrivePolicy"]
    assert list(referenced_ids(redrive["deadLetterTargetArn"])) == [queue_id(template, "merchant-notifications-dlq")]


def test_every_queue_is_encrypted_tls_only_and_dlqs_keep_messages_14_days(template):
    queues = resources(template, "AWS::SQS::Queue")
    assert {q["Properties"]["QueueName"].removeprefix(PREFIX) for q in queues.values()} == {
        "ipn",
        "merchant-notifications",
        *DEAD_LETTER_QUEUES,
    }
    for q in queues.values():
        assert q["Properties"]["SqsManagedSseEnabled"] is True
    for short in DEAD_LETTER_QUEUES:
        assert props(template, queue_id(template, short))["MessageRetentionPeriod"] == 14 * 24 * 3600
    tls_only = set()
    for policy in resources(template, "AWS::SQS::QueuePolicy").values():
        for s in policy["Properties"]["PolicyDocument"]["Statement"]:
            if s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}:
                tls_only.update(lid for q in as_list(policy["Properties"]["Queues"]) for lid in referenced_ids(q))
    assert tls_only == set(queues)


def test_consumed_queues_stay_invisible_six_times_the_consumer_timeout(template):
    for queue, function_id in (("ipn", "IpnIngest"), ("merchant-notifications", "MerchantNotifier")):
        visibility = props(template, queue_id(template, queue))["VisibilityTimeout"]
        assert visibility >= 6 * props(template, function_id)["Timeout"]


def _mapping_for(template, function_id):
    found = [
        m["Properties"]
        for m in resources(template, "AWS::Lambda::EventSourceMapping").values()
        if function_id in referenced_ids(m["Properties"]["FunctionName"])
    ]
    assert len(found) == 1, f"{function_id}: {found}"
    return found[0]


@pytest.mark.parametrize(
    ("function_id", "queue"), [("IpnIngest", "ipn"), ("MerchantNotifier", "merchant-notifications")]
)
def test_queue_consumers_report_partial_batch_failures(template, function_id, queue):
    mapping = _mapping_for(template, function_id)
    assert list(referenced_ids(mapping["EventSourceArn"])) == [queue_id(template, queue)]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_order_notifications_follow_order_records_on_the_payments_stream_without_losing_any(template):
    mapping = _mapping_for(template, "OrderNotifications")
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [table_id(template, "payments"), "StreamArn"]}
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 0 < mapping["MaximumRetryAttempts"] <= 10_000
    on_failure = mapping["DestinationConfig"]["OnFailure"]["Destination"]
    assert list(referenced_ids(on_failure)) == [queue_id(template, "order-notifications-dlq")]
    (pattern,) = [json.loads(f["Pattern"]) for f in mapping["FilterCriteria"]["Filters"]]
    assert pattern == {
        "eventName": ["INSERT", "MODIFY"],
        "dynamodb": {"Keys": {"pk": {"S": [{"prefix": "ORDER#"}]}}},
    }


@pytest.mark.parametrize(
    ("function_id", "dlq"),
    [
        ("TerminalEvents", "terminal-messages-dlq"),
        ("TerminalStatus", "terminal-messages-dlq"),
        ("FinanceExport", "finance-export-dlq"),
    ],
)
def test_asynchronously_invoked_handlers_park_what_still_fails_after_retries(template, function_id, dlq):
    (config,) = [
        c["Properties"]
        for c in resources(template, "AWS::Lambda::EventInvokeConfig").values()
        if function_id in referenced_ids(c["Properties"]["FunctionName"])
    ]
    assert list(referenced_ids(config["DestinationConfig"]["OnFailure"]["Destination"])) == [queue_id(template, dlq)]


# --- IoT --------------------------------------------------------------------------------------

OWN = "nepting/v1/terminals/${iot:Connection.Thing.ThingName}"
ARN_PREFIX = "arn:<AWS::Partition>:iot:<AWS::Region>:<AWS::AccountId>:"


def _joined(value: Any) -> str:
    """An ARN written with Fn::Join, with pseudo parameters left as <Name>."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(_joined(p) for p in parts)
    if "Ref" in value:
        return f"<{value['Ref']}>"
    raise AssertionError(f"unexpected ARN shape {value}")


def test_terminals_have_their_thing_type(cdk_template):
    cdk_template.resource_count_is("AWS::IoT::ThingType", 1)
    cdk_template.has_resource_properties("AWS::IoT::ThingType", {"ThingTypeName": "NeptingTerminal"})


def test_a_terminal_may_only_connect_as_itself_and_use_its_own_topics(template):
    (policy,) = resources(template, "AWS::IoT::Policy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    allowed: dict[str, set[str]] = {}
    for s in statements:
        assert s["Effect"] == "Allow"
        for action in as_list(s["Action"]):
            allowed.setdefault(action, set()).update(
                _joined(r).removeprefix(ARN_PREFIX) for r in as_list(s["Resource"])
            )
    assert allowed == {
        "iot:Connect": {"client/${iot:Connection.Thing.ThingName}"},
        "iot:Subscribe": {f"topicfilter/{OWN}/requests"},
        "iot:Receive": {f"topic/{OWN}/requests"},
        "iot:Publish": {f"topic/{OWN}/events", f"topic/{OWN}/status"},
        "iot:RetainPublish": {f"topic/{OWN}/status"},
    }
    (connect,) = [s for s in statements if s["Action"] == "iot:Connect"]
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}


@pytest.mark.parametrize(("suffix", "function_id"), [("events", "TerminalEvents"), ("status", "TerminalStatus")])
def test_terminal_messages_reach_their_handler_and_failures_are_parked(template, suffix, function_id):
    (rule,) = [
        r["Properties"]["TopicRulePayload"]
        for r in resources(template, "AWS::IoT::TopicRule").values()
        if f"'nepting/v1/terminals/+/{suffix}'" in r["Properties"]["TopicRulePayload"]["Sql"]
    ]
    assert rule["Sql"] == (
        "SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_at "
        f"FROM 'nepting/v1/terminals/+/{suffix}'"
    )
    assert rule["RuleDisabled"] is False
    (action,) = rule["Actions"]
    assert action["Lambda"]["FunctionArn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    error_sqs = rule["ErrorAction"]["Sqs"]
    assert list(referenced_ids(error_sqs["QueueUrl"])) == [queue_id(template, "terminal-messages-dlq")]
    rule_id = next(
        lid
        for lid, r in resources(template, "AWS::IoT::TopicRule").items()
        if r["Properties"]["TopicRulePayload"] is rule
    )
    permissions = [
        p["Properties"]
        for p in resources(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "iot.amazonaws.com"
        and p["Properties"]["FunctionName"] == {"Fn::GetAtt": [function_id, "Arn"]}
    ]
    # (the status handler is also invoked by the presence rule: see test_presence_rule.py)
    assert {"Fn::GetAtt": [rule_id, "Arn"]} in [p["SourceArn"] for p in permissions]


# --- finance exports --------------------------------------------------------------------------


def test_export_bucket_is_private_tls_only_versioned_logged_and_ages_its_objects(template):
    buckets = resources(template, "AWS::S3::Bucket")
    (export_id,) = referenced_ids(_env(template, "FinanceExport")["EXPORT_BUCKET"])
    bucket = buckets[export_id]["Properties"]
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert bucket["LoggingConfiguration"]["DestinationBucketName"]["Ref"] in buckets
    lifecycle = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert lifecycle["age-exports"]["Prefix"] == "exports/"
    assert lifecycle["age-exports"]["Transitions"]
    assert lifecycle["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
    (policy,) = [
        p["Properties"]["PolicyDocument"]
        for p in resources(template, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": export_id}
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in policy["Statement"]
    )


def test_finance_export_runs_daily_and_failed_runs_are_parked(template):
    (rule,) = resources(template, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "cron(30 2 * * ? *)"
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["FinanceExport", "Arn"]}
    assert list(referenced_ids(target["DeadLetterConfig"]["Arn"])) == [queue_id(template, "finance-export-dlq")]
    assert any(
        p["Properties"]["Principal"] == "events.amazonaws.com"
        and p["Properties"]["FunctionName"] == {"Fn::GetAtt": ["FinanceExport", "Arn"]}
        for p in resources(template, "AWS::Lambda::Permission").values()
    )


# --- alarms -----------------------------------------------------------------------------------


def _alarms(template):
    return [a["Properties"] for a in resources(template, "AWS::CloudWatch::Alarm").values()]


def test_every_dead_letter_queue_alarms_on_its_first_message(template):
    watched = set()
    for alarm in _alarms(template):
        if alarm.get("MetricName") == "ApproximateNumberOfMessagesVisible":
            assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
            assert alarm["AlarmActions"]
            (dimension,) = alarm["Dimensions"]
            watched.update(referenced_ids(dimension["Value"]))
    assert watched == {queue_id(template, q) for q in DEAD_LETTER_QUEUES}


def test_every_function_alarms_on_errors(template):
    watched = {
        alarm["Dimensions"][0]["Value"]
        for alarm in _alarms(template)
        if alarm.get("Namespace") == "AWS/Lambda" and alarm["MetricName"] == "Errors"
    }
    assert watched == {PREFIX + slug for slug in FUNCTIONS.values()}


def test_ack_timeout_rate_alarm_divides_ack_timeouts_by_payments_started(template):
    (alarm,) = [a for a in _alarms(template) if "Metrics" in a]
    by_id = {m["Id"]: m for m in alarm["Metrics"]}
    expression = next(m["Expression"] for m in by_id.values() if "Expression" in m)
    assert expression == "100 * FILL(timeouts, 0) / started"
    for metric_id, name in (("timeouts", "AckTimeouts"), ("started", "PaymentsStarted")):
        metric = by_id[metric_id]["MetricStat"]["Metric"]
        assert (metric["Namespace"], metric["MetricName"]) == ("NeptingCloudApi", name)
        assert by_id[metric_id]["ReturnData"] is False
    assert alarm["AlarmActions"]


def test_api_5xx_alarm_watches_this_api(template):
    (alarm,) = [a for a in _alarms(template) if a.get("MetricName") == "5XXError"]
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {"ApiName": PREFIX + "api", "Stage": "api"}
    assert props(template, "RestAPI")["Name"] == PREFIX + "api"
    assert alarm["AlarmActions"]


def test_operations_dashboard_exists(template):
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == PREFIX + "operations"

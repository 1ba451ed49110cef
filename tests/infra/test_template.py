"""What the synthesized template deploys: data, messaging, IoT, exports, alarms and timings.

Expectations are written out from the design (docs/, docs/architecture.md and the infra
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


def test_every_designed_function_is_deployed_under_its_own_name_on_arm64_and_traced(template):
    functions = resources(template, "AWS::Serverless::Function")
    assert set(functions) == set(FUNCTIONS)
    for function_id, slug in FUNCTIONS.items():
        function = props(template, function_id)
        assert function["FunctionName"] == PREFIX + slug
        assert function["Runtime"] == "python3.11"
        assert function["Architectures"] == ["arm64"]
        assert function["Tracing"] == "Active"


# The payment path's sizes: the API waits (billed by memory x time), the terminal handlers are on the
# added latency and cost a few ms each (bench/lambda_sizing.py).
MEMORY_MB = {"APIHandler": 128, "TerminalEvents": 512, "TerminalStatus": 512}
ACCOUNT_QUOTA, UNRESERVED = 1000, 200
RESERVED = {"APIHandler": 740, "TerminalEvents": 50, "TerminalStatus": 10}


def test_payment_path_functions_have_their_measured_memory_size(template):
    for function_id, memory in MEMORY_MB.items():
        assert props(template, function_id)["MemorySize"] == memory


def test_api_and_terminal_handlers_have_reserved_concurrency_that_leaves_the_account_its_share(template):
    reserved = {
        function_id: props(template, function_id)["ReservedConcurrentExecutions"]
        for function_id in FUNCTIONS
        if "ReservedConcurrentExecutions" in props(template, function_id)
    }
    assert reserved == RESERVED
    assert sum(reserved.values()) + UNRESERVED == ACCOUNT_QUOTA


def test_every_function_logs_to_its_own_log_group_kept_except_on_a_failed_first_create(template):
    groups = resources(template, "AWS::Logs::LogGroup")
    for function_id, slug in FUNCTIONS.items():
        (group_id,) = referenced_ids(props(template, function_id)["LoggingConfig"])
        assert groups[group_id]["Properties"]["LogGroupName"] == f"/aws/lambda/{PREFIX}{slug}"
        assert groups[group_id]["Properties"]["RetentionInDays"] >= 30
        assert groups[group_id]["DeletionPolicy"] == "RetainExceptOnCreate"
        assert groups[group_id]["UpdateReplacePolicy"] == "Retain"


def test_every_function_may_write_traces(template):
    from .template_queries import role_of_function, statements_of_role

    for function_id in FUNCTIONS:
        statements = statements_of_role(template, role_of_function(template, function_id))
        (traces,) = [s for s in statements if s.get("Sid") == "WriteTraces"]
        assert sorted(as_list(traces["Action"])) == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]


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


def test_the_deployed_api_serves_the_console_and_the_api_reference(template):
    paths = props(template, "RestAPI")["DefinitionBody"]["paths"]
    for path in ("/", "/console", "/console/{name}", "/docs", "/docs/{name}", "/v1/connector/orders"):
        assert "get" in paths[path], path


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
    throttled = responses["THROTTLED"]
    assert json.loads(throttled["responseTemplates"]["application/json"])["error"]["code"] == "request.throttled"
    assert throttled["responseParameters"] == {"gatewayresponse.header.Retry-After": "'5'"}


def test_the_stage_is_traced_and_writes_json_access_logs_with_request_id_and_latency(template):
    api = props(template, "RestAPI")
    assert api["TracingEnabled"] is True
    access = api["AccessLogSetting"]
    (group_id,) = referenced_ids(access["DestinationArn"])
    group = template["Resources"][group_id]
    assert group["Properties"]["LogGroupName"] == f"/aws/apigateway/{PREFIX}api/access"
    assert group["DeletionPolicy"] == "RetainExceptOnCreate"
    fields = json.loads(access["Format"])
    assert fields["requestId"] == "$context.requestId"
    assert fields["responseLatency"] == "$context.responseLatency"
    assert fields["integrationLatency"] == "$context.integrationLatency"
    assert fields["status"] == "$context.status"
    assert "Authorization" not in access["Format"] and "$input" not in access["Format"]
    # API Gateway writes access logs only once the account has its logging role.
    (account_id,) = resources(template, "AWS::ApiGateway::Account")
    assert template["Resources"]["RestAPI"]["DependsOn"] == [account_id]


def test_stage_throttles_everything_and_the_payment_route_to_what_the_api_function_can_hold(template):
    settings = {(m["ResourcePath"], m["HttpMethod"]): m for m in props(template, "RestAPI")["MethodSettings"]}
    assert set(settings) == {("/*", "*"), ("/~1v1~1connector~1order", "POST")}
    everything = settings[("/*", "*")]
    assert everything["ThrottlingRateLimit"] > 0 and everything["ThrottlingBurstLimit"] > 0
    order = settings[("/~1v1~1connector~1order", "POST")]
    concurrency = props(template, "APIHandler")["ReservedConcurrentExecutions"]
    integration_s = 29
    # Payments held for the whole integration timeout at the route's rate, plus a burst, fit in the
    # function's reserved concurrency with room for the short requests: 429 before any Lambda throttle.
    assert order["ThrottlingRateLimit"] * integration_s + order["ThrottlingBurstLimit"] <= concurrency * 0.9
    assert order["ThrottlingRateLimit"] >= 1


def test_payment_wait_ends_before_api_gateway_and_lambda_give_up(template):
    deadline_ms = int(_env(template, "APIHandler")["PAYMENT_DEADLINE_MS"])
    api_timeout_s = props(template, "APIHandler")["Timeout"]
    integration_ms = 29_000
    # The wait (counted from API Gateway's requestTimeEpoch) must end early enough to answer our own
    # 504 inside the integration timeout...
    assert ACK_TIMEOUT_MS <= deadline_ms <= integration_ms - 2_000
    # ...and the Lambda must outlive the integration, never be killed in the middle of a wait.
    assert api_timeout_s * 1000 >= integration_ms
    assert api_timeout_s <= 35
    # Every function works with the same timing settings; asynchronous payments hold no request.
    for function_id in FUNCTIONS:
        assert _env(template, function_id)["PAYMENT_DEADLINE_MS"] == str(deadline_ms)
        assert _env(template, function_id)["ACK_TIMEOUT_MS"] == str(ACK_TIMEOUT_MS)
        assert _env(template, function_id)["ASYNC_PAYMENT_DEADLINE_MS"] == "120000"
    assert template["Outputs"]["MaxSynchronousCustomerSeconds"]["Value"] == str(deadline_ms // 1000)


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


SECRET_TABLES = {"merchants", "terminals"}


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
                    "SSESpecification": Match.object_like({"SSEEnabled": True}),
                    "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                    # Off by default, so that a failed first deployment can roll its tables back.
                    "DeletionProtectionEnabled": False,
                }
            ),
            # Kept on stack deletion and replacement, removed only by a failed first create.
            "DeletionPolicy": "RetainExceptOnCreate",
            "UpdateReplacePolicy": "Retain",
        },
    )


def test_tables_holding_secrets_are_encrypted_with_the_deployments_rotating_key(template):
    (key_id,) = resources(template, "AWS::KMS::Key")
    key = template["Resources"][key_id]
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["Properties"]["RotationPeriodInDays"] == 365
    assert key["DeletionPolicy"] == "RetainExceptOnCreate"
    for short in TABLE_KEYS:
        sse = props(template, table_id(template, short))["SSESpecification"]
        if short in SECRET_TABLES:
            assert sse == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": {"Fn::GetAtt": [key_id, "Arn"]}}
        else:
            assert "KMSMasterKeyId" not in sse


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


def test_order_heads_are_listed_per_merchant_latest_first_by_a_numeric_sort_key(template):
    table = props(template, table_id(template, "payments"))
    by_updated = [
        {"AttributeName": "merchant_id", "KeyType": "HASH"},
        {"AttributeName": "updated_at_ms", "KeyType": "RANGE"},
    ]
    assert _indexes(table) == {"by-merchant-updated": (by_updated, "ALL")}
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    assert types == {"pk": "S", "merchant_id": "S", "updated_at_ms": "N"}


def test_local_tables_declare_the_same_indexes_as_infra(template):
    from chalicelib.adapters.dynamodb.tables import TABLES

    for setting, spec in TABLES.items():
        short = setting.removesuffix("_table").replace("_", "-")
        declared = {
            name: ([{"AttributeName": hash_key, "KeyType": "HASH"}, {"AttributeName": sort, "KeyType": "RANGE"}], "ALL")
            for name, hash_key, sort in spec["indexes"]
        }
        assert _indexes(props(template, table_id(template, short))) == declared, short


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


def test_terminals_have_their_stages_thing_type(cdk_template):
    cdk_template.resource_count_is("AWS::IoT::ThingType", 1)
    cdk_template.has_resource_properties("AWS::IoT::ThingType", {"ThingTypeName": PREFIX + "terminal"})


def test_every_named_resource_carries_the_stage_but_the_one_that_claims_the_account(template):
    names = {
        "AWS::DynamoDB::Table": "TableName",
        "AWS::SQS::Queue": "QueueName",
        "AWS::Logs::LogGroup": "LogGroupName",
        "AWS::IoT::ThingType": "ThingTypeName",
        "AWS::IoT::Policy": "PolicyName",
        "AWS::IoT::TopicRule": "RuleName",
        "AWS::CloudWatch::Dashboard": "DashboardName",
        "AWS::KMS::Alias": "AliasName",
        "AWS::Serverless::Function": "FunctionName",
        "AWS::SSM::Parameter": "Name",
    }
    seen = []
    for type_, prop in names.items():
        for logical_id, resource in resources(template, type_).items():
            name = resource["Properties"][prop]
            seen.append(name)
            if type_ == "AWS::SSM::Parameter":
                # One stage per account and region: a second stage stops here before creating anything.
                assert name == "/nepting-cloud-api/terminal-topics-owner"
                assert resource["Properties"]["Value"] == "nepting-cloud-api-prod"
            else:
                assert "prod" in name, f"{logical_id}: {name}"
    assert len(seen) > 30


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
    # The export function writes where the lifecycle rule ages: it is told the same prefix.
    assert _env(template, "FinanceExport")["EXPORT_PREFIX"] == lifecycle["age-exports"]["Prefix"]
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


# --- alarms and dashboard ----------------------------------------------------------------------


def _alarms(template):
    return [a["Properties"] for a in resources(template, "AWS::CloudWatch::Alarm").values()]


def _dimensions(alarm):
    return {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}


def test_every_alarm_pages_through_the_topic_and_says_what_to_do(template):
    (topic_id,) = resources(template, "AWS::SNS::Topic")
    for alarm in _alarms(template):
        assert alarm["AlarmActions"] == [{"Ref": topic_id}] and alarm["OKActions"] == [{"Ref": topic_id}]
        assert alarm["AlarmDescription"].startswith("Runbook: ") and len(alarm["AlarmDescription"]) > 60


def test_the_alarm_topic_has_the_required_subscriber(template):
    (subscription,) = [s["Properties"] for s in resources(template, "AWS::SNS::Subscription").values()]
    assert subscription["Protocol"] == "email" and subscription["Endpoint"] == "oncall@example.com"
    assert "AlarmTopicArn" in template["Outputs"]


def test_every_dead_letter_queue_alarms_on_its_first_message(template):
    watched = set()
    for alarm in _alarms(template):
        if alarm.get("MetricName") == "ApproximateNumberOfMessagesVisible":
            assert alarm["Threshold"] == 0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
            (dimension,) = alarm["Dimensions"]
            watched.update(referenced_ids(dimension["Value"]))
    assert watched == {queue_id(template, q) for q in DEAD_LETTER_QUEUES}


def test_consumed_queues_alarm_on_their_oldest_message_age(template):
    ages = {}
    for alarm in _alarms(template):
        if alarm.get("MetricName") == "ApproximateAgeOfOldestMessage":
            (queue,) = referenced_ids(_dimensions(alarm)["QueueName"])
            ages[queue] = alarm["Threshold"]
    # The notifier delays its own retries by up to 900 s: its queue is a backlog only well past that.
    assert ages == {queue_id(template, "ipn"): 300, queue_id(template, "merchant-notifications"): 1800}


@pytest.mark.parametrize("metric", ["Errors", "Throttles"])
def test_every_function_alarms_on_errors_and_throttles(template, metric):
    watched = {
        _dimensions(alarm)["FunctionName"]
        for alarm in _alarms(template)
        if alarm.get("Namespace") == "AWS/Lambda" and alarm["MetricName"] == metric
    }
    assert watched == {PREFIX + slug for slug in FUNCTIONS.values()}
    for alarm in _alarms(template):
        if alarm.get("MetricName") == metric and alarm.get("Namespace") == "AWS/Lambda":
            assert alarm["Threshold"] == 0


def test_api_capacity_alarms_before_the_payment_route_runs_out(template):
    (alarm,) = [a for a in _alarms(template) if a.get("MetricName") == "ConcurrentExecutions"]
    assert _dimensions(alarm) == {"FunctionName": PREFIX + "api-handler"}
    assert alarm["Statistic"] == "Maximum"
    assert alarm["Threshold"] == props(template, "APIHandler")["ReservedConcurrentExecutions"] * 80 // 100


def test_payments_stream_lag_alarms(template):
    (alarm,) = [a for a in _alarms(template) if a.get("MetricName") == "IteratorAge"]
    assert _dimensions(alarm) == {"FunctionName": PREFIX + "order-notifications"}
    assert alarm["Statistic"] == "Maximum" and alarm["Threshold"] == 60_000


def test_partial_batch_failures_alarm_per_consumer(template):
    sources = {
        _dimensions(alarm)["source"] for alarm in _alarms(template) if alarm.get("MetricName") == "BatchItemFailures"
    }
    # The values chalicelib emits as the metric's source: each batch consumer's name.
    assert sources == {"order_notifications", "ipn_ingest", "merchant_notifier"}
    for alarm in _alarms(template):
        if alarm.get("MetricName") == "BatchItemFailures":
            assert _dimensions(alarm)["service"] == "nepting-cloud-api"


def test_each_iot_rule_alarms_on_failed_actions_and_throttled_messages(template):
    rules = {r["Properties"]["RuleName"] for r in resources(template, "AWS::IoT::TopicRule").values()}
    assert rules == {"nepting_prod_terminal_events", "nepting_prod_terminal_status", "nepting_prod_terminal_presence"}
    throttled = {
        _dimensions(a)["RuleName"]
        for a in _alarms(template)
        if a.get("Namespace") == "AWS/IoT" and a["MetricName"] == "RuleMessageThrottled"
    }
    assert throttled == rules
    failures = set()
    for alarm in _alarms(template):
        for query in alarm.get("Metrics", []):
            expression = query.get("Expression", "")
            if expression.startswith("SELECT SUM(Failure)"):
                assert 'FROM SCHEMA("AWS/IoT", ActionType, RuleName)' in expression
                failures.add(expression.rsplit("'", 2)[1])
                assert query["Period"] == 300 and query["ReturnData"] is True
    assert failures == rules


def test_ack_timeout_rate_alarm_divides_ack_timeouts_by_payments_started(template):
    (alarm,) = [
        a
        for a in _alarms(template)
        if any(m.get("Expression") == "100 * FILL(timeouts, 0) / started" for m in a.get("Metrics", []))
    ]
    by_id = {m["Id"]: m for m in alarm["Metrics"]}
    for metric_id, name in (("timeouts", "AckTimeouts"), ("started", "PaymentsStarted")):
        metric = by_id[metric_id]["MetricStat"]["Metric"]
        assert (metric["Namespace"], metric["MetricName"]) == ("NeptingCloudApi", name)
        assert by_id[metric_id]["ReturnData"] is False


def test_api_5xx_alarm_watches_this_api(template):
    (alarm,) = [a for a in _alarms(template) if a.get("MetricName") == "5XXError"]
    assert _dimensions(alarm) == {"ApiName": PREFIX + "api", "Stage": "api"}
    assert props(template, "RestAPI")["Name"] == PREFIX + "api"


def test_429s_are_counted_from_the_access_log_and_alarmed(template):
    (metric_filter,) = [f["Properties"] for f in resources(template, "AWS::Logs::MetricFilter").values()]
    assert metric_filter["FilterPattern"] == '{ $.status = "429" }'
    (transformation,) = metric_filter["MetricTransformations"]
    assert (transformation["MetricNamespace"], transformation["MetricName"]) == ("NeptingCloudApi", "ApiThrottled")
    (group_id,) = referenced_ids(props(template, "RestAPI")["AccessLogSetting"]["DestinationArn"])
    assert metric_filter["LogGroupName"] == {"Ref": group_id}
    assert [a for a in _alarms(template) if a.get("MetricName") == "ApiThrottled"]


def _dashboard_metrics(template) -> list[list[Any]]:
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    body = dashboard["Properties"]["DashboardBody"]
    text = "".join(part if isinstance(part, str) else "TOKEN" for part in body["Fn::Join"][1])
    return [m for widget in json.loads(text)["widgets"] for m in widget["properties"].get("metrics", [])]


def test_dashboard_asks_for_every_application_metric_with_the_dimensions_it_is_emitted_with(template):
    from .emitted_metrics import emitted_metrics

    emitted = emitted_metrics()
    assert emitted["TerminalUnreachable"] == {"service", "reason"}
    graphed = _dashboard_metrics(template)
    plain, searched = set(), set()
    for entry in graphed:
        if isinstance(entry[0], dict) and "expression" in entry[0]:
            expression = entry[0]["expression"]
            if expression.startswith("SEARCH('{NeptingCloudApi,"):
                schema, name = expression.split("}", 1)[0], expression.split('MetricName="')[1].split('"')[0]
                # The schema lists exactly the dimensions the metric is emitted with.
                assert set(schema.removeprefix("SEARCH('{NeptingCloudApi,").split(",")) == emitted[name], expression
                searched.add(name)
        elif entry[0] == "NeptingCloudApi":
            name = entry[1]
            dimensions = set([x for x in entry[2:] if not isinstance(x, dict)][0::2])
            if name in emitted:
                assert dimensions == emitted[name], f"{name} graphed with {dimensions}, emitted with {emitted[name]}"
            plain.add(name)
    assert {"TerminalUnreachable", "EventsRefused", "IpnRefused", "PaymentsBusy", "BatchItemFailures"} <= searched
    assert {"PaymentsStarted", "AckTimeouts", "NotificationsParked"} <= plain
    assert (plain | searched) - {"ApiThrottled"} <= set(emitted), "graphs of metrics nothing emits"


def test_operations_dashboard_exists(template):
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    assert dashboard["Properties"]["DashboardName"] == PREFIX + "operations"

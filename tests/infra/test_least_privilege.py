"""Each Lambda function runs under its own role, allowed only its own tables, queues and topics.

The expected rows are the design's access matrix written out again here, independently of
infra/nepting_infra/functions.py, so that widening a grant there is caught.
"""

from __future__ import annotations

import pytest

from .template_queries import (
    actions,
    as_list,
    props,
    resources,
    role_of_function,
    statements_of_role,
    table_id,
    targets_of,
)

pytestmark = pytest.mark.infra

# function -> (tables read only, tables read and written)
TABLES = {
    "APIHandler": ({"merchants", "transactions"}, {"terminals", "payments", "ipn"}),
    "TerminalEvents": (set(), {"terminals", "payments"}),
    "TerminalStatus": (set(), {"terminals", "payments"}),
    "OrderNotifications": (set(), {"transactions", "order-details"}),
    "IpnIngest": ({"order-details"}, {"ipn", "transactions"}),
    "MerchantNotifier": ({"merchants"}, {"transactions"}),
    "FinanceExport": (set(), set()),
}
# function -> queues it may send to (its own sends, and the dead-letter queues of its event sources)
SENDS = {
    "APIHandler": {"ipn"},
    "TerminalEvents": {"terminal-messages-dlq"},
    "TerminalStatus": {"terminal-messages-dlq"},
    "OrderNotifications": {"merchant-notifications", "order-notifications-dlq"},
    "IpnIngest": {"merchant-notifications"},
    "MerchantNotifier": {"merchant-notifications", "merchant-notifications-dlq"},
    "FinanceExport": {"finance-export-dlq"},
}
CONSUMES = {"IpnIngest": {"ipn"}, "MerchantNotifier": {"merchant-notifications"}}


def _statements(template, function_id):
    return statements_of_role(template, role_of_function(template, function_id))


def test_every_function_has_a_role_of_its_own_that_only_lambda_assumes(template):
    roles = {function_id: role_of_function(template, function_id) for function_id in TABLES}
    assert len(set(roles.values())) == len(roles)
    for role_id in roles.values():
        role = props(template, role_id)
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
        assert "ManagedPolicyArns" not in role


@pytest.mark.parametrize("function_id", sorted(TABLES))
def test_function_reads_and_writes_only_its_own_tables(template, function_id):
    statements = _statements(template, function_id)
    reads, writes = TABLES[function_id]
    assert targets_of(template, statements, "dynamodb:GetItem") == reads | writes
    assert targets_of(template, statements, "dynamodb:Query") == reads | writes
    for write_action in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"):
        assert targets_of(template, statements, write_action) == writes


@pytest.mark.parametrize("function_id", sorted(SENDS))
def test_function_sends_to_and_consumes_only_its_own_queues(template, function_id):
    statements = _statements(template, function_id)
    assert targets_of(template, statements, "sqs:SendMessage") == SENDS[function_id]
    assert targets_of(template, statements, "sqs:ReceiveMessage") == CONSUMES.get(function_id, set())
    assert targets_of(template, statements, "sqs:DeleteMessage") == CONSUMES.get(function_id, set())


# Actions without resource-level permissions, and who may have them on every resource.
UNSCOPABLE = {
    ("xray:PutTelemetryRecords", "xray:PutTraceSegments"): set(TABLES),
    # The payments-stream event source mapping needs it.
    ("dynamodb:ListStreams",): {"OrderNotifications"},
}


@pytest.mark.parametrize("function_id", sorted(TABLES))
def test_no_function_is_granted_a_whole_service_or_every_resource(template, function_id):
    for s in _statements(template, function_id):
        for action in actions(s):
            assert not action.endswith("*"), f"{function_id}: {action}"
        if "*" in as_list(s["Resource"]):
            granted = tuple(sorted(actions(s)))
            assert function_id in UNSCOPABLE.get(granted, set()), f"{function_id}: {s}"


def _granted(template, function_id, action):
    return [s for s in _statements(template, function_id) if action in actions(s)]


def test_only_the_api_publishes_to_terminals_and_only_on_request_topics(template):
    for function_id in TABLES:
        statements = _granted(template, function_id, "iot:Publish")
        if function_id != "APIHandler":
            assert statements == []
            continue
        (statement,) = statements
        (resource,) = as_list(statement["Resource"])
        assert resource["Fn::Join"][1][-1] == ":topic/nepting/v1/terminals/*/requests"


def test_only_the_api_reads_the_ipn_secret_and_decrypts_it_only_through_ssm(template):
    for function_id in TABLES:
        ssm = _granted(template, function_id, "ssm:GetParameter")
        through_ssm = [
            s
            for s in _granted(template, function_id, "kms:Decrypt")
            if "kms:EncryptionContext:PARAMETER_ARN" in s.get("Condition", {}).get("StringEquals", {})
        ]
        if function_id != "APIHandler":
            assert ssm == [] and through_ssm == []
            continue
        (get_parameter,) = ssm
        assert get_parameter["Resource"]["Fn::Join"][1][-1] == ":parameter/nepting-cloud-api/prod/ipn-secret"
        (decrypt,) = through_ssm
        conditions = decrypt["Condition"]["StringEquals"]
        assert set(conditions) == {"kms:ViaService", "kms:EncryptionContext:PARAMETER_ARN"}
        assert conditions["kms:EncryptionContext:PARAMETER_ARN"] == get_parameter["Resource"]


# function -> what it may do with the key of the secrets tables (merchants, terminals), through DynamoDB
SECRETS_KEY = {
    "APIHandler": {"kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"},
    "TerminalEvents": {"kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"},
    "TerminalStatus": {"kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey"},
    # Reads merchants (their notification passphrase) only.
    "MerchantNotifier": {"kms:Decrypt", "kms:DescribeKey"},
}


@pytest.mark.parametrize("function_id", sorted(TABLES))
def test_the_secrets_key_is_usable_only_through_dynamodb_by_the_functions_reading_those_tables(template, function_id):
    (key_id,) = resources(template, "AWS::KMS::Key")
    on_key = [
        s
        for s in _statements(template, function_id)
        if any(a.startswith("kms:") for a in actions(s)) and key_id in str(s["Resource"])
    ]
    if function_id not in SECRETS_KEY:
        assert on_key == []
        return
    (statement,) = on_key
    assert set(actions(statement)) == SECRETS_KEY[function_id]
    assert statement["Resource"] == {"Fn::GetAtt": [key_id, "Arn"]}
    (via,) = statement["Condition"]["StringEquals"].values()
    assert via == {"Fn::Join": ["", ["dynamodb.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]}


def test_only_finance_export_exports_transactions_and_writes_only_under_exports(template):
    for function_id in TABLES:
        export = _granted(template, function_id, "dynamodb:ExportTableToPointInTime")
        s3 = [s for s in _statements(template, function_id) if any(a.startswith("s3:") for a in actions(s))]
        if function_id != "FinanceExport":
            assert export == [] and s3 == []
            continue
        (statement,) = export
        assert statement["Resource"] == {"Fn::GetAtt": [table_id(template, "transactions"), "Arn"]}
        (write,) = s3
        assert sorted(actions(write)) == ["s3:AbortMultipartUpload", "s3:PutObject", "s3:PutObjectAcl"]
        (resource,) = as_list(write["Resource"])
        assert resource["Fn::Join"][1][-1] == "/exports/*"


def test_only_order_notifications_reads_the_payments_stream(template):
    for function_id in TABLES:
        stream_reads = [
            s
            for s in _granted(template, function_id, "dynamodb:GetRecords")
            if any("StreamArn" in str(r) for r in as_list(s["Resource"]))
        ]
        if function_id == "OrderNotifications":
            (statement,) = stream_reads
            assert statement["Resource"] == {"Fn::GetAtt": [table_id(template, "payments"), "StreamArn"]}
        else:
            assert stream_reads == []


def test_functions_write_logs_only_to_their_own_log_group(template):
    groups = resources(template, "AWS::Logs::LogGroup")
    for function_id in TABLES:
        (own_group,) = [
            lid for lid in groups if props(template, function_id)["LoggingConfig"]["LogGroup"] == {"Ref": lid}
        ]
        statements = _granted(template, function_id, "logs:PutLogEvents")
        assert [s["Resource"] for s in statements] == [{"Fn::GetAtt": [own_group, "Arn"]}]

"""Presence comes from IoT Core's lifecycle events (docs/terminal-protocol.md "Presence"): a topic rule on
``$aws/events/presence/+/+`` hands each event, as IoT publishes it, to the status handler."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

if shutil.which("node") is None:
    pytest.skip("Node.js is not installed: the CDK (jsii) needs it (see infra/README.md)", allow_module_level=True)

from .template_queries import queue_id, referenced_ids, resources

pytestmark = pytest.mark.infra


def test_lifecycle_events_reach_the_status_handler_and_failures_are_parked(template: dict[str, Any]) -> None:
    presence = {
        lid: r["Properties"]["TopicRulePayload"]
        for lid, r in resources(template, "AWS::IoT::TopicRule").items()
        if "$aws/events/presence" in r["Properties"]["TopicRulePayload"]["Sql"]
    }
    assert len(presence) == 1
    ((rule_id, rule),) = presence.items()
    # The event as IoT publishes it: clientId, eventType, sessionIdentifier, timestamp.
    assert rule["Sql"] == "SELECT * FROM '$aws/events/presence/+/+'"
    assert rule["RuleDisabled"] is False
    (action,) = rule["Actions"]
    assert action["Lambda"]["FunctionArn"] == {"Fn::GetAtt": ["TerminalStatus", "Arn"]}
    assert list(referenced_ids(rule["ErrorAction"]["Sqs"]["QueueUrl"])) == [queue_id(template, "terminal-messages-dlq")]
    status_rule_id = next(
        lid
        for lid, r in resources(template, "AWS::IoT::TopicRule").items()
        if "'nepting/v1/terminals/+/status'" in r["Properties"]["TopicRulePayload"]["Sql"]
    )
    invokers = sorted(
        str(p["Properties"]["SourceArn"]["Fn::GetAtt"][0])
        for p in resources(template, "AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "iot.amazonaws.com"
        and p["Properties"]["FunctionName"] == {"Fn::GetAtt": ["TerminalStatus", "Arn"]}
    )
    assert invokers == sorted([rule_id, status_rule_id])

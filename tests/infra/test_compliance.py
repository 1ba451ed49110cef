"""The synthesized template passes cdk-nag's AwsSolutions pack and cfn-lint, offline."""

from __future__ import annotations

import json
import re
import sys

import pytest

from .conftest import INFRA_DIR

pytestmark = pytest.mark.infra

# The rules this deployment knowingly accepts, each with its reason in infra/nepting_infra/nag.py.
ACCEPTED_RULES = {"AwsSolutions-IAM4", "AwsSolutions-IAM5", "AwsSolutions-SQS3"}


def test_synthesis_succeeds_offline_with_no_unsuppressed_cdk_nag_finding(synthesis):
    errors = synthesis.messages("error")
    assert errors == [], "\n".join(f"{path}: {text[:300]}" for path, text in errors)
    assert synthesis.returncode == 0, synthesis.stderr[-4000:]
    assert "synthesized nepting-cloud-api-prod" in synthesis.stdout


def test_cdk_nag_actually_checked_the_template(synthesis):
    (report,) = synthesis.outdir.glob("AwsSolutions-*-NagReport.csv")
    rows = report.read_text().splitlines()[1:]
    checked_rules = {row.split(",")[0].strip('"') for row in rows}
    # A report without these would mean the pack never visited the tables, queues and roles.
    assert {"AwsSolutions-DDB3", "AwsSolutions-SQS4", "AwsSolutions-IAM5", "AwsSolutions-S10"} <= checked_rules
    assert not [row for row in rows if '"Non-Compliant"' in row]


def test_every_suppression_is_a_known_rule_with_a_reason(template):
    suppressions = [
        (logical_id, rule)
        for logical_id, resource in template["Resources"].items()
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    ]
    assert suppressions, "expected the documented suppressions to be present"
    for logical_id, rule in suppressions:
        assert rule["id"] in ACCEPTED_RULES, f"{logical_id}: unexpected suppression of {rule['id']}"
        assert len(rule["reason"]) >= 40, f"{logical_id}: {rule['id']} needs a real reason"
        if rule["id"] == "AwsSolutions-IAM5":
            # Wildcards are accepted one finding at a time, never for a whole policy.
            assert rule.get("applies_to"), f"{logical_id}: IAM5 suppressed without applies_to"


def test_function_roles_suppress_no_action_wildcard(template):
    for logical_id, resource in template["Resources"].items():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            for finding in rule.get("applies_to", []):
                text = finding if isinstance(finding, str) else json.dumps(finding)
                assert "Action::" not in text, f"{logical_id} suppresses an action wildcard: {text}"


def test_cfn_lint_finds_nothing_in_the_template(synthesis):
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(synthesis.template_path, config=ManualArgs(regions=["eu-west-3", "us-east-1"]))
    assert [f"{m.rule.id} {m.message} ({m.path})" for m in matches] == []


def test_deadline_capped_by_the_integration_timeout_is_announced(synthesis):
    warnings = [text for _, text in synthesis.messages("warning") if "PAYMENT_DEADLINE_MS" in text]
    assert len(warnings) == 1 and re.search(r"29000 ms API Gateway integration timeout", warnings[0])


def test_every_asset_is_staged_in_the_cloud_assembly_and_no_scratch_is_left(synthesis):
    manifest = json.loads((synthesis.outdir / "nepting-cloud-api-prod.assets.json").read_text())
    sources = [asset["source"]["path"] for asset in manifest["files"].values()]
    # The Chalice deployment package and the template, at least; deploy uploads them from here.
    assert any(path.endswith(".zip") for path in sources)
    for path in sources:
        assert (synthesis.outdir / path).exists(), path
    assert not (INFRA_DIR / "chalice.out").exists()
    assert not (INFRA_DIR.parent / "chalice.out").exists()


@pytest.fixture(scope="module")
def settings_module():
    sys.path.insert(0, str(INFRA_DIR))
    try:
        from nepting_infra import settings
    finally:
        sys.path.remove(str(INFRA_DIR))
    return settings


def _settings(settings_module, **context):
    return settings_module.DeploymentSettings.from_context({"alarm_email": "oncall@example.com", **context}.get)


def test_default_integration_timeout_shortens_the_payment_deadline(settings_module):
    s = _settings(settings_module)
    assert (s.integration_timeout_ms, s.payment_deadline_ms, s.api_lambda_timeout_s) == (29_000, 27_000, 30)
    assert s.deadline_was_capped and s.max_customer_time_s == 27
    # Asynchronous payments hold no HTTP request: they keep the contract's deadline.
    assert s.async_payment_deadline_ms == 120_000


def test_raised_integration_timeout_restores_the_contract_deadline(settings_module):
    s = _settings(settings_module, api_integration_timeout_s="122")
    assert (s.integration_timeout_ms, s.payment_deadline_ms, s.api_lambda_timeout_s) == (122_000, 120_000, 123)
    assert not s.deadline_was_capped and s.max_customer_time_s == 120


def test_an_integration_timeout_beyond_the_deadline_and_its_margin_is_not_used(settings_module):
    s = _settings(settings_module, api_integration_timeout_s="300")
    assert (s.integration_timeout_ms, s.payment_deadline_ms, s.api_lambda_timeout_s) == (122_000, 120_000, 123)


def test_the_timeout_the_summary_asks_for_gives_the_whole_deadline(settings_module):
    s = _settings(settings_module)
    (advice,) = [line for line in s.summary() if "api_integration_timeout_s=" in line]
    asked = int(re.search(r"api_integration_timeout_s=(\d+)", advice).group(1))
    raised = _settings(settings_module, api_integration_timeout_s=str(asked))
    assert raised.payment_deadline_ms == 120_000 and not raised.deadline_was_capped
    assert _settings(settings_module, api_integration_timeout_s=str(asked - 1)).deadline_was_capped


def test_synthesis_states_the_longest_synchronous_customer_time(synthesis):
    assert "a customer has up to 27 s at the terminal" in synthesis.stdout
    assert "api_integration_timeout_s=122" in synthesis.stdout


def test_api_concurrency_is_the_quota_minus_everyone_elses_share(settings_module):
    s = _settings(settings_module, lambda_concurrency_quota="3000", terminal_events_concurrency="80")
    assert s.api_concurrency == 3000 - 80 - 10 - 200


@pytest.mark.parametrize("timeout_s", ["29", "60", "90", "122"])
def test_payment_route_admits_no_more_than_the_api_function_can_hold_for_the_longest_wait(settings_module, timeout_s):
    s = _settings(settings_module, api_integration_timeout_s=timeout_s)
    # Every admitted payment held for the whole integration timeout, plus a full burst, still fits in
    # 90 % of the reserved concurrency: load beyond it is API Gateway's 429, never a Lambda throttle.
    held = s.order_rate_limit * s.integration_timeout_ms // 1000 + s.order_burst_limit
    assert s.order_rate_limit >= 1
    assert held <= s.api_concurrency * 9 // 10


@pytest.mark.parametrize(
    "context",
    [
        {"api_integration_timeout_s": "11"},
        {"api_integration_timeout_s": "soon"},
        {"stage": "Prod_1"},
        {"lambda_concurrency_quota": "10"},
        # 140 concurrent executions cannot hold one payment a second for two minutes.
        {"api_integration_timeout_s": "122", "lambda_concurrency_quota": "400"},
        {"unreserved_concurrency": "50"},
        {"terminal_events_concurrency": "0"},
        {"domain_name": "pay.example.com"},
        {"waf": "maybe"},
        {"waf_rate_limit": "5"},
    ],
)
def test_undeployable_context_is_refused_with_a_reason(settings_module, context):
    with pytest.raises(settings_module.DeploymentSettingsError):
        _settings(settings_module, **context)


@pytest.mark.parametrize("alarm_email", [None, "", "oncall", "a@b"])
def test_a_deployment_without_an_alarm_subscriber_needs_an_explicit_opt_out(settings_module, alarm_email):
    with pytest.raises(settings_module.DeploymentSettingsError, match="alarm_email=none"):
        settings_module.DeploymentSettings.from_context({"alarm_email": alarm_email}.get)
    opted_out = settings_module.DeploymentSettings.from_context({"alarm_email": "none"}.get)
    assert opted_out.alarm_email is None


def test_synthesis_without_an_alarm_subscriber_stops_with_the_reason(tmp_path):
    from .conftest import _synthesize

    result = _synthesize(tmp_path, {})
    assert result.returncode == 2
    assert "alarm_email is required" in result.stderr and "Traceback" not in result.stderr
    assert not result.template_path.exists()

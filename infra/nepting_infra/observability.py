"""Alarms an on-call can act on, and the operations dashboard.

Every alarm publishes to one SNS topic (an e-mail subscriber is required, or an explicit opt-out:
settings.py) and carries its runbook line in its description, so the page says what to look at
first; infra/README.md's runbook has the same lines and the longer procedures.

Application metrics are emitted by Powertools with a ``service`` dimension, and some with a
``reason`` or ``source`` too. A graph or alarm asking for a metric with other dimensions than it
was emitted with shows nothing, so: metrics emitted with a reason are graphed through SEARCH
expressions over their full dimension set, and alarmed on per known value (tests/infra checks this
against the ``count(...)`` calls in chalicelib).
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from .settings import APP_NAME, METRICS_NAMESPACE, DeploymentSettings

PERIOD = Duration.minutes(5)
# Powertools adds the service name as a dimension to every metric it emits.
APP_DIMENSIONS = {"service": APP_NAME}
# Share of payment requests that terminals did not acknowledge in time, in percent, above which
# the fleet (or IoT Core) is in trouble rather than one customer's terminal being switched off.
ACK_TIMEOUT_RATE_PERCENT = 10
# 502/504 are part of the contract (terminal offline, timeouts), so the API alarm is on a rate.
API_5XX_RATE = 0.05
# Share of the API function's reserved concurrency in use that calls for more capacity before
# customers get 429s.
CAPACITY_PERCENT = 80
# The order notifications follow the payments stream; a record older than this is a backlog.
STREAM_ITERATOR_AGE_MS = 60_000
# 429s in five minutes (API Gateway's throttles, WAF's rate rule, the per-merchant limits).
THROTTLED_PER_5_MIN = 20

# Application metrics emitted with a dimension beyond ``service``: name -> that dimension.
DIMENSIONED_METRICS = {
    "PaymentsBusy": "reason",
    "TerminalUnreachable": "reason",
    "EventsRefused": "reason",
    "EventsIgnored": "reason",
    "IpnRefused": "reason",
    "IpnDuplicate": "reason",
    "ApiErrors": "reason",
    "NotificationsSkipped": "reason",
    "BatchItemFailures": "source",
}


def app_metric(name: str, statistic: str = "Sum", **dimensions: str) -> cw.Metric:
    return cw.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={**APP_DIMENSIONS, **dimensions},
        statistic=statistic,
        period=PERIOD,
    )


def app_search(name: str, label: str | None = None) -> cw.IMetric:
    """Every series of an application metric, whatever values its extra dimension takes."""
    if name not in DIMENSIONED_METRICS:
        return app_metric(name)
    schema = f"{{{METRICS_NAMESPACE},{DIMENSIONED_METRICS[name]},service}}"
    return cw.MathExpression(
        expression=f"SEARCH('{schema} MetricName=\"{name}\" service=\"{APP_NAME}\"', 'Sum', 300)",
        label=label or name,
        period=PERIOD,
    )


def iot_rule_failures_query(rule: str) -> str:
    schema = 'SCHEMA("AWS/IoT", ActionType, RuleName)'
    # The rule name is ours (iot.py), never input: nothing to inject.
    return f"SELECT SUM(Failure) FROM {schema} WHERE RuleName = '{rule}'"  # noqa: S608


def lambda_metric(function_name: str, name: str, statistic: str = "Sum") -> cw.Metric:
    return cw.Metric(
        namespace="AWS/Lambda",
        metric_name=name,
        dimensions_map={"FunctionName": function_name},
        statistic=statistic,
        period=PERIOD,
    )


@dataclass(frozen=True)
class Watched:
    """What the stack hands over to be watched."""

    function_names: dict[str, str]
    # function name -> its reserved concurrency (functions with one)
    reserved_concurrency: dict[str, int]
    dead_letter_queues: dict[str, sqs.Queue]
    # queue name -> (queue, oldest message age in seconds that is a backlog)
    work_queues: dict[str, tuple[sqs.Queue, int]]
    # IoT topic rule names, by the topic they serve
    iot_rules: dict[str, str]
    # functions consuming batches with ReportBatchItemFailures (their ``source`` value)
    batch_consumers: tuple[str, ...]
    api_name: str
    api_stage: str
    web_acl_name: str | None


class Observability(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings, watched: Watched) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(self, "AlarmTopic", display_name=f"{APP_NAME} {settings.stage} alarms", enforce_ssl=True)
        if settings.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(settings.alarm_email))
        self._action = cw_actions.SnsAction(self.topic)
        self.alarms: dict[str, cw.Alarm] = {}
        self._watched = w = watched

        for name, queue in w.dead_letter_queues.items():
            self._alarm(
                f"{name}-not-empty",
                queue.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                threshold=0,
                runbook=f"Messages parked in {name}: find the cause in the consumer's logs, deploy the fix, "
                "then replay (infra/README.md, Runbook, dead-letter queues).",
            )
        for name, (queue, max_age_s) in w.work_queues.items():
            self._alarm(
                f"{name}-backlog",
                queue.metric_approximate_age_of_oldest_message(period=PERIOD, statistic="Maximum"),
                threshold=max_age_s,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                runbook=f"The oldest message of {name} waits over {max_age_s} s: its consumer is failing "
                "(Errors, BatchItemFailures), throttled (Throttles) or its messages keep coming back; "
                "see its log group.",
            )
        for name, function_name in w.function_names.items():
            self._alarm(
                f"{name}-errors",
                lambda_metric(function_name, "Errors"),
                threshold=0,
                runbook=f"{function_name} raised or timed out: its log group has the traceback (search the "
                "request id); X-Ray has the trace.",
            )
            self._alarm(
                f"{name}-throttles",
                lambda_metric(function_name, "Throttles"),
                threshold=0,
                runbook=f"{function_name} was refused a concurrent execution: "
                + (
                    "its reserved concurrency is too small for the load (raise it, and the account quota; "
                    "infra/README.md, Scale)."
                    if name in w.reserved_concurrency
                    else "the account's unreserved pool is exhausted (another function of the account?)."
                ),
            )
        for name, reserved in w.reserved_concurrency.items():
            if name != "api_handler":
                continue
            self._alarm(
                "api-capacity",
                lambda_metric(w.function_names[name], "ConcurrentExecutions", "Maximum"),
                threshold=reserved * CAPACITY_PERCENT // 100,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                runbook=f"More than {CAPACITY_PERCENT} % of the API function's {reserved} concurrent executions "
                "are busy (waiting payments): raise the Lambda quota and redeploy with the new "
                "lambda_concurrency_quota before the payment route answers 429 (infra/README.md, Scale).",
            )
        if "order_notifications" in w.function_names:
            self._alarm(
                "payments-stream-iterator-age",
                lambda_metric(w.function_names["order_notifications"], "IteratorAge", "Maximum"),
                threshold=STREAM_ITERATOR_AGE_MS,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                runbook="Order notifications lag the payments stream by over a minute: the handler fails and "
                "retries a batch (Errors, BatchItemFailures), or is throttled.",
            )
        for source in w.batch_consumers:
            self._alarm(
                f"{source}-batch-item-failures",
                app_metric("BatchItemFailures", source=source),
                threshold=0,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                runbook=f"{source} reports failed records (hidden from Errors by ReportBatchItemFailures): "
                "its log group has 'record failed' / 'message failed' with the traceback.",
            )
        for topic, rule in w.iot_rules.items():
            self._alarm(
                f"iot-rule-{topic}-failures",
                cw.MathExpression(
                    # A Metrics Insights query: which ActionType value IoT reports is IoT's to name.
                    expression=iot_rule_failures_query(rule),
                    label=f"{rule} action failures",
                    period=PERIOD,
                ),
                threshold=0,
                runbook=f"IoT rule {rule} could not invoke its function (the message went to "
                "terminal-messages-dlq): check the function's Throttles and the rule's permission.",
            )
            self._alarm(
                f"iot-rule-{topic}-throttled",
                cw.Metric(
                    namespace="AWS/IoT",
                    metric_name="RuleMessageThrottled",
                    dimensions_map={"RuleName": rule},
                    statistic="Sum",
                    period=PERIOD,
                ),
                threshold=0,
                runbook=f"IoT Core throttled messages of rule {rule}: terminal events were lost before any "
                "function; raise the account's IoT rules quota.",
            )
        self.api_5xx = cw.Metric(
            namespace="AWS/ApiGateway",
            metric_name="5XXError",
            dimensions_map={"ApiName": w.api_name, "Stage": w.api_stage},
            statistic="Average",
            period=PERIOD,
        )
        self._alarm(
            "api-5xx-rate",
            self.api_5xx,
            threshold=API_5XX_RATE,
            evaluation_periods=3,
            datapoints_to_alarm=2,
            runbook="More than 5 % of API requests answered 5xx: the access log's status/errorType/"
            "integrationStatus say whose (Lambda throttle: 500 with Throttles; terminals: 502/504 "
            "with TerminalUnreachable).",
        )
        self._alarm(
            "api-throttled",
            cw.Metric(namespace=METRICS_NAMESPACE, metric_name="ApiThrottled", statistic="Sum", period=PERIOD),
            threshold=THROTTLED_PER_5_MIN,
            evaluation_periods=3,
            datapoints_to_alarm=2,
            runbook="Clients get 429: the access log's ip and resourcePath show who. One address: abuse "
            "(WAF). Everyone on the payment route: capacity (api-capacity, infra/README.md, Scale).",
        )
        self.ack_timeout_rate = cw.MathExpression(
            expression="100 * FILL(timeouts, 0) / started",
            using_metrics={"timeouts": app_metric("AckTimeouts"), "started": app_metric("PaymentsStarted")},
            label="Ack timeouts per payment started (%)",
            period=PERIOD,
        )
        self._alarm(
            "ack-timeout-rate",
            self.ack_timeout_rate,
            threshold=ACK_TIMEOUT_RATE_PERCENT,
            evaluation_periods=3,
            datapoints_to_alarm=2,
            runbook="Terminals do not acknowledge payment requests within 10 s: check terminal-events "
            "Throttles/Errors, IoT Core's connection metrics and GET /v1/terminals.",
        )
        self.dashboard = self._dashboard(settings)

    def _alarm(
        self,
        name: str,
        metric: cw.IMetric,
        *,
        threshold: float,
        evaluation_periods: int = 1,
        datapoints_to_alarm: int | None = None,
        runbook: str,
    ) -> None:
        alarm = cw.Alarm(
            self,
            name,
            metric=metric,
            threshold=threshold,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=evaluation_periods,
            datapoints_to_alarm=datapoints_to_alarm,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=f"Runbook: {runbook}",
        )
        alarm.add_alarm_action(self._action)
        alarm.add_ok_action(self._action)
        self.alarms[name] = alarm

    def _dashboard(self, settings: DeploymentSettings) -> cw.Dashboard:
        w = self._watched
        functions = w.function_names.values()
        dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=settings.resource_name("operations"))
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Payments",
                left=[app_metric(m) for m in ("PaymentsStarted", "PaymentsSucceeded", "PaymentsFailed")]
                + [app_search("PaymentsBusy")],
                width=12,
            ),
            cw.GraphWidget(
                title="Terminal trouble",
                left=[app_metric("AckTimeouts"), app_metric("ResultTimeouts")]
                + [app_search(m) for m in ("TerminalUnreachable", "EventsRefused")],
                right=[self.ack_timeout_rate],
                width=12,
            ),
        )
        api_dimensions = {"ApiName": w.api_name, "Stage": w.api_stage}
        dashboard.add_widgets(
            cw.GraphWidget(
                title="API",
                left=[
                    cw.Metric(
                        namespace="AWS/ApiGateway",
                        metric_name=m,
                        dimensions_map=api_dimensions,
                        statistic="Sum",
                        period=PERIOD,
                    )
                    for m in ("Count", "4XXError", "5XXError")
                ]
                + [cw.Metric(namespace=METRICS_NAMESPACE, metric_name="ApiThrottled", statistic="Sum", period=PERIOD)],
                right=[
                    cw.Metric(
                        namespace="AWS/ApiGateway",
                        metric_name=m,
                        dimensions_map=api_dimensions,
                        statistic="p99",
                        period=PERIOD,
                    )
                    for m in ("Latency", "IntegrationLatency")
                ],
                width=12,
            ),
            cw.GraphWidget(
                title="IPN and merchant notifications",
                left=[app_search("IpnRefused"), app_metric("NotificationsParked")],
                right=[
                    q.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum")
                    for q in w.dead_letter_queues.values()
                ]
                + [
                    q.metric_approximate_age_of_oldest_message(period=PERIOD, statistic="Maximum")
                    for q, _ in w.work_queues.values()
                ],
                width=12,
            ),
        )
        dashboard.add_widgets(
            cw.GraphWidget(
                title="Lambda errors and throttles",
                left=[lambda_metric(fn, "Errors") for fn in functions],
                right=[lambda_metric(fn, "Throttles") for fn in functions],
                width=8,
            ),
            cw.GraphWidget(
                title="Lambda duration p99",
                left=[lambda_metric(fn, "Duration", "p99") for fn in functions],
                width=8,
            ),
            cw.GraphWidget(
                title="Lambda concurrency (reserved as lines)",
                left=[lambda_metric(fn, "ConcurrentExecutions", "Maximum") for fn in functions],
                left_annotations=[
                    cw.HorizontalAnnotation(value=reserved, label=f"{name} reserved")
                    for name, reserved in w.reserved_concurrency.items()
                ],
                width=8,
            ),
        )
        iot_and_batches: list[cw.IMetric] = [app_search("BatchItemFailures")]
        iot_and_batches += [
            cw.MathExpression(
                expression=f"SEARCH('{{AWS/IoT,ActionType,RuleName}} RuleName=\"{rule}\"', 'Sum', 300)",
                label=f"{rule} actions",
                period=PERIOD,
            )
            for rule in w.iot_rules.values()
        ]
        stream_age: list[cw.IMetric] = []
        if "order_notifications" in w.function_names:
            stream_age.append(lambda_metric(w.function_names["order_notifications"], "IteratorAge", "Maximum"))
        dashboard.add_widgets(
            cw.GraphWidget(title="IoT rule actions and batch item failures", left=iot_and_batches, width=12),
            cw.GraphWidget(title="Payments stream iterator age", left=stream_age, width=12),
        )
        if w.web_acl_name:
            dashboard.add_widgets(
                cw.GraphWidget(
                    title="WAF",
                    left=[
                        cw.Metric(
                            namespace="AWS/WAFV2",
                            metric_name=m,
                            dimensions_map={"WebACL": w.web_acl_name, "Region": Stack.of(self).region, "Rule": "ALL"},
                            statistic="Sum",
                            period=PERIOD,
                        )
                        for m in ("AllowedRequests", "BlockedRequests")
                    ],
                    width=12,
                )
            )
        return dashboard
